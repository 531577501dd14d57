"""The reference-model comparison (notebook 04): the verdict logic on synthetic tables, what the `tiny`
run wrote (seeds, pairing, controls, memory), resume by fingerprint, and an 8-bit profile."""

import json
import re
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.artifacts import StaleArtifactError, stage_dir
from helpers.profiles import configure
from helpers.data import load_imdb, ppo_queries
from helpers.harness.arms import ARMS, build_arm, yardsticks
from helpers.harness.compare import comparison_configs, plan_from_profile, run_comparison
from helpers.harness.results import Results
from helpers.harness.run import Run, inputs_from_outputs, seed_queries
from helpers.harness.verdicts import findings, verdict
from helpers.models import is_quantized, load_tokenizer
from helpers.ppo import config_from_profile
from helpers.rewards import vader_reward

# --- the verdict logic, on synthetic numbers (fast) -------------------------------------------------------


def test_an_interval_that_includes_zero_is_inconclusive():
    row = verdict([0.10, -0.08, 0.05], ">0")
    assert row["ci_low"] < 0 < row["ci_high"] and row["n_seeds"] == 3
    assert row["verdict"] == "inconclusive" and "seeds" in row["to_settle"]
    assert f"|effect| < {row['ci_high']:.3g} (95%)" in row["to_settle"]  # the bound the interval does give
    assert verdict([0.10, -0.08, 0.05], "<0")["verdict"] == "inconclusive"


def test_an_interval_that_excludes_zero_decides():
    up = verdict([1.0, 1.1, 0.9], ">0")
    assert up["effect"] == pytest.approx(1.0) and 0 < up["ci_low"] < up["effect"] < up["ci_high"]
    assert up["verdict"] == "as expected" and up["to_settle"] == ""
    assert verdict([1.0, 1.1, 0.9], "<0")["verdict"] == "differs"
    assert verdict([-1.0, -1.1, -0.9], "<0")["verdict"] == "as expected"


def test_one_seed_is_never_enough_for_an_interval():
    row = verdict([5.0], ">0")
    assert row["verdict"] == "inconclusive" and np.isnan(row["ci_low"]) and "2 seeds" in row["to_settle"]


def test_seeds_to_settle_grow_with_the_spread():
    """From the measured mean and spread: a noisier effect needs more seeds, and the estimate settles it."""
    from helpers.evaluation import t_interval
    from helpers.harness.verdicts import seeds_needed

    small, large = verdict([0.2, -0.1, 0.3], ">0"), verdict([0.2, -0.5, 0.6], ">0")
    n_small, n_large = (int(r["to_settle"].split("≈ ")[1].split()[0].rstrip("+")) for r in (small, large))
    assert 3 < n_small < n_large
    # n_small seeds with the same mean and spread give an interval that excludes zero; one fewer does not
    x = np.array([0.2, -0.1, 0.3])
    for n, excludes in [(n_small, True), (n_small - 1, False)]:
        z = (np.arange(n) - (n - 1) / 2) / np.std(np.arange(n), ddof=1)  # mean 0, sd 1
        _, low, _, _ = t_interval(x.mean() + x.std(ddof=1) * z)
        assert (low > 0) == excludes
    assert seeds_needed([0.0, 0.0]) is None


def test_equality_claims_use_the_tolerance():
    assert verdict([0.0, 3e-6], "=", tolerance=1e-4)["verdict"] == "as expected"
    assert verdict([0.0, 3e-3], "=", tolerance=1e-4)["verdict"] == "differs"
    assert verdict([1.98], "=", tolerance=0.2, target=2.0)["verdict"] == "as expected"
    with pytest.raises(ValueError, match="'>0', '<0' or '='"):
        verdict([1.0], ">=0")


def synthetic(kl0_pitfall, kl0_control=(0.0, 0.0, 0.0)):
    """An evaluation table of the pitfall and its control over 3 seeds, as run_comparison returns it."""
    rows = []
    for arm, kl0 in [("adapter+disabled", kl0_pitfall), ("adapter+ref-adapter", kl0_control)]:
        for seed, k in enumerate(kl0):
            for step in (0, 4):
                rows.append({"study": "main", "arm": arm, "seed": seed, "step": step, "reward_mean": 0.1,
                             "kl_ref_exact": k if step == 0 else 0.0, "kl_sft_exact": 0.01 * step,
                             "kl_base_exact": 0.2, "perplexity": 50.0})
    evaluation = pd.DataFrame(rows)
    runs = evaluation[["study", "arm", "seed"]].drop_duplicates().assign(step_time_median_s=1.0, model_bytes=1)
    return Results(evaluation.iloc[:0], evaluation, evaluation.iloc[:0], runs)


