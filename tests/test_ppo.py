"""The PPO loop and the reference strategies on `tiny`."""

import collections

import pandas as pd
import pytest
import torch
from peft import get_peft_model

from helpers.artifacts import stage_dir
from helpers.compare import ARMS, build_arm, yardsticks
from helpers.data import load_imdb, ppo_queries
from helpers.merge import merge_adapter, save_merged
from helpers.models import load_model, lora_config, new_lora
from helpers.ppo import NonFiniteError, ValueHead, config_from_profile, rollout, save_ppo, train
from helpers.reference import DisabledAdapters
from helpers.rewards import token_fraction_reward, vader_reward
from helpers.sft import save_adapter

TIMING = ["gen_s", "score_s", "ref_s", "update_s", "step_time_s", "peak_rss_bytes", "peak_cuda_bytes"]


@pytest.fixture(scope="module")
def sft_outputs(tiny, tokenizer, tmp_path_factory):
    """An 'SFT adapter' (random, B != 0, so SFT != base) and its merge, laid out as notebooks 01-02 do."""
    out = tmp_path_factory.mktemp("ppo-outputs")
    torch.manual_seed(0)
    base = load_model(tiny)
    config = lora_config(tiny, base)
    config.init_lora_weights = False
    adapter = save_adapter(get_peft_model(base, config), stage_dir(out, "tiny", "01_sft") / "adapter")
    merged, verification = merge_adapter(tiny, adapter, tokenizer, load_imdb(tiny)["heldout"]["text"][:4])
    save_merged(merged, tokenizer, stage_dir(out, "tiny", "02_merge") / "model", verification)
    return out


@pytest.fixture(scope="module")
def queries(tiny, tokenizer):
    return ppo_queries(load_imdb(tiny)["train"]["text"], tokenizer, n=64, seed=0)


def arm(name, tiny, out):
    return build_arm(name, tiny, stage_dir(out, "tiny", "01_sft") / "adapter", stage_dir(out, "tiny", "02_merge") / "model")


def run_arm(name, tiny, out, tokenizer, queries, steps=1, **overrides):
    a = arm(name, tiny, out)
    config = config_from_profile(tiny, steps=steps, **overrides)
    sticks = yardsticks(tiny, stage_dir(out, "tiny", "02_merge") / "model")
    return a, train(a.policy, a.value_head, a.reference, tokenizer, queries, vader_reward(), config,
                    yardsticks=sticks, progress=False)


@pytest.mark.parametrize("name", list(ARMS))
def test_kl_at_step_0(name, tiny, sft_outputs, tokenizer, queries):
    """Zero wherever the reference equals the initial policy; KL(SFT || base) where it does not."""
    _, metrics = run_arm(name, tiny, sft_outputs, tokenizer, queries)
    first = metrics.iloc[0]
    if name == "adapter+disabled":
        assert first.kl_ref_exact > 1e-3
        assert first.kl_ref_exact == pytest.approx(first.kl_base_exact, rel=1e-4)  # the reference IS the base
        assert first.kl_ref == pytest.approx(first.kl_base, rel=1e-4, abs=1e-5)
        assert abs(first.kl_sft_exact) < 1e-5
    else:
        assert abs(first.kl_ref) < 1e-5 and abs(first.kl_ref_exact) < 1e-5


def test_only_lora_and_value_head_change(tiny, sft_outputs, tokenizer, queries):
    for name, must_change, must_stay in [("merged+disabled", ["lora_B.ppo"], []),
                                         ("stacked", ["lora_B.ppo"], ["lora_A.sft", "lora_B.sft"]),
                                         ("adapter+ref-adapter", ["lora_B.sft"], ["lora_A.ref", "lora_B.ref"])]:
        a = arm(name, tiny, sft_outputs)
        before = {k: v.clone() for k, v in a.policy.state_dict().items()}
        head_before = a.value_head.summary.weight.clone()
        train(a.policy, a.value_head, a.reference, tokenizer, queries, vader_reward(),
              config_from_profile(tiny, steps=1), progress=False)
        after = a.policy.state_dict()
        changed = {k for k in before if not torch.equal(before[k], after[k])}
        assert changed, name
        assert all("lora_" in k for k in changed), (name, sorted(changed)[:3])  # backbone bit-identical
        for key in must_change:
            assert any(key in k for k in changed), (name, key)
        for key in must_stay:
            assert not any(key in k for k in changed), (name, key)
        assert not torch.equal(head_before, a.value_head.summary.weight)


