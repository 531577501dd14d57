"""Runs on Ray workers (helpers.harness.workers): the same run files as in-process, and a dead worker costs only its run."""

import json
import re
import sys
import time
from dataclasses import asdict, dataclass

import pandas as pd
import pytest
import torch

from helpers.artifacts import stage_dir
from helpers.harness.run import RUN_FILES, Run, inputs_from_outputs
from helpers.harness.schedule import run_all
from helpers.harness.trainers import TRAINERS, Fitted, Trainer
from helpers.harness.workers import FAULT, threads_per_worker
from helpers.ppo import TIMING_COLUMNS
from helpers.provenance import check_count


def test_without_ray_auto_means_one_process_and_more_workers_say_what_to_install(monkeypatch):
    import sys

    from helpers.harness.workers import resolve_workers, start_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert resolve_workers("auto") == 1 and resolve_workers("2") == 2
    with pytest.raises(ImportError, match=r"\[scale\]"):
        start_ray()
    with pytest.raises(ValueError, match="workers must be"):
        resolve_workers(0)


try:
    import ray
except ImportError:
    ray = None
needs_ray = pytest.mark.skipif(ray is None, reason="the Ray path needs the [scale] extra (make test installs it)")

TIMING = set(TIMING_COLUMNS)
WHERE = {"total_time_s", "process_peak_rss_bytes", "step_time_median_s", "step_time_min_s", "step_time_max_s", "rss_growth_bytes", "rss_file_growth_bytes", "rss_anon_growth_bytes", "threads",
         "commit"}


@pytest.fixture(scope="module")
def tiny_plan(tiny, tiny_outputs):
    from helpers.data import load_imdb, ppo_queries
    from helpers.models import load_tokenizer
    from helpers.ppo import config_from_profile
    from helpers.rewards import load_reward

    tokenizer = load_tokenizer(stage_dir(tiny_outputs, "tiny", "02_merge") / "model")
    data = load_imdb(tiny)
    inputs = inputs_from_outputs(tiny, tiny_outputs, tokenizer,
                                 ppo_queries(data["train"]["text"], tokenizer, n=2 * tiny.ppo.batch_size, seed=0),
                                 ppo_queries(data["heldout"]["text"], tokenizer, n=4, seed=1), load_reward(tiny),
                                 list(data["heldout"]["text"][:4]))
    ppo = config_from_profile(tiny, steps=2, adaptive_kl=False, init_kl_coef=0.3)
    runs = [Run("workers", arm, seed, ppo, tiny.reward, 1)
            for arm in ("merged+disabled", "adapter+disabled") for seed in (0, 1)]
    yield inputs, runs
    if ray is not None and ray.is_initialized():
        ray.shutdown()


def _files(folder, run):
    d = folder / "runs" / run.path
    tables = {k: pd.read_csv(d / f"{k}.csv") for k in ("metrics", "evaluation", "samples")}
    tables = {k: t.drop(columns=[c for c in t.columns if c in TIMING]) for k, t in tables.items()}
    summary = {k: v for k, v in json.loads((d / "summary.json").read_text()).items() if k not in WHERE}
    fingerprint = {k: v for k, v in json.loads((d / "fingerprint.json").read_text()).items() if k != "files"}
    return tables, summary, fingerprint  # less the files' checksums: their timing columns differ


@needs_ray
@pytest.mark.slow
def test_two_workers_write_the_same_run_files_as_one_process(tiny_plan, tmp_path):
    inputs, runs = tiny_plan
    threads = threads_per_worker(2)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # in-process with the thread count each worker gets
    try:
        alone = run_all(runs, inputs, tmp_path / "alone")
    finally:
        torch.set_num_threads(before)
    spread = run_all(runs, inputs, tmp_path / "ray", workers=2)
    for run in runs:
        a, b = _files(tmp_path / "alone", run), _files(tmp_path / "ray", run)
        for key in a[0]:
            pd.testing.assert_frame_equal(a[0][key], b[0][key], check_exact=True)
        assert a[1] == b[1] and a[2] == b[2]  # trained-weights hash, memory of the weights; the fingerprint
    assert set(spread.runs.threads) == {threads} and len(spread.runs) == len(alone.runs) == len(runs)
    pd.testing.assert_frame_equal(alone.evaluation.drop(columns="eval_s"), spread.evaluation.drop(columns="eval_s"))


