"""The benchmark scripts' bad-input path, and the Performance page's words following the committed figures
(the figures themselves are measured, never asserted in a test)."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

from helpers.harness.benchfigures import workers_block


@pytest.mark.slow  # seconds of SmolLM2 or a subprocess: in `make test`, not `make test-fast`
def test_benchmark_without_the_merged_model_names_the_notebook(tmp_path):
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ppo_step.py"), "--profile", "tiny"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "MissingArtifactError" in result.stderr and "02_merge_adapter.ipynb" in result.stderr


@pytest.mark.parametrize("two, word", [([90.0, 100.0, 95.0], "11% more"), ([130.0, 110.0, 125.0], "16% fewer")])
def test_the_workers_figures_and_their_sentence_follow_the_file(tmp_path, two, word):
    """The medians, their ratio, each pair's, and the sentence's word computed from them whichever way the
    measurement goes (one process: median 105 s; two workers: 95 s, ratio < 1, or 125 s, ratio > 1)."""
    one = [105.0, 100.0, 110.0]  # median 105
    gib = 2**30
    figures = {"command": "benchmarks/workers.py --compare", "date": "2026-01-02T03:04:05+00:00",
               "machine": {"cpu": "Test CPU", "cores": 2, "cpu_count": 2, "torch": "9.9"},
               "settings": {"profile": "smol", "runs": 4, "steps": 2, "pairs": 3},
               "layouts": [{"workers": 2, "threads": 1, "wall_s": two, "peak_rss_bytes": [3 * gib] * 3,
                            "driver_peak_rss_bytes": [gib] * 3},
                           {"workers": 1, "threads": 2, "wall_s": one, "peak_rss_bytes": [2 * gib] * 3,
                            "driver_peak_rss_bytes": [3.5 * gib] * 3}],
               "pairs": [{"first_workers": 1, "ratio": b / a} for a, b in zip(one, two)]}
    (tmp_path / "workers.json").write_text(json.dumps(figures))
    block = workers_block(tmp_path)
    ratio = sorted(two)[1] / 105
    assert "| 1 process × 2 threads (`--workers 1`) | 105.0 s | 2.0 GiB |" in block
    assert f"| 2 Ray workers × 1 thread (`--workers 2`) | {sorted(two)[1]:.1f} s ({ratio:.2f}×, pairs " in block
    assert ", ".join(f"{b / a:.2f}×" for a, b in zip(one, two)) in block
    assert f"each do {word} runs per hour than one process" in block  # 105/95 - 1 = 11%; 105/125 - 1 = -16%
    assert "come to 7.0 GiB against 3.5 GiB, 2.0× the memory" in block  # 2 workers × 3 GiB + the driver's 1 GiB
    assert "Test CPU, 2 cores" in block and "Not measured" not in block
    assert ("picks 2 workers on such a machine: the faster" in block) == (word.endswith("more"))


def test_the_workers_figures_not_measured_say_how_to_measure(tmp_path):
    block = workers_block(tmp_path)
    assert block.startswith("Not measured yet") and "benchmarks/workers.py --compare" in block and "GiB" not in block
