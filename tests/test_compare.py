"""The reference-model comparison (notebook 04) on `tiny`: what the run wrote, and the runner itself."""

import pandas as pd
import pytest

from helpers.artifacts import stage_dir
from helpers.compare import ARMS, findings, run_comparison
from helpers.data import load_imdb, ppo_queries
from helpers.models import load_tokenizer
from helpers.ppo import config_from_profile
from helpers.rewards import vader_reward

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tables(tiny_outputs):
    folder = stage_dir(tiny_outputs, "tiny", "04_comparison")
    return pd.read_csv(folder / "metrics.csv"), pd.read_csv(folder / "summary.csv")


def test_every_arm_ran_with_the_required_columns(tables, tiny):
    metrics, summary = tables
    assert list(summary.arm) == list(ARMS)
    for column in ["arm", "step", "reward_mean", "kl_ref", "kl_sft", "kl_base", "kl_coef", "step_time_s"]:
        assert column in metrics.columns
    for column in ["arm", "backbones", "model_bytes", "trainable_params", "peak_cuda_bytes"]:
        assert column in summary.columns
    assert metrics.groupby("arm").step.count().eq(tiny.comparison_steps).all()


def test_kl_at_step_0(tables):
    metrics, _ = tables
    first = metrics[metrics.step == 0].set_index("arm")
    others = first.drop(index="adapter+disabled")
    assert others.kl_ref.abs().max() < 1e-4 and others.kl_ref_exact.abs().max() < 1e-4
    pit = first.loc["adapter+disabled"]
    assert pit.kl_ref_exact > 1e-2  # KL(SFT || base)
    assert pit.kl_ref_exact == pytest.approx(pit.kl_base_exact, rel=1e-4)  # the reference is the base
    assert pit.kl_ref == pytest.approx(pit.kl_base, rel=1e-3, abs=1e-4)
    assert abs(pit.kl_sft_exact) < 1e-4 and abs(pit.kl_sft) < 1e-4  # the policy is still the SFT model


def test_explicit_copy_equals_disabled_after_merging(tables):
    metrics, _ = tables
    a = metrics[metrics.arm == "merged+disabled"].reset_index(drop=True)
    b = metrics[metrics.arm == "merged+copy"].reset_index(drop=True)
    columns = ["reward_mean", "kl_ref", "kl_ref_exact", "kl_sft", "kl_base", "kl_coef", "policy_loss", "value_loss"]
    pd.testing.assert_frame_equal(a[columns], b[columns], atol=1e-5, rtol=1e-4)


def test_memory(tables):
    _, summary = tables
    s = summary.set_index("arm")
    one = s.loc["merged+disabled", "model_bytes"]
    for arm in ("merged+copy", "adapter+copy"):
        assert s.loc[arm, "backbones"] == 2 and 1.8 < s.loc[arm, "model_bytes"] / one < 2.2
    for arm in ("adapter+ref-adapter", "stacked", "adapter+disabled", "base+disabled"):
        assert s.loc[arm, "backbones"] == 1 and s.loc[arm, "model_bytes"] / one < 1.1
    # the extra frozen adapter is counted
    assert s.loc["adapter+ref-adapter", "model_bytes"] > s.loc["adapter+disabled", "model_bytes"]
    assert (s.trainable_params > 0).all()


def test_findings_are_computed_from_the_table(tables, tiny_outputs):
    metrics, summary = tables
    table = findings(metrics, summary)
    kl0 = table[table.finding == "adapter+disabled: KL to its reference at step 0"].iloc[0]
    assert kl0.as_expected
    assert f"{metrics[(metrics.arm == 'adapter+disabled') & (metrics.step == 0)].kl_ref_exact.iloc[0]:.4g}" in kl0.measured
    assert table[table.finding.str.startswith("merged+disabled vs merged+copy")].as_expected.all()
    # change the numbers and the findings change with them
    samples = pd.read_csv(stage_dir(tiny_outputs, "tiny", "04_comparison") / "samples.csv")
    assert set(samples.when) == {"before", "after"} and set(samples.arm) == set(ARMS)
    with_samples = findings(metrics, summary, samples)
    gains = with_samples[with_samples.finding.str.contains("held-out reward before")]
    assert len(gains) == len(ARMS)
    mean = samples[(samples.arm == "stacked") & (samples.when == "after")].reward.mean()
    assert f"{mean:.3f}" in gains[gains.finding.str.startswith("stacked")].measured.iloc[0]
    tampered = metrics.copy()
    tampered.loc[(tampered.arm == "merged+copy") & (tampered.step == 0), "kl_ref_exact"] = 0.5
    flipped = findings(tampered, summary)
    assert not flipped[flipped.finding == "merged+copy: KL to its reference at step 0"].as_expected.iloc[0]


def test_resume_skips_finished_arms(tiny_outputs, tiny, capsys):
    folder = stage_dir(tiny_outputs, "tiny", "04_comparison")
    before = (folder / "metrics.csv").read_text(), (folder / "metrics.csv").stat().st_mtime_ns
    tokenizer = load_tokenizer(stage_dir(tiny_outputs, "tiny", "02_merge") / "model")
    queries = ppo_queries(load_imdb(tiny)["train"]["text"], tokenizer, n=tiny.comparison_steps * tiny.ppo_batch_size, seed=0)
    config = config_from_profile(tiny, steps=tiny.comparison_steps, seed=0)
    metrics, summary = run_comparison(tiny, tiny_outputs, tokenizer, queries, vader_reward(), config,
                                      arms=["merged+disabled", "stacked"], progress=False)
    assert "merged+disabled: results exist, skipped" in capsys.readouterr().out
    assert ((folder / "metrics.csv").read_text(), (folder / "metrics.csv").stat().st_mtime_ns) == before
    assert list(summary.arm) == ["merged+disabled", "stacked"] and len(metrics) == 2 * tiny.comparison_steps


def test_missing_inputs_name_the_notebook_to_run_first(tiny, tmp_path):
    from helpers.artifacts import MissingArtifactError

    with pytest.raises(MissingArtifactError, match="01_sft_lora.ipynb"):
        run_comparison(tiny, tmp_path, None, [], vader_reward(), config_from_profile(tiny))
    assert not list(tmp_path.rglob("*.csv"))


def test_unknown_arm_lists_the_valid_ones(tiny_outputs, tiny):
    with pytest.raises(ValueError, match="merged\\+disabled, merged\\+copy"):
        run_comparison(tiny, tiny_outputs, None, [], vader_reward(), config_from_profile(tiny), arms=["magic"])