def test_findings_on_a_synthetic_table():
    decided = findings(synthetic([0.30, 0.32, 0.31])).set_index("claim")
    row = decided.loc["the pitfall: KL to the reference starts at KL(SFT‖base) > 0"]
    assert row.verdict == "as expected" and row.control == "adapter+ref-adapter" and row.n_seeds == 3
    assert row.effect == pytest.approx(0.31) and 0 < row.ci_low < row.ci_high
    noisy = findings(synthetic([0.30, -0.40, 0.20])).set_index("claim")
    assert noisy.loc["the pitfall: KL to the reference starts at KL(SFT‖base) > 0"].verdict == "inconclusive"
    # claims whose arms did not run are left out, not guessed
    assert not decided.index.str.contains("SFT first").any()
    nothing = findings(Results(*(pd.DataFrame(columns=["study", "arm", "seed"]),) * 4))
    assert nothing.empty and "verdict" in nothing.columns


# --- the tiny run of notebook 04 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tables(tiny_outputs):
    folder = stage_dir(tiny_outputs, "tiny", "04_comparison")
    names = ("metrics", "evaluation", "samples", "runs", "summary")
    return {name: pd.read_csv(folder / f"{name}.csv") for name in names}


@pytest.mark.slow
def test_every_arm_ran_its_seeds_with_the_required_columns(tables, tiny):
    plan = plan_from_profile(tiny)
    summary, runs = tables["summary"], tables["runs"]
    assert list(summary.arm) == list(ARMS)
    for column in ["arm", "step", "reward_mean", "kl_ref", "kl_ref_exact", "kl_coef", "step_time_s"]:
        assert column in tables["metrics"].columns
    for column in ["arm", "backbones", "model_bytes", "trainable_params", "peak_cuda_bytes", "step_time_min_s"]:
        assert column in summary.columns
    for column in ["reward_mean", "kl_ref_exact", "kl_sft_exact", "kl_base_exact", "perplexity"]:
        assert column in tables["evaluation"].columns
    e = tables["evaluation"]
    due = {0, plan.steps, *range(plan.eval_every, plan.steps + 1, plan.eval_every)}
    assert set(e[(e.study == "main") & (e.arm == "merged+disabled")].step) == due
    due = {0, plan.penalty_steps, *range(plan.penalty_eval_every, plan.penalty_steps + 1, plan.penalty_eval_every)}
    assert set(e[e.study == "penalty"].step) == due
    main = runs[runs.study == "main"]
    for arm in ARMS:
        assert sorted(main[main.arm == arm].seed) == list(plan.seeds if ARMS[arm].claim else plan.side_seeds)
    assert len(plan.seeds) == tiny.comparison.seeds >= 2
    penalty = runs[runs.study == "penalty"]
    assert set(penalty.arm) == {"adapter+disabled", "adapter+ref-adapter"} and set(penalty.seed) == set(plan.seeds)


@pytest.mark.slow
def test_seeds_differ_within_an_arm_and_pair_across_arms(tables):
    metrics, samples = tables["metrics"], tables["samples"]
    main = metrics[metrics.study == "main"]
    first = main[main.step == 0].set_index(["arm", "seed"])
    # within an arm, seeds see different prompts and samples
    assert first.loc[("merged+disabled", 0), "reward_mean"] != first.loc[("merged+disabled", 1), "reward_mean"]
    # across arms, seed k is the same prompts and sampling seed: arms whose step-0 policy is the same
    # network (the merged model; the frozen SFT adapter under a zero LoRA) see identical rollouts
    for arm in ("merged+copy", "stacked"):
        twin = first.loc[("merged+disabled", 0), "reward_mean"]
        assert first.loc[(arm, 0), "reward_mean"] == pytest.approx(twin, abs=1e-6)
    held = samples[(samples.study == "main") & (samples.step == 0)]
    # the held-out prompts are the same for every arm and seed; the samples are paired by seed
    assert held.groupby(["arm", "seed"]).query.apply(tuple).nunique() == 1
    responses = held.set_index(["arm", "seed", "prompt"]).sort_index().response
    assert responses.loc["merged+copy", 0].equals(responses.loc["merged+disabled", 0])
    assert not responses.loc["merged+disabled", 0].equals(responses.loc["merged+disabled", 1])


