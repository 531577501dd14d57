"""The benchmark script's bad-input path (its figures are recorded by hand, never asserted in a test)."""

import os
import subprocess
import sys

import pytest

from conftest import ROOT


@pytest.mark.slow  # seconds of SmolLM2 or a subprocess: in `make test`, not `make test-fast`
def test_benchmark_without_the_merged_model_names_the_notebook(tmp_path):
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ppo_step.py"), "--profile", "tiny"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "MissingArtifactError" in result.stderr and "02_merge_adapter.ipynb" in result.stderr
