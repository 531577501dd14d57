"""Project plumbing: which library messages `import helpers` hides (only named ones) and where outputs go."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

from helpers import configure, get_profile

SHOW_WARNINGS = """
import logging, warnings
import helpers
warnings.warn("peft: a warning a learner should see", UserWarning)
warnings.warn("a FutureWarning a learner should see", FutureWarning)
warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
logging.getLogger("transformers.modeling_utils").warning("transformers: a logged warning a learner should see")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward from kernels-community: x")
logging.getLogger("bitsandbytes.backends.cpu.ops").warning("bitsandbytes: another warning")
"""


def test_import_helpers_hides_only_the_named_messages():
    result = subprocess.run([sys.executable, "-W", "default", "-c", SHOW_WARNINGS], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    for visible in ("peft: a warning", "a FutureWarning a learner", "transformers: a logged warning",
                    "bitsandbytes: another warning"):
        assert visible in result.stderr, (visible, result.stderr[-2000:])
    assert "is_gradient_checkpointing" not in result.stderr and "gemm_4bit_forward" not in result.stderr


def test_one_output_folder_whatever_the_working_directory(monkeypatch, tmp_path):
    """JupyterLab runs a notebook in notebooks/, `make tutorial` in the project root: the same folder."""
    from helpers import artifacts
    from helpers.artifacts import output_dir, stage_dir

    monkeypatch.delenv("OUTPUT_DIR", raising=False)
    found = {}
    for cwd in (ROOT, ROOT / "notebooks", tmp_path):
        monkeypatch.chdir(cwd)
        found[cwd] = (output_dir(), output_dir("elsewhere"), stage_dir(None, "tiny", "01_sft"))
    assert set(found.values()) == {(ROOT / "outputs", ROOT / "elsewhere", ROOT / "outputs" / "tiny" / "01_sft")}
    monkeypatch.setenv("OUTPUT_DIR", "from-env")  # the environment variable wins over the default...
    assert output_dir() == ROOT / "from-env" and output_dir(None) == ROOT / "from-env"
    assert output_dir(tmp_path) == tmp_path  # ...and an explicit value (papermill's parameter) over both
    monkeypatch.setattr(artifacts, "project_root", lambda: None)  # installed from git, as on Colab
    assert output_dir() == tmp_path / "from-env"  # the working directory (checked last: tmp_path)


def test_notebooks_default_to_the_shared_output_folder():
    import nbformat

    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        parameters = next(c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert "\nOUTPUT_DIR = None" in parameters.source, path.name  # resolved by helpers.artifacts.output_dir


def test_a_repeated_bitsandbytes_notice_is_shown_once():
    code = ("import logging, helpers\nlog = logging.getLogger('bitsandbytes.autograd._functions')\n"
            "for _ in range(3): log.warning('MatMul8bitLt: inputs will be cast from %s to float16', 'fp32')\n"
            "log.warning('another bitsandbytes warning')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.stderr.count("MatMul8bitLt") == 1 and "another bitsandbytes warning" in result.stderr, result.stderr


def test_publish_merges_progress_frames_and_needs_a_run(tmp_path):
    import nbformat
    import pytest

    from helpers.harness.publish import final_frame, publish, slim

    assert final_frame("\r 0%|\r 50%|\r100%|\nsaved\n") == "100%|\nsaved\n"
    nb = nbformat.v4.new_notebook(metadata={"widgets": {"state": {}}})
    nb.cells = [nbformat.v4.new_code_cell("train()", outputs=[
        nbformat.v4.new_output("stream", name="stderr", text="\rPPO: 0%"),
        nbformat.v4.new_output("stream", name="stderr", text="\rPPO: 100%\n"),
        nbformat.v4.new_output("display_data", data={"application/vnd.jupyter.widget-view+json": {"model_id": "x"}}),
        nbformat.v4.new_output("stream", name="stdout", text="done\n")])]
    outputs = slim(nb).cells[0].outputs
    assert [(o.name, o.text) for o in outputs] == [("stderr", "PPO: 100%\n"), ("stdout", "done\n")]
    assert "widgets" not in nb.metadata
    with pytest.raises(SystemExit, match="make tutorial PROFILE=smol"):
        publish(tmp_path / "nothing-here", tmp_path / "docs")


def test_colab_installs_the_tag_of_this_version_and_environment_yml_matches():
    import re

    import nbformat
    import yaml

    pyproject = (ROOT / "pyproject.toml").read_text()  # read with re: tomllib needs Python 3.11
    version = re.search(r'^version = "([^"]+)"', pyproject, re.M).group(1)
    extras = re.findall(r"^(\w+) = \[", pyproject.split("[project.optional-dependencies]")[1].split("\n[")[0], re.M)
    for path in sorted((ROOT / "notebooks").glob("0*.ipynb")):
        setup = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"][1]
        assert f'lora-rlhf-tutorial@v{version}"' in setup.source, path.name
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert sorted(extras) == ["dev", "docs", "lab", "scale"] and f"-e .[{','.join(sorted(extras))}]" in pip
    assert "-c constraints.txt" in pip  # the same pins as `make install`
    assert '"ipywidgets' in pyproject.split("dependencies = [")[1].split("]")[0]


def test_ci_workflow_runs_the_readme_commands():
    import yaml

    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert {"push", "pull_request", "schedule"} <= set(triggers)
    runs = {job: [s["run"].split()[:2] for s in spec["steps"] if "run" in s] for job, spec in workflow["jobs"].items()}
    assert runs == {"test": [["make", "test"]], "test-latest": [["make", "test-latest"]]}
    readme = (ROOT / "README.md").read_text()
    assert "make test-latest" in readme and "make test" in readme
    caches = [s["with"]["path"] for spec in workflow["jobs"].values() for s in spec["steps"]
              if s.get("uses", "").startswith("actions/cache")]
    assert caches and all(p == "~/.cache/lora-rlhf-tutorial" for p in caches)


def test_which_arm_table_has_one_source_rendered_by_04_06_and_the_readme():
    """The framework table is the registry (helpers.harness.frameworks): 04 and 06 render it, the README's is the
    generated block (its regeneration is checked in tests/test_study.py), and it names every kind of arm."""
    import nbformat

    from helpers.harness.frameworks import FRAMEWORKS, framework_markdown
    from helpers.harness.readme import FRAMEWORKS_BEGIN, FRAMEWORKS_END

    for name, call in [("04_reference_model_comparison", "framework_table()"),
                       ("06_grpo_reference", "framework_table(grpo=True)")]:
        cells = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4).cells
        assert cells[-1].cell_type == "code" and cells[-1].source.endswith(call), name
        assert any("from helpers.harness.frameworks import framework_table" in c.source for c in cells), name
    readme = (ROOT / "README.md").read_text()
    block = readme.split(FRAMEWORKS_BEGIN, 1)[1].split(FRAMEWORKS_END, 1)[0].strip()
    assert block.splitlines()[0] == framework_markdown().splitlines()[0] and len(block.splitlines()) == len(FRAMEWORKS) + 2
    assert {f.ppo_arm for f in FRAMEWORKS} == {"adapter+ref-adapter", "adapter+disabled", "merged+disabled",
                                               "adapter+copy", "merged+copy"}


HEAP = """
import sys, torch
if sys.argv[1] == "fixed":
    import helpers  # its import fixes glibc's mmap threshold
