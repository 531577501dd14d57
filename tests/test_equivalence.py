"""The fast path (helpers.fastpath: packed frozen weights, the lean sampling loop, old log-probs and values from
generation) against the reference path it replaced (plain F.linear, transformers' `generate`, a second forward).

Tolerances and margins were fixed in this file before the fast path was measured against them, with one
change after measuring, said here:
- on fixed inputs (smol, real widths): per-token log-probs within 1e-4 nats (measured: 2.7e-5; the reference
  path itself moves 1.9e-5 between AVX2 and AVX-512 kernels on the same inputs);
- the losses and the exact KL within 1e-4 relative (for the policy loss, relative to its scale mean |A| *
  ratio: with whitened advantages the loss itself is ~0). Fixed first at the issue's 1e-5; measured, the fast
  path meets it for the batch means (KL 7.7e-6) but not per sequence (4.2e-5), and the reference path itself
  differs from its own AVX2 run by 9.1e-6 (batch mean) and 1.1e-4 (one sequence): a 1e-5 test would fail on
  CPUs where the code is right. Broken on purpose, the checks move far more: the packed output scaled by
  1 + 1e-3 puts log-probs 3.2e-2 nats away, generation's logits kept one position late 20 nats;
- over whole runs (tiny, 8 paired seeds of 20 steps): the 90% interval of the paired difference (fast minus
  reference) of the final held-out reward within +-0.1 reward units (~7% of the reward's spread across
  responses on smol), and of the final KL to the SFT model within +-20% of the reference path's mean. A 90%
  interval inside the margin is the two one-sided tests (TOST) at 5%.
"""

import math

import numpy as np
import pytest
import torch
from conftest import random_sft, smol_with_lora
from scipy import stats

from helpers.data import load_imdb, ppo_queries
from helpers.evaluation import Evaluator
from helpers.fastpath import fast_path_on, pack_frozen_linears, reference_path
from helpers.harness.arms import build_arm
from helpers.harness.trainers import ppo_arm
from helpers.models import load_model, response_forward
from helpers.ppo import (
    ValueHead,
    config_from_profile,
    gather_logprobs,
    kl_exact,
    log_softmax,
    policy_loss,
    rollout,
    train,
)
from helpers.ppo_math import value_loss
from helpers.reference import DisabledAdapters
from helpers.rewards import load_reward
from helpers.sampling import eos_token_ids, hf_generate, lean_generate

LOGPROB_TOL = 1e-4  # nats
LOSS_RTOL = 1e-4
REWARD_MARGIN = 0.1  # reward units
KL_MARGIN = 0.2  # of the reference path's mean
SEEDS, STEPS = 8, 20


def _queries(profile, tokenizer, n, split="heldout"):
    return ppo_queries(load_imdb(profile)["heldout" if split == "heldout" else "train"]["text"], tokenizer, n=n, seed=0)