def test_same_seed_same_metrics(tiny, sft_outputs, tokenizer, queries):
    _, first = run_arm("merged+disabled", tiny, sft_outputs, tokenizer, queries, steps=2)
    _, second = run_arm("merged+disabled", tiny, sft_outputs, tokenizer, queries, steps=2)
    pd.testing.assert_frame_equal(first.drop(columns=TIMING), second.drop(columns=TIMING))
    _, other_seed = run_arm("merged+disabled", tiny, sft_outputs, tokenizer, queries, steps=2, seed=1)
    assert not first.reward_mean.equals(other_seed.reward_mean)


def test_metrics_table_has_one_row_per_step(tiny, sft_outputs, tokenizer, queries):
    _, metrics = run_arm("merged+disabled", tiny, sft_outputs, tokenizer, queries, steps=3)
    assert list(metrics.step) == [0, 1, 2]
    for column in ["reward_mean", "reward_std", "kl_ref", "kl_ref_exact", "kl_coef", "entropy", "policy_loss",
                   "value_loss", "clipfrac", "approx_kl", "response_len", *TIMING, "kl_sft", "kl_base"]:
        assert column in metrics.columns, column
    assert metrics.response_len.between(*tiny.response_len).all()
    assert (metrics.kl_coef.iloc[1:] != tiny.ppo_lr).all() and metrics.kl_coef.iloc[0] == 0.2


def test_responses_respect_drawn_lengths(tiny, tokenizer, queries, tiny_base):
    ro = rollout(tiny_base, tokenizer, queries[:6], [1, 2, 3, 4, 5, 6])
    assert ro.response_mask.sum(1).tolist() <= [1, 2, 3, 4, 5, 6]
    assert ro.input_ids.shape[1] == ro.query_len + ro.response_mask.shape[1]
    assert all(t.startswith(tokenizer.decode(q, skip_special_tokens=True)) for t, q in zip(ro.texts, queries))


def test_non_finite_reward_stops_with_the_step_and_quantity(tiny, tokenizer, queries, tiny_base):
    policy = new_lora(tiny_base, tiny)
    head = ValueHead(tiny_base.config.hidden_size)

    def broken(texts):
        return torch.full((len(texts),), float("nan"))

    with pytest.raises(NonFiniteError, match="step 0: rewards"):
        train(policy, head, DisabledAdapters(policy), tokenizer, queries, broken, config_from_profile(tiny, steps=2),
              progress=False)


def test_the_loop_learns_a_verifiable_reward(tiny, tokenizer, tiny_base):
    """Reward: the fraction of ' the' tokens in the text. The tiny base says ' the' a few % of the time;
    a few dozen PPO steps should clearly raise it."""
    policy = new_lora(tiny_base, tiny)
    head = ValueHead(tiny_base.config.hidden_size)
    prompt = [tokenizer("I think", add_special_tokens=False).input_ids]
    config = config_from_profile(tiny, steps=24, batch_size=32, mini_batch_size=8, learning_rate=1e-2,
                                 init_kl_coef=0.02, response_len=(8, 8))
    metrics = train(policy, head, DisabledAdapters(policy), tokenizer, prompt * 64,
                    token_fraction_reward(tokenizer, " the"), config, progress=False)
    start, end = metrics.reward_mean.iloc[:4].mean(), metrics.reward_mean.iloc[-8:].mean()
    assert end > 2 * start and end - start > 0.03, metrics.reward_mean.round(3).tolist()


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_backbone(bits, tiny, tokenizer, queries, tmp_path):
    base = load_model(tiny, quantize=bits)
    policy = new_lora(base, tiny)
    head = ValueHead(base.config.hidden_size)
    frozen = {k: v.clone() for k, v in policy.state_dict().items() if "lora_" not in k}
    metrics = train(policy, head, DisabledAdapters(policy), tokenizer, queries, vader_reward(),
                    config_from_profile(tiny, steps=2), progress=False)
    assert abs(metrics.kl_ref_exact[0]) < 1e-5
    assert metrics.drop(columns=TIMING).notna().all().all()
    after = policy.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in frozen.items())
    saved = save_ppo(policy, head, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "value_head.safetensors"} <= {f.name for f in saved.iterdir()}


def test_token_fraction_reward(tokenizer):
    reward = token_fraction_reward(tokenizer, " the")
    assert reward(["the the", "a b"]).tolist() == pytest.approx([0.5, 0.0])
    with pytest.raises(ValueError, match="exactly one"):
        token_fraction_reward(tokenizer, " cinematography extravaganza")


def test_vader_reward_orders_sentiment():
    scores = vader_reward()(["This film is wonderful and moving.", "This film is awful and boring."])
    assert scores[0] > 0.5 and scores[1] < -0.5