@needs_ray
@pytest.mark.slow
def test_a_worker_that_dies_loses_only_its_own_run(tiny_plan, tmp_path, monkeypatch, capsys):
    inputs, runs = tiny_plan
    victim = runs[1]
    if ray.is_initialized():
        ray.shutdown()  # a fresh Ray, whose workers inherit the fault switch
    monkeypatch.setenv(FAULT, victim.label)
    with pytest.raises(RuntimeError, match=f"1 of {len(runs)} runs did not land.*{re.escape(victim.label)}"):
        run_all(runs, inputs, tmp_path, workers=2)
    ray.shutdown()
    landed = {r.label for r in runs if all((tmp_path / "runs" / r.path / f).exists() for f in RUN_FILES)}
    assert landed == {r.label for r in runs} - {victim.label}
    assert not list((tmp_path / "runs" / victim.path).parent.glob(".*tmp*"))  # nothing half-written
    monkeypatch.delenv(FAULT)
    capsys.readouterr()
    run_all(runs, inputs, tmp_path)  # the next call runs only the missing run
    said = capsys.readouterr().out
    assert said.count(" ran (not run yet)") == 1 and f"{victim.label}: ran" in said
    assert said.count("skipped") == len(runs) - 1


# --- a second trainer through the same harness ----------------------------------------------------------------


@dataclass
class NudgeConfig:
    """A stand-in trainer's settings: `steps` seeded random nudges of the arm's trainable weights."""

    steps: int = 2
    scale: float = 1e-2
    response_len: tuple[int, int] = (4, 8)
    seed: int = 0


def fit_nudge(arm, tokenizer, queries, reward_fn, config, evaluator, progress=False):
    params = [p for p in arm.policy.parameters() if p.requires_grad]
    noise = torch.Generator().manual_seed(config.seed)
    evaluator(0, arm.policy, arm.reference)
    rows = []
    for step in range(1, config.steps + 1):
        start = time.perf_counter()
        with torch.no_grad():
            for p in params:
                p.add_(torch.randn(p.shape, generator=noise) * config.scale)
        rows.append({"step": step, "reward_mean": float(reward_fn(["a good film"]).mean()),
                     "step_time_s": time.perf_counter() - start})
        if evaluator.due(step, config.steps):
            evaluator(step, arm.policy, arm.reference)
    return Fitted(pd.DataFrame(rows), params, [])


NUDGE = Trainer(NudgeConfig, fit_nudge, beta=lambda config: None, check=lambda config: check_count("steps", config.steps),
                fingerprint=asdict)


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=[needs_ray, pytest.mark.slow])])
def test_a_second_trainer_is_one_registry_entry_and_runs_through_the_harness(tiny_plan, tmp_path, monkeypatch,
                                                                               workers):
    """A stand-in trainer registered in TRAINERS runs through run_all in-process and on Ray workers: the
    harness builds the arms, evaluates and lands the runs without reading any PPO setting, and the trained
    weights are the same wherever they ran."""
    inputs, _ = tiny_plan
    monkeypatch.setitem(TRAINERS, "nudge", NUDGE)
    if workers > 1:
        ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # a test module workers cannot import
    runs = [Run("stand-in", arm, 0, NudgeConfig(steps=2), inputs.eval_reward, 1, trainer="nudge")
            for arm in ("merged+disabled", "adapter+ref-adapter")]
    results = run_all(runs, inputs, tmp_path / "nudge", workers=workers)
    assert list(results.evaluation.groupby("arm").step.apply(list)) == [[0, 1, 2], [0, 1, 2]]
    assert results.runs.beta.isna().all() and runs[0].label == "stand-in/merged+disabled/seed0"
    fingerprint = json.loads((tmp_path / "nudge" / "runs" / runs[0].path / "fingerprint.json").read_text())
    assert fingerprint["trainer"] == "nudge" and fingerprint["nudge"]["scale"] == 1e-2 and "ppo" not in fingerprint
    again = run_all(runs, inputs, tmp_path / "again")  # in-process: the same weights wherever they ran
    assert list(results.runs.trained_weights) == list(again.runs.trained_weights)
    assert results.evaluation.kl_ref_exact[results.evaluation.step == 2].gt(0).all()  # the nudges moved the policy
    with pytest.raises(ValueError, match="Unknown trainer 'dpo'; valid trainers: ppo, grpo, nudge"):
        Run("stand-in", "merged+disabled", 0, NudgeConfig(), inputs.eval_reward, 1, trainer="dpo")