def test_the_lean_loop_draws_what_generate_draws(tiny, tokenizer):
    """Same weights (plain F.linear), same seed: the lean loop samples the same tokens from the same logits as
    transformers' `generate`, bit for bit, and ignores the checkpoint's own sampling settings as `generate`
    with a blank config does."""
    model = load_model(tiny)
    model.generation_config.update(temperature=0.3, repetition_penalty=3.0, top_k=3, do_sample=True)
    queries = _queries(tiny, tokenizer, 6)
    Q = max(map(len, queries))
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (Q - len(q)) + q for q in queries])
    mask = (torch.arange(Q)[None] >= torch.tensor([Q - len(q) for q in queries])[:, None]).long()
    eos = eos_token_ids(model, tokenizer)
    torch.manual_seed(3)
    lean = lean_generate(model, ids, mask, 12, eos, pad, keep=True)
    torch.manual_seed(3)
    hf = hf_generate(model, ids, mask, 12, eos, pad, keep_logits=True)
    assert torch.equal(lean.tokens, hf.tokens) and torch.equal(lean.logits, hf.logits)
    # the hidden states it keeps are the ones a forward pass over the sequence computes (the value head's input)
    with torch.no_grad():
        _, hidden = response_forward(model, torch.cat([ids, lean.tokens], 1),
                                     torch.cat([mask, torch.ones_like(lean.tokens)], 1), Q)
    torch.testing.assert_close(lean.hidden, hidden, atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def smol_policy():
    """SmolLM2 at its real widths with a LoRA whose B != 0, a value head and its reference (adapters off)."""
    smol, policy = smol_with_lora()
    torch.manual_seed(1)
    return smol, policy, ValueHead(policy.config.hidden_size)


@pytest.mark.slow  # seconds of SmolLM2 or a subprocess: in `make test`, not `make test-fast`
def test_fast_path_on_fixed_inputs_is_within_tolerance_of_the_reference_path(smol_policy, tokenizer):
    smol, policy, value_head = smol_policy
    reference = DisabledAdapters(policy)
    queries = _queries(smol, tokenizer, 8)
    lengths = [16, 12, 16, 4, 16, 9, 16, 16]
    torch.manual_seed(7)
    with reference_path():
        ro = rollout(policy, tokenizer, queries, lengths)
    mask, tokens = ro.response_mask.float(), ro.response_tokens
    g = torch.Generator().manual_seed(0)
    advantages = torch.randn(mask.shape, generator=g) * mask
    returns = torch.randn(mask.shape, generator=g) * mask

    def quantities(on_reference_path: bool) -> dict:
        with reference_path(on_reference_path):
            if not on_reference_path:
                pack_frozen_linears(policy)
            logits, hidden = response_forward(policy, *ro.rows(slice(None)))
            logp = log_softmax(logits)
            new = gather_logprobs(logp, tokens)
            values = value_head(hidden)
            with torch.no_grad():
                ref_logp = log_softmax(reference.logits(*ro.rows(slice(None))))
            return {"logprobs": new.detach(), "logp": logp.detach(), "values": values.detach(),
                    "kl": kl_exact(logp.detach(), ref_logp, mask), "hidden": hidden}

    ref, fast = quantities(True), quantities(False)
    m = mask.bool()
    gap = (fast["logprobs"] - ref["logprobs"])[m].abs().max().item()
    assert gap <= LOGPROB_TOL, f"per-token log-probs {gap:.2e} nats from the reference path"
    old = ref["logprobs"] - 0.05 * torch.randn(mask.shape, generator=g)  # ratios away from 1, some clipped
    for name, a, b, scale in [
        ("policy loss", policy_loss(fast["logprobs"], old, advantages, mask, 0.2)[0],
         policy_loss(ref["logprobs"], old, advantages, mask, 0.2)[0],
         ((advantages * (ref["logprobs"] - old).exp()).abs() * mask).sum() / mask.sum()),
        ("value loss", value_loss(fast["values"], ref["values"] * 0.9, returns, mask, 0.2),
         value_loss(ref["values"], ref["values"] * 0.9, returns, mask, 0.2), None),
        ("KL to the reference, per sequence", fast["kl"], ref["kl"], None),
        ("KL to the reference, batch mean", fast["kl"].mean(), ref["kl"].mean(), None),
    ]:
        scale = b.abs() if scale is None else scale
        rel = ((a - b).abs() / scale).max().item()
        assert rel <= LOSS_RTOL, f"{name}: {rel:.2e} relative to the reference path (> {LOSS_RTOL})"
    # generation's own forwards (the fast path's old log-probs and values) against a forward over its tokens
    torch.manual_seed(7)
    fast_ro = rollout(policy, tokenizer, queries, lengths, keep_logits=True)
    with reference_path(), torch.no_grad():
        logits, hidden = response_forward(policy, *fast_ro.rows(slice(None)))
    fm = fast_ro.response_mask.bool()
    kept = gather_logprobs(log_softmax(fast_ro.logits), fast_ro.response_tokens)
    again = gather_logprobs(log_softmax(logits), fast_ro.response_tokens)
    gap = (kept - again)[fm].abs().max().item()
    assert gap <= LOGPROB_TOL, f"generation's log-probs {gap:.2e} nats from a reference forward"
    assert (fast_ro.hidden is not None) == fast_path_on(), "the fast path keeps generation's hidden states"
    if fast_ro.hidden is None:
        return
    with torch.no_grad():
        rel = ((value_head(fast_ro.hidden) - value_head(hidden))[fm].abs().max() / value_head(hidden)[fm].abs().mean())
    assert rel.item() <= 1e-4, f"generation's values {rel.item():.2e} relative from a reference forward"


def tost_inside(diffs, margin: float) -> tuple[float, float, bool]:
    """(low, high) of the 90% t-interval of the mean paired difference, and whether it lies inside +-margin."""
    d = np.asarray(diffs, dtype=float)
    half = stats.t.ppf(0.95, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)) if d.std(ddof=1) > 0 else 0.0
    low, high = d.mean() - half, d.mean() + half
    return low, high, -margin < low and high < margin