@pytest.mark.slow
def test_kl_at_step_0(tables):
    metrics = tables["metrics"]
    first = metrics[(metrics.step == 0) & (metrics.study == "main")]
    others = first[first.arm != "adapter+disabled"]
    assert others.kl_ref.abs().max() < 1e-4 and others.kl_ref_exact.abs().max() < 1e-4
    pit = first[first.arm == "adapter+disabled"]
    assert (pit.kl_ref_exact > 1e-2).all()  # KL(SFT || base)
    e = tables["evaluation"]
    held = e[(e.step == 0) & (e.study == "main")].set_index(["arm", "seed"])
    assert held.loc["adapter+disabled"].kl_sft_exact.abs().max() < 1e-4  # the policy is still the SFT model
    assert (held.loc["adapter+disabled"].kl_base_exact > 1e-2).all()
    # the same policy, prompts and seed as its control: the same held-out numbers until the reference acts
    np.testing.assert_allclose(held.loc["adapter+disabled"].kl_ref_exact, held.loc["adapter+disabled"].kl_base_exact,
                               rtol=1e-4)  # the reference is the base
    columns = ["reward_mean", "kl_sft_exact", "kl_base_exact", "perplexity"]
    pd.testing.assert_frame_equal(held.loc["adapter+disabled"][columns], held.loc["adapter+ref-adapter"][columns])


