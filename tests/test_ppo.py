"""The PPO loop and the reference strategies on `tiny`."""

import dataclasses
import math

import pandas as pd
import pytest
import torch
from conftest import random_sft

from helpers.artifacts import stage_dir
from helpers.data import load_imdb, ppo_queries
from helpers.evaluation import Evaluator
from helpers.harness.arms import ARMS, build_arm, yardsticks
from helpers.harness.trainers import ppo_arm
from helpers.models import load_model, new_lora
from helpers.ppo import TIMING_COLUMNS, ValueHead, config_from_profile, rollout, save_ppo, train
from helpers.ppo_math import NonFiniteError
from helpers.reference import DisabledAdapters
from helpers.rewards import token_fraction_reward, vader_reward
from helpers.sampling import eos_token_ids, generate_own_distribution, sampling_config

TIMING = [c for c in TIMING_COLUMNS if c != "eval_s"]


@pytest.fixture(scope="module")
def sft_outputs(tiny, tokenizer, tmp_path_factory):
    """An 'SFT adapter' (random, B != 0, so SFT != base) and its merge, laid out as notebooks 01-02 do."""
    out = tmp_path_factory.mktemp("ppo-outputs")
    random_sft(tiny, tokenizer, out)
    return out


@pytest.fixture(scope="module")
def queries(tiny, tokenizer):
    return ppo_queries(load_imdb(tiny)["train"]["text"], tokenizer, n=64, seed=0)


def arm(name, tiny, out):
    return ppo_arm(build_arm(name, tiny, stage_dir(out, "tiny", "01_sft") / "adapter", stage_dir(out, "tiny", "02_merge") / "model"),
                   seed=0)


def run_arm(name, tiny, out, tokenizer, queries, steps=1, evaluator=None, **overrides):
    a = arm(name, tiny, out)
    config = config_from_profile(tiny, steps=steps, **overrides)
    return a, train(a.policy, a.value_head, a.reference, tokenizer, queries, vader_reward(), config,
                    evaluator=evaluator, progress=False)


@pytest.mark.parametrize("name", list(ARMS))
def test_kl_at_step_0(name, tiny, sft_outputs, tokenizer, queries):
    """Zero wherever the reference equals the initial policy; KL(SFT || base) where it does not."""
    sticks = yardsticks(tiny, stage_dir(sft_outputs, "tiny", "02_merge") / "model")
    evaluator = Evaluator(tokenizer, queries[:4], vader_reward(), tiny.ppo.response_len, every=1, yardsticks=sticks)
    _, metrics = run_arm(name, tiny, sft_outputs, tokenizer, queries, evaluator=evaluator)
    first, held_out = metrics.iloc[0], evaluator.table().iloc[0]  # both before the first update
    if name == "adapter+disabled":
        assert first.kl_ref_exact > 1e-3 and held_out.kl_ref_exact > 1e-3
        assert held_out.kl_ref_exact == pytest.approx(held_out.kl_base_exact, rel=1e-4)  # the reference IS the base
        assert abs(held_out.kl_sft_exact) < 1e-5
    else:
        assert abs(first.kl_ref) < 1e-5 and abs(first.kl_ref_exact) < 1e-5 and abs(held_out.kl_ref_exact) < 1e-5


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
                   "value_loss", "clipfrac", "approx_kl", "response_len", *TIMING]:
        assert column in metrics.columns, column
    assert metrics.response_len.between(1, tiny.ppo.response_len[1]).all()
    # the adaptive controller, step by step: beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * batch / horizon
    config = config_from_profile(tiny)
    assert metrics.kl_coef.iloc[0] == config.init_kl_coef
    for (_, prev), (_, now) in zip(metrics.iloc[:-1].iterrows(), metrics.iloc[1:].iterrows()):
        error = min(max(prev.kl_ref / config.kl_target - 1, -0.2), 0.2)
        assert now.kl_coef == pytest.approx(prev.kl_coef * (1 + error * config.batch_size / config.kl_horizon), rel=1e-12)


def test_responses_respect_drawn_lengths(tiny, tokenizer, queries, tiny_base):
    lengths = torch.tensor([1, 2, 3, 4, 5, 6])
    ro = rollout(tiny_base, tokenizer, queries[:6], lengths.tolist())
    assert (ro.response_mask.sum(1) <= lengths).all() and (ro.response_mask.sum(1) >= 1).all()
    assert ro.input_ids.shape[1] == ro.query_len + ro.response_mask.shape[1]
    assert all(t.startswith(tokenizer.decode(q, skip_special_tokens=True)) for t, q in zip(ro.texts, queries))