@pytest.fixture(scope="module")
def tiny_sft(tiny, tokenizer, tmp_path_factory):
    return random_sft(tiny, tokenizer, tmp_path_factory.mktemp("equivalence"))


def final_evaluation(tiny, tokenizer, sft, data, seed: int, on_reference_path: bool) -> dict:
    """One 20-step run of the recipe; its final held-out evaluation (16 prompts x 2 samples)."""
    train_queries, heldout, reward = data
    with reference_path(on_reference_path):
        arm = ppo_arm(build_arm("merged+disabled", tiny, *sft, seed=seed), seed)
        evaluator = Evaluator(tokenizer, heldout, reward, tiny.ppo.response_len, every=STEPS, samples_per_prompt=2,
                              seed=100 + seed)
        train(arm.policy, arm.value_head, arm.reference, tokenizer, train_queries, reward,
              config_from_profile(tiny, steps=STEPS, seed=seed), evaluator=evaluator, progress=False)
        return evaluator.table().iloc[-1].to_dict()


@pytest.mark.slow
def test_whole_runs_on_the_fast_path_are_equivalent_to_the_reference_path(tiny, tokenizer, tiny_sft):
    data = _queries(tiny, tokenizer, 256, "train"), _queries(tiny, tokenizer, 16), load_reward(tiny)
    runs = {path: [final_evaluation(tiny, tokenizer, tiny_sft, data, seed, path == "reference") for seed in range(SEEDS)]
            for path in ("reference", "fast")}
    d_reward = [f["reward_mean"] - r["reward_mean"] for f, r in zip(runs["fast"], runs["reference"])]
    d_kl = [f["kl_ref_exact"] - r["kl_ref_exact"] for f, r in zip(runs["fast"], runs["reference"])]
    kl_margin = KL_MARGIN * np.mean([r["kl_ref_exact"] for r in runs["reference"]])
    for name, diffs, margin in [("held-out reward", d_reward, REWARD_MARGIN), ("KL to the SFT model", d_kl, kl_margin)]:
        low, high, inside = tost_inside(diffs, margin)
        print(f"{name}: fast - reference, 90% interval [{low:+.4f}, {high:+.4f}], margin +-{margin:.4f}")
        assert inside, f"{name}: 90% interval [{low:+.4f}, {high:+.4f}] not inside +-{margin:.4f}"


def test_a_packed_layer_lays_its_weight_out_again_when_the_weight_changes():
    """A packed copy is never used stale: a weight changed in place, or replaced, is packed again."""
    layer = torch.nn.Linear(8, 4).requires_grad_(False)
    assert pack_frozen_linears(torch.nn.Sequential(layer)) == 1
    x = torch.randn(3, 8)
    with reference_path(False):
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        with torch.no_grad():
            layer.weight.mul_(2)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
        layer.weight = torch.nn.Parameter(torch.randn(4, 8), requires_grad=False)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