# --- Ray that fits the machine ---------------------------------------------------------------------------------


def test_workers_are_capped_by_the_free_slots_and_the_cap_is_said():
    from helpers.harness.workers import capped_workers

    assert capped_workers(3, {"CPU": 2.0}, 1, 1.0) == (2, "2 Ray workers (asked for 3; 2 free CPUs, 1 per worker)")
    assert capped_workers(2, {"CPU": 16.0}, 8, 1.0)[0] == 2
    assert capped_workers(2, {"CPU": 2.0, "GPU": 1.0}, 1, 1.0)[0] == 1  # a Colab GPU: one run at a time
    assert capped_workers(4, {"GPU": 1.0}, 1, 0.5)[0] == 2  # two small runs share it
    with pytest.raises(RuntimeError, match="no free slot.*WORKERS = 1"):
        capped_workers(2, {"CPU": 0.0}, 1, 1.0)


def test_an_address_that_points_nowhere_fails_in_seconds_before_any_work(monkeypatch):
    from helpers.harness.workers import check_reachable

    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="127.0.0.1:9.*unset RAY_ADDRESS"):
        check_reachable("127.0.0.1:9")
    with pytest.raises(ConnectionError, match="nothing answers"):
        check_reachable("ray://127.0.0.1:9")
    assert time.perf_counter() - start < 12
    with pytest.raises(ValueError, match="host:port"):
        check_reachable("nowhere")


@needs_ray
@pytest.mark.slow
def test_more_workers_than_slots_finish_every_run_and_ray_address_needs_workers(tiny_plan, tmp_path, monkeypatch,
                                                                                 capsys):
    """3 workers on 2 cores: capped to what Ray has free, every run lands, no hang. With WORKERS = 1 an
    unreachable $RAY_ADDRESS is never touched; with WORKERS = 2 it fails at once."""
    inputs, runs = tiny_plan
    if ray.is_initialized():
        ray.shutdown()
    results = run_all(runs[:3], inputs, tmp_path / "three", workers=3)
    assert len(results.runs) == 3 and "asked for 3" in capsys.readouterr().out
    ray.shutdown()
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    assert len(run_all(runs[:1], inputs, tmp_path / "three").runs) == 1  # skipped, in-process: no Ray at all
    with pytest.raises(ConnectionError, match="nothing answers"):
        run_all(runs[:1], inputs, tmp_path / "one", workers=2)
    assert not (tmp_path / "one" / "runs").exists()


def test_grpo_runs_through_the_harness_with_trls_reference(tiny_plan, tmp_path):
    """GRPO's entry (TRL's GRPOTrainer) lands runs like PPO's: its arms, its β in the path, held-out evaluations
    at the harness's steps, and KL to the reference TRL used (0 for its 'ref' copy at step 0, KL(SFT || base)
    for the pitfall)."""
    from helpers.grpo import GRPOSettings

    inputs, _ = tiny_plan
    settings = GRPOSettings(steps=2, prompts_per_step=2, group=2, response_len=(4, 4), beta=0.04)
    runs = [Run("grpo", arm, 0, settings, inputs.eval_reward, 1, trainer="grpo") for arm in ("pitfall", "ref-copy")]
    results = run_all(runs, inputs, tmp_path)
    assert list(results.evaluation.groupby("arm").step.apply(list)) == [[0, 1, 2], [0, 1, 2]]
    assert runs[0].label == "grpo/pitfall/beta0.04/seed0" and (results.runs.trainable_params > 0).all()
    step0 = results.evaluation[results.evaluation.step == 0].set_index("arm")
    assert step0.kl_ref_exact["ref-copy"] == pytest.approx(0, abs=1e-6)
    assert step0.kl_ref_exact["pitfall"] == pytest.approx(step0.kl_base_exact["pitfall"], rel=1e-3)
    assert step0.kl_base_exact["pitfall"] > 1e-3
    fingerprint = json.loads((tmp_path / "runs" / runs[0].path / "fingerprint.json").read_text())
    assert fingerprint["trainer"] == "grpo" and fingerprint["grpo"]["beta"] == 0.04
    with pytest.raises(ValueError, match="Unknown arm 'merged\\+disabled' for GRPOSettings's trainer; valid arms: "
                                         "recipe, ref-copy, pitfall"):
        Run("grpo", "merged+disabled", 0, settings, inputs.eval_reward, 1, trainer="grpo")
