"""Papermill runs of 01 -> 04 on `tiny` (the session fixture `tiny_outputs`), checked through the
artifacts they write; the bad-input paths; and nbval over the committed notebooks."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from conftest import NOTEBOOKS, ROOT
from safetensors import safe_open

from helpers.artifacts import stage_dir
from helpers.provenance import content_hash

pytestmark = pytest.mark.slow
PNG = b"\x89PNG\r\n\x1a\n"


def test_01_sft_lowers_heldout_perplexity(tiny_outputs):
    adapter = stage_dir(tiny_outputs, "tiny", "01_sft") / "adapter"
    metrics = json.loads((adapter / "metrics.json").read_text())
    assert metrics["sft_perplexity"] < 0.95 * metrics["base_perplexity"]
    with safe_open(adapter / "adapter_model.safetensors", "pt") as f:
        assert any("lora_A" in k for k in f.keys()) and any("lora_B" in k for k in f.keys())
    assert not list(adapter.glob("*.bin"))


def test_02_merged_model_matches_and_is_standalone(tiny_outputs):
    stage = stage_dir(tiny_outputs, "tiny", "02_merge")
    verification = json.loads((stage / "verification.json").read_text())
    assert verification["max_abs_logit_diff"] <= verification["tolerance"] == 1e-3
    assert verification["lora_modules_left"] == 0 and verification["same_greedy_generation"]
    with safe_open(stage / "model" / "model.safetensors", "pt") as f:
        assert not any("lora" in k for k in f.keys())
    assert json.loads((stage / "model" / "config.json").read_text())["model_type"] == "llama"


def test_03_ppo_artifacts(tiny_outputs, tiny):
    stage = stage_dir(tiny_outputs, "tiny", "03_ppo")
    metrics = pd.read_csv(stage / "metrics.csv")
    assert list(metrics.step) == list(range(tiny.ppo.steps))
    assert abs(metrics.kl_ref_exact[0]) < 1e-5 and metrics.kl_ref_exact.iloc[1:].gt(0).all()
    assert {"adapter_config.json", "adapter_model.safetensors", "value_head.safetensors"} <= {
        f.name for f in (stage / "adapter").iterdir()}
    evaluation = pd.read_csv(stage / "evaluation.csv")
    due = sorted({0, tiny.ppo.steps, *range(tiny.evaluation.every, tiny.ppo.steps + 1, tiny.evaluation.every)})
    assert list(evaluation.step) == due
    assert abs(evaluation.kl_ref_exact[0]) < 1e-5 and evaluation.reward_se.gt(0).all()
    samples = pd.read_csv(stage / "samples.csv")
    assert len(samples) == len(due) * tiny.evaluation.prompts * tiny.evaluation.samples
    summary = json.loads((stage / "evaluation.json").read_text())
    assert summary["prompts"] == tiny.evaluation.prompts
    final = samples[samples.step == tiny.ppo.steps].groupby("prompt").reward.mean().mean()
    assert summary["after"] == pytest.approx(final) == pytest.approx(evaluation.reward_mean.iloc[-1])
    # what 03 ran on, by content: the adapter 02 merged, and that merge
    merge = json.loads((stage_dir(tiny_outputs, "tiny", "02_merge") / "verification.json").read_text())
    assert summary["inputs"]["sft_adapter"] == merge["adapter_hash"]
    assert summary["inputs"]["merged_model"] == content_hash(stage_dir(tiny_outputs, "tiny", "02_merge") / "model")


def test_figures_are_pngs(tiny_outputs):
    figures = [*(tiny_outputs / "tiny" / "figures").glob("*.png"),
               *(stage_dir(tiny_outputs, "tiny", "04_comparison") / "figures").glob("*.png")]
    assert {f.name for f in figures} == {"01_sft_perplexity.png", "03_ppo_curves.png", "comparison.png",
                                       "memory_time.png", "penalty_alone.png", "frontier.png"}
    for f in figures:
        assert f.read_bytes()[:8] == PNG and f.stat().st_size > 5000


def test_executed_notebooks_and_no_leftovers(tiny_outputs):
    executed = tiny_outputs / "tiny" / "notebooks"
    assert {f.stem for f in executed.glob("*.ipynb")} == set(NOTEBOOKS)
    assert set(json.loads((executed / "timings.json").read_text())) == set(NOTEBOOKS)
    assert not [p for p in tiny_outputs.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    assert not list(executed.glob("*.failed.ipynb"))  # the fixture planted a stale one; success removes it


def test_executed_notebooks_carry_no_known_noise(tiny_outputs):
    """Messages removed at their cause (ipywidgets installed, the 4-bit Hub-kernel notice, two deprecations
    between libraries) must not come back into what a learner reads."""
    import nbformat

    noise = ["IProgress not found", "kernels-community", "is deprecated and will be removed in v6",
             "without encryption"]
    for path in (tiny_outputs / "tiny" / "notebooks").glob("*.ipynb"):
        for cell in nbformat.read(path, as_version=4).cells:
            for output in cell.get("outputs", []):
                text = output.get("text", "") + str(output.get("data", {}).get("text/plain", ""))
                assert not [n for n in noise if n in text], (path.name, text[:300])


@pytest.mark.parametrize("notebook, missing", [("02_merge_adapter", "01_sft_lora"),
                                               ("03_ppo_lora", "02_merge_adapter")])
def test_running_out_of_order_names_the_notebook_to_run_first(notebook, missing, tmp_path):
    """The command `make tutorial` runs: its last line says which notebook to run first, the partly
    executed notebook is kept as `<name>.failed.ipynb` (with the traceback), and the exit code is not 0."""
    env = {**os.environ, "PROFILE": "tiny", "OUTPUT_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "helpers.run_notebooks", notebook], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert result.returncode != 0, result.stdout[-2000:]
    assert "MissingArtifactError" in lines[-1] and f"notebooks/{missing}.ipynb" in lines[-1], lines[-4:]
    assert len(lines[-1]) < 400 and "Traceback" not in result.stdout  # short, not papermill's traceback
    assert f"== [1/1] {notebook}.ipynb" in result.stdout and "   [1/" in result.stdout  # progress
    assert "without encryption" not in result.stdout  # the kernel runs over IPC
    failed = tmp_path / "tiny" / "notebooks" / f"{notebook}.failed.ipynb"
    assert str(failed) in result.stdout
    assert "MissingArtifactError" in failed.read_text()  # the full traceback is in the kept notebook
    assert not (tmp_path / "tiny" / "notebooks" / f"{notebook}.ipynb").exists()
    made = [p for p in (tmp_path / "tiny").rglob("*") if p.is_file() and p.name not in (failed.name, ".lock")]
    assert not made, made


def test_nbval_checks_the_committed_outputs(tmp_path):
    """nbval (lax) executes every notebook on `tiny`, in order, and compares the cells marked
    NBVAL_CHECK_OUTPUT with the outputs committed in the notebooks."""
    env = {**os.environ, "TUTORIAL_PROFILE": "tiny", "OUTPUT_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider",
                             *[str(ROOT / "notebooks" / f"{n}.ipynb") for n in NOTEBOOKS]],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_notebooks_are_committed_clean():
    """First code cell tagged `parameters`; outputs only in nbval-checked cells; a Colab badge on top."""
    import nbformat

    for name in NOTEBOOKS:
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), name
        assert "colab.research.google.com" in nb.cells[0].source and name in nb.cells[0].source
        assert "google.colab" in code[1].source
        for cell in code:
            assert bool(cell.outputs) == ("NBVAL_CHECK_OUTPUT" in cell.source), (name, cell.source[:60])
            assert len(cell.source.splitlines()) <= 15, (name, cell.source[:60])


def test_publish_keeps_results_and_stays_small(tiny_outputs, tmp_path):
    """`make publish`: executed notebooks with their tables and figures, without widget state or the
    intermediate frames of progress bars."""
    import nbformat

    from helpers.harness.publish import MAX_TOTAL_MB, publish

    written = publish(tiny_outputs / "tiny" / "notebooks", tmp_path)
    assert {p.stem for p in written} == set(NOTEBOOKS)
    assert sum(p.stat().st_size for p in written) < MAX_TOTAL_MB * 2**20
    for path in written:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert outputs and "widgets" not in nb.metadata
        assert not [o for o in outputs if o.output_type == "stream" and "\r" in o.text]
        assert not [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    figures = [o for p in written for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code"
               for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 4  # 01 loss, 03 curves, 04 comparison and memory/time


def test_publish_results_feeds_the_readme_block_and_needs_a_whole_run(tiny_outputs, tiny, tmp_path):
    """`make publish` copies a run's result files; the README's tutorial block is made from them alone."""
    from helpers.harness.publish import RESULT_FILES, publish_results
    from helpers.harness.readme import tutorial_block
    from helpers.harness.sizing import pilot_from_tutorial

    folder = publish_results(tiny_outputs / "tiny", tmp_path / "results", "make tutorial PROFILE=tiny")
    assert all((folder / name).exists() for name in RESULT_FILES.values())
    block = tutorial_block(folder)
    assert "`make tutorial PROFILE=tiny`" in block and "| 01 | 02 | 03 | 04 | 05 | 06 | total |" in block
    assert "the penalty alone pulls the pitfall towards the base" in block and "- 06 (TRL's own GRPOTrainer)" in block
    assert all(line.count(" | ") == 7 for line in block.splitlines() if line.startswith("| the "))  # no stray |
    pilot = pilot_from_tutorial(folder)  # what the study's power calculation reads: 03's own JSON
    assert pilot["steps"] == tiny.ppo.steps and pilot["batch_size"] == tiny.ppo.batch_size and pilot["se"] > 0
    with pytest.raises(SystemExit, match="run `make tutorial`"):
        publish_results(tmp_path / "nothing", tmp_path / "more", "make tutorial")
    assert not (tmp_path / "more").exists()


def test_publish_refuses_a_failed_mixed_or_oversized_run_and_writes_nothing(tiny_outputs, tmp_path, monkeypatch):
    """Only what one complete run produced is published: not while a failure report is there, not a notebook
    re-run on its own beside older ones, and the size limit is checked before anything is written."""
    import shutil

    import helpers.harness.publish as publish_module

    source = tmp_path / "notebooks"
    shutil.copytree(tiny_outputs / "tiny" / "notebooks", source)
    (source / "04_reference_model_comparison.failed.ipynb").write_text("{}")
    with pytest.raises(SystemExit, match="failed in the last run"):
        publish_module.publish(source, tmp_path / "out")
    (source / "04_reference_model_comparison.failed.ipynb").unlink()
    runs = json.loads((source / "runs.json").read_text())
    (source / "runs.json").write_text(json.dumps({**runs, "04_reference_model_comparison": "another-run"}))
    with pytest.raises(SystemExit, match="not one complete run"):
        publish_module.publish(source, tmp_path / "out")
    (source / "runs.json").write_text(json.dumps(runs))
    (source / "05_study.ipynb").unlink()
    with pytest.raises(SystemExit, match="not one complete run"):
        publish_module.publish(source, tmp_path / "out")
    shutil.copy(tiny_outputs / "tiny" / "notebooks" / "05_study.ipynb", source)
    monkeypatch.setattr(publish_module, "MAX_TOTAL_MB", 0.01)
    with pytest.raises(SystemExit, match="Nothing was written"):
        publish_module.publish(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()