def test_kept_logits_are_the_forward_pass_the_evaluation_saves(tiny, tokenizer, queries, tiny_base):
    """`keep_logits` gives what `response_forward` computes at the response positions (generation reuses a
    KV cache: float rounding only), and draws the same samples as a rollout without it."""
    from helpers.models import response_forward

    lengths = [3, 8, 5, 8]
    torch.manual_seed(0)
    kept = rollout(tiny_base, tokenizer, queries[:4], lengths, keep_logits=True)
    torch.manual_seed(0)
    plain = rollout(tiny_base, tokenizer, queries[:4], lengths)
    assert torch.equal(kept.input_ids, plain.input_ids) and plain.logits is None
    with torch.no_grad():
        again = response_forward(tiny_base, *kept.rows(slice(None)))[0]
    assert kept.logits.shape == again.shape
    mask = kept.response_mask.bool()
    torch.testing.assert_close(kept.logits[mask], again[mask], atol=1e-4, rtol=1e-4)


@pytest.fixture
def opinionated_base(tiny):
    """The tiny base with a generation_config that would sample off-policy: a temperature, a repetition
    penalty, min_p, top_k, and a list of end-of-sequence ids."""
    model = load_model(tiny)
    model.generation_config.update(temperature=0.3, repetition_penalty=3.0, min_p=0.5, top_k=3, do_sample=True)
    return model


def test_rollouts_sample_the_policys_own_distribution(opinionated_base, tokenizer, queries):
    """No logits processor from the checkpoint: the scores generation samples from are the raw logits."""
    model = opinionated_base
    batch = tokenizer([tokenizer.decode(q) for q in queries[:4]], return_tensors="pt", padding=True)
    config = sampling_config(eos_token_ids(model, tokenizer), tokenizer.pad_token_id, max_new_tokens=5)
    config.update(output_scores=True, output_logits=True, return_dict_in_generate=True)
    out = generate_own_distribution(model, config, **batch)
    for scores, logits in zip(out.scores, out.logits):
        assert torch.equal(scores, logits)
    assert model.generation_config.temperature == 0.3  # the checkpoint's own config is given back
    # the control: plain generate with the same config fills the unset settings from the checkpoint
    warped = model.generate(**batch, generation_config=config)
    assert not all(torch.equal(s, l) for s, l in zip(warped.scores, warped.logits))


def test_response_mask_cuts_at_every_end_of_sequence_id(opinionated_base, tokenizer, queries):
    """generation_config.eos_token_id may be a list: the mask ends at the first of any of them (kept)."""
    model, lengths = opinionated_base, [8] * 4
    torch.manual_seed(0)
    free = rollout(model, tokenizer, queries[:4], lengths)
    stop = free.response_tokens[0, 2].item()  # a token the seeded sample emits in row 0
    first = (free.response_tokens[0] == stop).nonzero()[0].item()
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, stop]
    assert eos_token_ids(model, tokenizer) == sorted({tokenizer.eos_token_id, stop})
    torch.manual_seed(0)
    cut = rollout(model, tokenizer, queries[:4], lengths)
    assert cut.response_mask[0].sum().item() == first + 1
    assert cut.response_tokens[0, first].item() == stop
    assert (cut.response_tokens[0, first + 1 :] == tokenizer.pad_token_id).all()


@pytest.mark.parametrize("name", ["merged+disabled", "adapter+disabled", "adapter+copy", "adapter+ref-adapter",
                                  "stacked"])
def test_reference_leaves_requires_grad_as_it_found_it(name, tiny, sft_outputs):
    """peft re-enables gradients on every active adapter when disable_adapter() exits or set_adapter() runs;
    a frozen adapter must stay frozen after a reference pass (the stacked policy's `sft`, here also under
    DisabledAdapters)."""
    a = arm(name, tiny, sft_outputs)
    references = [a.reference] + ([DisabledAdapters(a.policy)] if name == "stacked" else [])
    ids = torch.tensor([[5, 6, 7, 8]])
    for reference in references:
        flags = {n: p.requires_grad for n, p in a.policy.named_parameters()}
        assert any(flags.values()) and not all(flags.values())
        reference.logits(ids, torch.ones_like(ids), 2)
        assert {n: p.requires_grad for n, p in a.policy.named_parameters()} == flags, type(reference).__name__


def test_non_finite_reward_stops_with_the_step_and_quantity(tiny, tokenizer, queries, tiny_base):
    policy = new_lora(tiny_base, tiny)
    head = ValueHead(tiny_base.config.hidden_size)

    def broken(texts):
        return torch.full((len(texts),), float("nan"))

    with pytest.raises(NonFiniteError, match="step 0: rewards"):
        train(policy, head, DisabledAdapters(policy), tokenizer, queries, broken, config_from_profile(tiny, steps=2),
              progress=False)