@pytest.mark.slow
def test_explicit_copy_equals_disabled_after_merging(tables):
    metrics = tables["metrics"]
    columns = ["reward_mean", "kl_ref", "kl_ref_exact", "kl_coef", "policy_loss", "value_loss"]
    copy = metrics[(metrics.arm == "merged+copy")].set_index(["seed", "step"])[columns]
    twin = metrics[(metrics.arm == "merged+disabled") & (metrics.study == "main")].set_index(["seed", "step"])[columns]
    assert len(copy) > 1
    pd.testing.assert_frame_equal(copy, twin.loc[copy.index], atol=1e-5, rtol=1e-4)
    e, columns = tables["evaluation"], ["reward_mean", "kl_sft_exact", "kl_base_exact", "perplexity"]
    copy = e[e.arm == "merged+copy"].set_index(["seed", "step"])[columns]
    twin = e[(e.arm == "merged+disabled") & (e.study == "main")].set_index(["seed", "step"])[columns]
    assert len(copy) > 1
    pd.testing.assert_frame_equal(copy, twin.loc[copy.index], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_memory(tables):
    s = tables["summary"].set_index("arm")
    one = s.loc["merged+disabled", "model_bytes"]
    for arm in ("merged+copy", "adapter+copy"):
        assert s.loc[arm, "backbones"] == 2 and 1.8 < s.loc[arm, "model_bytes"] / one < 2.2
    for arm in ("adapter+ref-adapter", "stacked", "adapter+disabled", "base+disabled"):
        assert s.loc[arm, "backbones"] == 1 and s.loc[arm, "model_bytes"] / one < 1.1
    assert s.loc["adapter+ref-adapter", "model_bytes"] > s.loc["adapter+disabled", "model_bytes"]  # the extra adapter
    assert (s.trainable_params > 0).all()


def test_the_summary_takes_the_median_run_and_the_extremes_over_seeds():
    """One row per arm: the median of the runs' median step times, the smallest min and the largest max,
    the largest weights held (helpers.harness.results.Results.summary)."""
    runs = pd.DataFrame({"study": "main", "arm": ["a"] * 3 + ["b"], "beta": float("nan"), "seed": [0, 1, 2, 0],
                         "backbones": 1, "model_bytes": [10, 12, 11, 5], "rss_growth_bytes": [1, 9, 4, 2],
                         "peak_cuda_bytes": 0, "trainable_params": 7, "step_time_median_s": [1.0, 3.0, 2.5, 4.0],
                         "step_time_min_s": [0.5, 2.0, 2.2, 3.0], "step_time_max_s": [1.5, 6.0, 2.8, 5.0]})
    empty = runs.iloc[:0]
    s = Results(empty, empty, empty, runs).summary().set_index("arm")
    assert s.loc["a", ["seeds", "model_bytes", "rss_growth_bytes", "step_time_s", "step_time_min_s",
                       "step_time_max_s"]].tolist() == [3, 12, 4, 2.5, 0.5, 6.0]
    assert s.loc["b", "step_time_s"] == 4.0 and s.loc["b", "seeds"] == 1


@pytest.mark.slow
def test_findings_are_computed_from_the_tables(tables):
    results = Results(*(tables[k] for k in ("metrics", "evaluation", "samples", "runs")))
    table = findings(results).set_index("claim")
    kl0 = table.loc["the pitfall: KL to the reference starts at KL(SFT‖base) > 0"]
    e = tables["evaluation"]
    e = e[(e.study == "main") & (e.step == 0)].set_index(["arm", "seed"]).kl_ref_exact
    assert kl0.effect == pytest.approx((e.loc["adapter+disabled"] - e.loc["adapter+ref-adapter"]).mean())
    assert kl0.verdict == "as expected"
    assert table.loc["after merging, an explicit reference equals None"].verdict == "as expected"
    assert table.loc["an explicit copy holds twice the weights"].verdict == "as expected"
    assert set(table.verdict) <= {"as expected", "differs", "inconclusive"}
    assert (table[table.verdict == "inconclusive"].to_settle != "").all()


# --- resume ------------------------------------------------------------------------------------------------


@pytest.fixture
def fresh_outputs(tiny_outputs, tmp_path):
    """The 01 and 02 outputs of the tiny run, copied, without any 04 results."""
    for stage in ("01_sft", "02_merge"):
        shutil.copytree(stage_dir(tiny_outputs, "tiny", stage), stage_dir(tmp_path, "tiny", stage))
    return tmp_path


def one_arm(tiny, out, capsys, **config_overrides):
    tokenizer = load_tokenizer(stage_dir(out, "tiny", "02_merge") / "model")
    data = load_imdb(tiny)
    queries = ppo_queries(data["train"]["text"], tokenizer, n=2 * tiny.ppo.batch_size, seed=0)
    eval_queries = ppo_queries(data["heldout"]["text"], tokenizer, n=4, seed=1)
    plan = plan_from_profile(tiny.with_overrides(comparison_seeds=1, comparison_steps=2, comparison_penalty_steps=0),
                             arms=["merged+disabled"], **config_overrides)
    plan = replace(plan, eval_every=2, reward="vader")
    inputs = inputs_from_outputs(tiny, out, tokenizer, queries, eval_queries, vader_reward(), reward_name="vader")
    results = run_comparison(plan.runs(), inputs, out)
    return results, capsys.readouterr().out


@pytest.mark.slow
def test_resume_reruns_exactly_when_something_that_decides_the_results_changed(tiny, fresh_outputs, capsys):
    run = stage_dir(fresh_outputs, "tiny", "04_comparison") / "runs" / "main" / "merged+disabled" / "seed0"
    _, said = one_arm(tiny, fresh_outputs, capsys)
    assert "ran (not run yet)" in said
    landed = (run / "metrics.csv").stat().st_mtime_ns
    _, said = one_arm(tiny, fresh_outputs, capsys)
    assert "same settings, skipped" in said and (run / "metrics.csv").stat().st_mtime_ns == landed
    results, said = one_arm(tiny, fresh_outputs, capsys, learning_rate=2 * tiny.ppo.learning_rate)
    assert f"ppo.learning_rate: {tiny.ppo.learning_rate} -> {2 * tiny.ppo.learning_rate}" in said
    assert (run / "metrics.csv").stat().st_mtime_ns != landed and len(results.metrics) == 2
    (run / "samples.csv").unlink()  # a run whose files did not all land is not done
    _, said = one_arm(tiny, fresh_outputs, capsys, learning_rate=2 * tiny.ppo.learning_rate)
    assert "incomplete (missing samples.csv)" in said
    config = stage_dir(fresh_outputs, "tiny", "01_sft") / "adapter" / "adapter_config.json"
    config.write_text(config.read_text() + "\n")  # re-running notebook 01 changes the adapter's files
    # 02's merge is now of another adapter: refused before any run, naming the notebook to re-run (the runs'
    # fingerprints hold the adapter too, so a merge made again would re-run every run)
    with pytest.raises(StaleArtifactError, match="02_merge_adapter.ipynb again"):
        one_arm(tiny, fresh_outputs, capsys, learning_rate=2 * tiny.ppo.learning_rate)


def test_each_study_runs_its_own_ppo_settings():
    """smol: the reward-on runs take 04's cheaper batch with as many optimizer updates per step as 03; the
    penalty alone keeps 03's batch."""
    from helpers import get_profile

    smol = get_profile("smol")
    plan = plan_from_profile(smol)
    configs, ppo = comparison_configs(plan), config_from_profile(smol)
    main, penalty = configs["main"], configs["penalty"]
    assert (main.batch_size, main.mini_batch_size, main.steps) == (8, 4, plan.steps)
    assert (penalty.batch_size, penalty.mini_batch_size, penalty.steps) == (16, 8, plan.penalty_steps)

    def updates(c):
        return c.batch_size // c.mini_batch_size * c.ppo_epochs

    assert updates(main) == updates(ppo) == updates(penalty)
    assert main.learning_rate == penalty.learning_rate == ppo.learning_rate
    # every run of a study carries its study's settings; the side arms run as many steps as the claim arms
    for run in plan.runs():
        assert (run.config.batch_size, run.config.steps) == ((8, plan.steps) if run.study == "main" else
                                                             (16, plan.penalty_steps))
        assert run.reward == ("off" if run.study == "penalty" else smol.reward)
        # the penalty alone at the profile's fixed β (reward off: β alone sets the pull), the main study adaptive
        assert run.beta == (smol.comparison.penalty_kl_coef if run.study == "penalty" else None)


@pytest.mark.slow
def test_a_study_runs_with_its_own_config(tiny, fresh_outputs):
    tokenizer = load_tokenizer(stage_dir(fresh_outputs, "tiny", "02_merge") / "model")
    queries = ppo_queries(load_imdb(tiny)["train"]["text"], tokenizer, n=8, seed=0)
    plan = plan_from_profile(tiny.with_overrides(comparison_seeds=1, comparison_steps=1, comparison_penalty_steps=1),
                             arms=["adapter+disabled"])
    plan = replace(plan, eval_every=1, penalty_eval_every=1, reward="vader",
                   main=replace(plan.main, batch_size=2, mini_batch_size=2),
                   penalty=replace(plan.penalty, batch_size=4, mini_batch_size=2))
    inputs = inputs_from_outputs(tiny, fresh_outputs, tokenizer, queries, queries[:2], vader_reward(), reward_name="vader")
    run_comparison(plan.runs(), inputs, fresh_outputs)
    runs = stage_dir(fresh_outputs, "tiny", "04_comparison") / "runs"
    for study, batch in [("main", 2), ("penalty", 4)]:
        fingerprint = json.loads((runs / study / "adapter+disabled" / "seed0" / "fingerprint.json").read_text())
        assert fingerprint["ppo"]["batch_size"] == batch
    metrics = pd.read_csv(stage_dir(fresh_outputs, "tiny", "04_comparison") / "metrics.csv")
    assert set(metrics.study) == {"main", "penalty"}


@pytest.mark.slow
def test_missing_inputs_name_the_notebook_to_run_first(tiny, tmp_path):
    from helpers.artifacts import MissingArtifactError

    with pytest.raises(MissingArtifactError, match="01_sft_lora.ipynb"):
        inputs_from_outputs(tiny, tmp_path, None, [], [], vader_reward())
    assert not list(tmp_path.rglob("*.csv"))


def test_unknown_arm_lists_the_valid_ones(tiny):
    with pytest.raises(ValueError, match="merged\\+disabled, merged\\+copy"):
        plan_from_profile(tiny, arms=["magic"])


@pytest.mark.parametrize("bad, message", [
    (dict(comparison_seeds=0), "comparison_seeds must be an integer >= 1, not 0"),
    (dict(comparison_seeds=-2), "comparison_seeds must be an integer >= 1, not -2"),
    (dict(comparison_steps=0), "comparison_steps must be an integer >= 1, not 0"),
    (dict(comparison_penalty_steps=-1), "comparison_penalty_steps must be an integer >= 0, not -1"),
    (dict(comparison_seeds=2.5), "comparison_seeds must be an integer >= 1, not 2.5"),
])
def test_plan_values_are_checked_where_they_enter(tiny, bad, message, monkeypatch):
    """`SEEDS = 0` in 04's parameters used to run the profile's default seeds silently. A value from 04's
    parameters and one from the environment ($TUTORIAL_COMPARISON_SEEDS) are checked alike."""
    with pytest.raises(ValueError, match=re.escape(message)):
        configure("tiny", **bad)
    (name, value), = bad.items()
    monkeypatch.setenv(f"TUTORIAL_{name.upper()}", str(value))
    with pytest.raises(ValueError, match=re.escape(message)):
        configure("tiny")


@pytest.mark.parametrize("bad, message", [
    (dict(seed=-1), "SEED must be an integer >= 0, not -1"),
    (dict(init_kl_coef=-0.1), "β must be >= 0, not -0.1"),
])
def test_plan_values_are_checked_when_the_plan_is_built(tiny, bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        plan_from_profile(tiny, **bad).runs()


def test_a_run_is_a_frozen_value(tiny):
    run = plan_from_profile(tiny.with_overrides(comparison_seeds=1), seed=3).runs()[0]
    assert run.config.seed == run.seed == 3 and run.label == "main/merged+disabled/seed3"
    with pytest.raises(Exception):
        run.seed = 4
    fixed = Run("fixed-beta", "stacked", 1, replace(run.config, adaptive_kl=False, init_kl_coef=0.3), "vader", 2)
    assert fixed.beta == 0.3 and fixed.label == "fixed-beta/stacked/beta0.3/seed1" and fixed.config.seed == 1
    with pytest.raises(ValueError, match="valid arms: merged\\+disabled"):
        Run("main", "magic", 0, run.config, "vader", 1)


def test_plan_pairs_seeds(tiny):
    plan = plan_from_profile(tiny.with_overrides(comparison_seeds=3), seed=5)
    assert plan.seeds == (5, 6, 7) and plan.side_seeds == plan.seeds[: tiny.comparison.side_seeds]
    queries = [[i] for i in range(40)]
    assert seed_queries(queries, 5) == seed_queries(queries, 5) != seed_queries(queries, 6)
    assert sorted(seed_queries(queries, 6)) == queries


# --- an 8-bit profile ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_an_8bit_profile_loads_arms_and_yardsticks_in_8bit(tiny, tiny_architectures, tmp_path, capsys):
    """A tiny GPT-NeoX in 8-bit on CPU, as gpt-neox-20b runs: every arm's backbone and both yardsticks."""
    from peft import get_peft_model

    from helpers.merge import merge_adapter, save_merged
    from helpers.models import load_model, lora_config
    from helpers.sft import save_adapter

    profile = replace(tiny, model=str(tiny_architectures["gpt_neox"]), load_in_8bit=True, lora=replace(tiny.lora, targets=None))
    tokenizer = load_tokenizer(profile)
    base = load_model(profile)
    config = lora_config(profile, base)
    config.init_lora_weights = False  # SFT != base
    adapter = save_adapter(get_peft_model(base, config), stage_dir(tmp_path, profile.name, "01_sft") / "adapter")
    merged, check = merge_adapter(profile, adapter, tokenizer, load_imdb(profile)["heldout"]["text"][:2])
    save_merged(merged, tokenizer, stage_dir(tmp_path, profile.name, "02_merge") / "model", check)
    merged_dir = stage_dir(tmp_path, profile.name, "02_merge") / "model"
    assert all(is_quantized(y.model) for y in yardsticks(profile, merged_dir, "8bit").values())
    for arm in ("merged+copy", "adapter+ref-adapter"):
        built = build_arm(arm, profile, adapter, merged_dir, quantize="8bit")
        assert is_quantized(built.policy) and all(is_quantized(m) for m in built.holds[1:])
    queries = ppo_queries(load_imdb(profile)["train"]["text"], tokenizer, n=2 * profile.ppo.batch_size, seed=0)
    plan = replace(plan_from_profile(profile.with_overrides(comparison_seeds=1, comparison_steps=2, comparison_penalty_steps=0),
                                    arms=["merged+disabled"]),
                   eval_every=2, reward="vader")
    inputs = inputs_from_outputs(profile, tmp_path, tokenizer, queries, queries[:4], vader_reward(), reward_name="vader")
    results = run_comparison(plan.runs(), inputs, tmp_path)
    assert len(results.metrics) == 2 and torch.isfinite(torch.tensor(results.evaluation.kl_sft_exact.values)).all()
    fingerprint = (stage_dir(tmp_path, profile.name, "04_comparison") / "runs" / "main" / "merged+disabled" /
                   "seed0" / "fingerprint.json").read_text()
    assert '"quantization": "8bit"' in fingerprint