def anon():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon")) * 1024
torch.ones(24 * 2**18)  # 24 MiB, mapped and unmapped: glibc now raises its mmap threshold to 24 MiB
before = anon()
torch.ones(20 * 2**18)  # 20 MiB, touched and freed
print(anon() - before)
"""


def test_a_freed_large_tensor_leaves_no_resident_memory():
    """With glibc's threshold fixed (`import helpers`), a freed vocabulary-sized tensor is handed back to the OS;
    with glibc's own dynamic threshold it stays resident, which is what the fix is for."""
    if not (sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"):
        pytest.skip("glibc's allocator only")
    growth = {}
    for mode in ("default", "fixed"):
        result = subprocess.run([sys.executable, "-c", HEAP, mode], cwd=ROOT, capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
        growth[mode] = int(result.stdout.split()[-1])
    assert growth["default"] > 16 * 2**20, growth  # the problem is real here ...
    assert growth["fixed"] < 4 * 2**20, growth  # ... and gone


def test_the_rss_peak_sees_an_allocation_and_leaves_out_what_it_is_told_to():
    """RssPeak (a run's memory figure): 64 MiB touched inside it show as growth of at least 60 MiB; the same
    allocated in an `unmeasured` call (the evaluations) does not show."""
    import time

    import torch

    from helpers.harness.measure import RssPeak

    size = 64 * 2**20

    def touch():
        x = torch.ones(size // 4)  # float32: every page written
        time.sleep(0.2)  # the sampler polls every 20 ms
        return float(x[-1])

    with RssPeak() as rss:
        touch()
    assert rss.growth >= 60 * 2**20, rss.growth
    with RssPeak() as quiet:
        quiet.unmeasured(touch)()
    assert quiet.growth < 16 * 2**20, quiet.growth


def test_content_hashes_leave_out_dotfiles(tmp_path):
    """A .DS_Store (a Finder visit) beside a committed adapter changes no fingerprint; a changed file does."""
    from helpers.provenance import content_hash

    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    before = content_hash(tmp_path / "adapter")
    (tmp_path / "adapter" / ".DS_Store").write_bytes(b"finder")
    (tmp_path / "adapter" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "adapter" / ".ipynb_checkpoints" / "x").write_bytes(b"x")
    assert content_hash(tmp_path / "adapter") == before
    (tmp_path / "adapter" / "adapter_model.safetensors").write_bytes(b"other weights")
    assert content_hash(tmp_path / "adapter") != before


def test_make_clean_deletes_only_what_the_project_made(tmp_path):
    """`make clean` with OUTPUT_DIR and VENV exported to folders of the user's (one with a space) names neither."""
    env = {**os.environ, "OUTPUT_DIR": str(tmp_path / "my out"), "VENV": str(tmp_path / "mine")}
    said = subprocess.run(["make", "-n", "clean"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert said.returncode == 0, said.stderr
    assert str(tmp_path) not in said.stdout and "my" not in said.stdout.split()
    assert '"./outputs"' in said.stdout and '"./.venv"' in said.stdout


@pytest.mark.parametrize("make, message", [
    (lambda: __import__("helpers.ppo", fromlist=["x"]).PPOConfig(steps=0), "steps must be an integer >= 1, not 0"),
    (lambda: __import__("helpers.ppo", fromlist=["x"]).config_from_profile(get_profile("tiny"), seed=-1),
     "seed must be an integer >= 0, not -1"),
    (lambda: __import__("helpers.ppo", fromlist=["x"]).PPOConfig(mini_batch_size=32, batch_size=16),
     r"mini_batch_size \(32\) must be at most batch_size \(16\)"),
    # 01's SFT_STEPS = 0 or -5, from the notebook's parameter or from $TUTORIAL_SFT_STEPS
    (lambda: configure("tiny", sft_steps=0), "sft_steps must be an integer >= 1, not 0"),
    (lambda: configure("tiny", sft_steps=-5), "sft_steps must be an integer >= 1, not -5"),
    (lambda: get_profile("tiny").with_overrides(study_eval_points=1), "study_eval_points must be an integer >= 2"),
    (lambda: get_profile("tiny").with_overrides(sft_lr=0.0), "sft_lr must be a number > 0"),
    (lambda: get_profile("tiny").with_overrides(sft_step=5), "Unknown profile field 'sft_step'. Valid: .*sft_steps"),
    (lambda: get_profile("tiny").with_overrides(ppo_learning_rate=-1e-3), "learning_rate must be > 0"),
])
def test_every_input_is_checked_where_it_enters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_the_cache_folder_is_absolute_whatever_the_working_directory(tmp_path, monkeypatch):
    from helpers.checkpoints import cache_dir

    monkeypatch.setenv("TUTORIAL_CACHE", "relative-cache")
    monkeypatch.chdir(tmp_path)
    assert cache_dir() == tmp_path / "relative-cache"
    monkeypatch.setenv("TUTORIAL_CACHE", "~/c")
    assert cache_dir() == Path.home() / "c"


def test_a_second_driver_on_one_folder_is_refused_naming_the_first(tmp_path):
    """Two `make tutorial` on one output folder, or 05 during `make study`: the second is refused at once, with
    the first one's process id, instead of racing it on the same renames; the lock goes with its holder."""
    import time

    from helpers.artifacts import FolderInUseError, locked

    hold = "import sys, time\nfrom helpers.artifacts import locked\nwith locked(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(60)\n"
    first = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "held"
        start = time.perf_counter()
        with pytest.raises(FolderInUseError, match=f"in use by process {first.pid} "):
            with locked(tmp_path, "a second run"):
                pass
        assert time.perf_counter() - start < 5
    finally:
        first.kill()
        first.wait()
    with locked(tmp_path):  # the holder is gone: free again, and re-entrant within one process
        with locked(tmp_path):
            pass


def test_a_merge_of_another_sft_adapter_is_refused_naming_the_notebook_to_rerun(tiny, tokenizer, tmp_path):
    """01 run again with other settings after 02: 03 and 04 refuse 02's merge instead of using it."""
    from conftest import random_sft

    from helpers.artifacts import StaleArtifactError, require, stage_dir

    adapter, merged = random_sft(tiny, tokenizer, tmp_path)
    assert require(merged, "02_merge", "tiny") == merged
    (adapter / "README.md").write_text("trained again")  # any change of the adapter's files
    with pytest.raises(StaleArtifactError, match="02_merge_adapter.ipynb again"):
        require(stage_dir(tmp_path, "tiny", "02_merge") / "model", "02_merge", "tiny")