@pytest.mark.slow
def test_the_loop_learns_a_verifiable_reward(tiny, tokenizer):
    """A paired design: the same seed trains once on +r and once on -r, r = the fraction of ' the' tokens.
    If PPO follows its reward, the +r policy says ' the' more often than the -r policy. The margin is
    measured in standard errors of the difference over the last steps' rollouts, so it does not hinge on
    the low bits of a CPU's arithmetic; a sign error anywhere in the loop flips the difference."""
    fraction = token_fraction_reward(tokenizer, " the")
    prompt = [tokenizer("I think", add_special_tokens=False).input_ids]
    config = config_from_profile(tiny, steps=16, batch_size=32, mini_batch_size=8, learning_rate=1e-2,
                                 init_kl_coef=0.02, response_len=(8, 8))
    finals = {}
    for sign in (+1, -1):
        torch.manual_seed(0)
        base = load_model(tiny)
        policy = new_lora(base, tiny)
        seen = []

        def reward(texts):
            r = fraction(texts)
            seen.append(r)
            return sign * r

        train(policy, ValueHead(base.config.hidden_size), DisabledAdapters(policy), tokenizer, prompt * 64,
              reward, config, progress=False)
        finals[sign] = torch.cat(seen[-6:])  # the fraction itself over the last 6 steps' rollouts
    up, down = finals[+1], finals[-1]
    se = math.sqrt(up.var() / len(up) + down.var() / len(down))
    assert (up.mean() - down.mean()) / se > 4, (up.mean().item(), down.mean().item(), se)


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_quantized_backbone(bits, tiny, tokenizer, queries, tmp_path):
    """What matters on an 8-bit/4-bit backbone: the frozen model (adapters disabled) computes the same
    logits after PPO steps as before, no base parameter receives a gradient, and the LoRA does train.
    (The raw state_dict is no yardstick: bitsandbytes' CPU 4-bit backend repacks weights in place.)"""
    base = load_model(tiny, quantize=bits)
    policy = new_lora(base, tiny)
    head = ValueHead(base.config.hidden_size)
    ids = torch.tensor([queries[0] + queries[1]])

    def frozen_logits():
        with torch.no_grad(), policy.disable_adapter():
            return policy(input_ids=ids).logits

    # On a CPU with AVX512-BF16, bitsandbytes repacks a 4-bit weight for a faster kernel (bf16 absmax) at the
    # first no-grad forward in eval mode, and `state_dict()` unpacks it again: the frozen logits depend on
    # which form the weight is in. So: one warm-up step, no state_dict() until the comparison is made, and
    # frozen forwards until two in a row agree.
    config = config_from_profile(tiny, steps=1)
    first = train(policy, head, DisabledAdapters(policy), tokenizer, queries, vader_reward(), config, progress=False)
    assert abs(first.kl_ref_exact[0]) < 1e-5
    before = frozen_logits()
    for _ in range(5):
        before, previous = frozen_logits(), before
        if torch.equal(before, previous):
            break
    lora_before = {n: p.detach().clone() for n, p in policy.named_parameters() if "lora_" in n}
    metrics = train(policy, head, DisabledAdapters(policy), tokenizer, queries, vader_reward(),
                    dataclasses.replace(config, steps=2, seed=1), progress=False)
    assert metrics.drop(columns=TIMING).notna().all().all()
    assert torch.equal(frozen_logits(), before)
    assert not [n for n, p in policy.named_parameters() if "lora_" not in n and p.grad is not None]
    assert any(not torch.equal(p, lora_before[n]) for n, p in policy.named_parameters() if "lora_" in n)
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


@pytest.mark.parametrize("path", ["reference", "fast"])
def test_one_step_by_hand_as_notebook_03_shows_it_equals_one_step_of_train(path, tiny, sft_outputs, tokenizer,
                                                                           queries):
    """03's walkthrough (the functions `train` calls, in its order) and `train` must not drift apart: one step
    by hand gives the same rollout, scores, KL, losses and trained weights as train(steps=1). Bit for bit against
    train on the reference path (which, like the walkthrough, forwards the rollout again); on the fast path
    (old log-probs and values from generation's own forwards) the same rollout and scores, the rest up to
    float rounding."""
    import numpy as np

    from helpers.fastpath import reference_path
    from helpers.ppo import (
        gae,
        gather_logprobs,
        kl_exact,
        log_softmax,
        per_token_rewards,
        policy_forward,
        ppo_epochs,
        step_batch,
        trainable_parameters,
    )
    from helpers.ppo_math import whiten
    from helpers.provenance import weights_hash

    config = config_from_profile(tiny, steps=1)
    reward = vader_reward()
    by_train = arm("merged+disabled", tiny, sft_outputs)
    with reference_path(path == "reference"):
        metrics = train(by_train.policy, by_train.value_head, by_train.reference, tokenizer, queries, reward, config,
                        progress=False)

    a = arm("merged+disabled", tiny, sft_outputs)  # the same seed: the same new LoRA and value head
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    a.policy.eval()
    batch, lengths = step_batch(queries, 0, config, rng)
    ro = rollout(a.policy, tokenizer, batch, lengths)
    scores = reward(ro.texts).float()
    mask = ro.response_mask.float()
    with torch.no_grad():
        logits, values = policy_forward(a.policy, a.value_head, *ro.rows(slice(None)))
        logp = log_softmax(logits)
        logprobs = gather_logprobs(logp, ro.response_tokens)
        ref_logp = log_softmax(a.reference.logits(*ro.rows(slice(None))))
        ref_logprobs = gather_logprobs(ref_logp, ro.response_tokens)
        rewards = per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef=config.init_kl_coef)
        advantages, returns = gae(rewards, values * mask, mask, config.gamma, config.lam)
        advantages = whiten(advantages, mask)
    params = trainable_parameters(a.policy, a.value_head)
    optimizer = torch.optim.Adam(params, lr=config.learning_rate)
    stats = np.mean(ppo_epochs(a.policy, a.value_head, optimizer, ro, logprobs, values, advantages, returns, config,
                               rng), axis=0)

    row = metrics.iloc[0]
    assert row.reward_mean == scores.mean().item() and row.response_len == mask.sum(1).mean().item()
    losses = [row.policy_loss, row.value_loss, row.clipfrac, row.approx_kl]
    by_hand, by_train = (trainable_parameters(m.policy, m.value_head) for m in (a, by_train))
    if path == "reference":
        assert row.kl_ref_exact == kl_exact(logp, ref_logp, mask).mean().item()
        assert losses == stats.tolist()
        assert weights_hash(by_hand) == weights_hash(by_train)
    else:
        assert row.kl_ref_exact == pytest.approx(kl_exact(logp, ref_logp, mask).mean().item(), abs=1e-6)
        assert losses == pytest.approx(stats.tolist(), rel=1e-3, abs=1e-6)
        for mine, theirs in zip(by_hand, by_train):
            torch.testing.assert_close(mine, theirs, rtol=1e-3, atol=1e-6)


def test_lora_b_and_the_value_head_get_their_own_learning_rates_and_ratio_1_is_trls_one_group(tiny, sft_outputs):
    """TRL's one learning rate where both ratios are 1 (the optimizer TRL built); otherwise the B matrices
    and the value head, and only they, step at their ratio x the learning rate."""
    from helpers.ppo import param_groups, trainable_parameters

    a = arm("merged+disabled", tiny, sft_outputs)
    config = config_from_profile(tiny)
    (one,) = param_groups(a.policy, a.value_head, config)
    assert one["lr"] == config.learning_rate and len(one["params"]) == len(trainable_parameters(a.policy, a.value_head))
    rest, b, head = param_groups(a.policy, a.value_head, dataclasses.replace(config, lora_b_lr_ratio=16.0,
                                                                             value_lr_ratio=10.0))
    names = {id(p): n for n, p in a.policy.named_parameters()}
    assert (rest["lr"], b["lr"], head["lr"]) == (config.learning_rate, 16.0 * config.learning_rate,
                                                 10.0 * config.learning_rate)
    assert b["params"] and all("lora_B" in names[id(p)] for p in b["params"])
    assert rest["params"] and all("lora_A" in names[id(p)] for p in rest["params"])
    assert {id(p) for p in head["params"]} == {id(p) for p in a.value_head.parameters()}
    assert len(rest["params"]) + len(b["params"]) + len(head["params"]) == len(one["params"])
    a.policy.requires_grad_(False)
    with pytest.raises(ValueError, match="LoRA B"):
        param_groups(a.policy, a.value_head, dataclasses.replace(config, lora_b_lr_ratio=4.0))


def test_lora_plus_moves_the_policy_further_in_one_step(tiny, sft_outputs, tokenizer, queries):
    """From B = 0, a larger step for B alone moves the new LoRA further (the cold start it is for)."""
    moved = {}
    for ratio in (1.0, 16.0):
        a, _ = run_arm("merged+disabled", tiny, sft_outputs, tokenizer, queries, steps=1, lora_b_lr_ratio=ratio)
        moved[ratio] = sum(p.detach().abs().sum().item() for n, p in a.policy.named_parameters() if "lora_B" in n)
    assert moved[16.0] > 4 * moved[1.0]
