"""What bf16 changes in a PPO step's numbers: one step's inputs, computed in fp32 and in bf16.

One rollout is sampled once (fp32 policy, seed 0); then for each dtype the same merged model with the same
new LoRA (seed 0, B = 0, so the policy starts as the merged model) computes, on those identical tokens:
the log-probabilities of the response tokens, the values, the exact KL per token to the reference
(adapters disabled, after one PPO epoch has moved the LoRA), and the losses of each minibatch of that
epoch (the same order, the same advantages and returns from the fp32 pass). Printed: fp32, bf16 and
their difference, against a tolerance fixed in advance (TOLERANCE below).

    .venv/bin/python benchmarks/dtype_numbers.py [--profile smol] [--json PATH]

Needs the merged model of notebook 02 (`make tutorial`).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

import helpers  # noqa: F401
from helpers import get_profile
from helpers.profiles import profile_name
from helpers.artifacts import output_dir, require, stage_dir
from helpers.data import load_imdb, ppo_queries
from helpers.machine import signature
from helpers.models import load_model, load_tokenizer, new_lora
from helpers.ppo import (
    ValueHead,
    config_from_profile,
    gae,
    gather_logprobs,
    kl_exact,
    log_softmax,
    per_token_rewards,
    policy_forward,
    ppo_epochs,
    rollout,
    step_batch,
    trainable_parameters,
)
from helpers.ppo_math import whiten
from helpers.reference import DisabledAdapters

# decided before measuring: bf16 noise must be small against what one PPO step moves (the exact KL to the
# reference after a step of notebook 03 is ~1e-2 nats/token) and against the losses' own scale
TOLERANCE = {"mean |Δ log-prob| per token (nats)": 0.05, "KL(fp32 ‖ bf16) per token (nats)": 1e-3,
             "|Δ policy loss| (mean over minibatches)": 0.02, "|Δ value loss| (relative)": 0.02,
             "|Δ KL to the reference after one epoch| (relative)": 0.25}


def one_step(profile, merged_dir, tokenizer, dtype, ro, config, fp32_inputs=None):
    torch.manual_seed(config.seed)
    policy = new_lora(load_model(profile, merged_dir, dtype=dtype), profile, seed=config.seed)
    value_head = ValueHead(policy.config.hidden_size).to(policy.device)
    params = trainable_parameters(policy, value_head)
    if fp32_inputs is not None:  # the same starting LoRA and value head, bit for bit (peft drew A in bf16)
        with torch.no_grad():
            for p, start in zip(params, fp32_inputs["start"]):
                p.copy_(start)
    policy.eval()
    reference = DisabledAdapters(policy)
    mask, tokens = ro.response_mask.float(), ro.response_tokens
    with torch.no_grad():
        logits, values = policy_forward(policy, value_head, *ro.rows(slice(None)))
        logp = log_softmax(logits)
        logprobs = gather_logprobs(logp, tokens)
    if fp32_inputs is None:  # the fp32 pass decides the advantages both dtypes train on
        scores = torch.linspace(-1, 1, len(ro.texts))
        rewards = per_token_rewards(scores, logprobs, logprobs, mask, config.init_kl_coef)
        advantages, returns = gae(rewards, values * mask, mask, config.gamma, config.lam)
        fp32_inputs = {"advantages": whiten(advantages, mask), "returns": returns,
                       "start": [p.detach().clone() for p in params]}
    optimizer = torch.optim.Adam(params, lr=config.learning_rate)
    stats = ppo_epochs(policy, value_head, optimizer, ro, logprobs, values, fp32_inputs["advantages"],
                       fp32_inputs["returns"], config, np.random.default_rng(config.seed))
    with torch.no_grad():
        new_logp = log_softmax(policy_forward(policy, value_head, *ro.rows(slice(None)))[0])
        ref_logp = log_softmax(reference.logits(*ro.rows(slice(None))))
        kl_ref = kl_exact(new_logp, ref_logp, mask).mean().item()
    return {"logp": logp, "logprobs": logprobs, "stats": np.array(stats), "kl_ref": kl_ref}, fp32_inputs


def compare(profile_name: str) -> dict:
    profile = get_profile(profile_name)
    merged_dir = require(stage_dir(output_dir(), profile.name, "02_merge") / "model", "02_merge", profile.name)
    tokenizer = load_tokenizer(merged_dir)
    config = config_from_profile(profile, batch_size=8, mini_batch_size=4, ppo_epochs=1, steps=1)
    queries = ppo_queries(load_imdb(profile)["train"]["text"], tokenizer, n=config.batch_size, seed=0)
    torch.manual_seed(0)
    sampler = new_lora(load_model(profile, merged_dir, dtype=torch.float32), profile)
    batch, lengths = step_batch(queries, 0, config, np.random.default_rng(0))
    ro = rollout(sampler, tokenizer, batch, lengths)
    del sampler
    fp32, inputs = one_step(profile, merged_dir, tokenizer, torch.float32, ro, config)
    bf16, _ = one_step(profile, merged_dir, tokenizer, torch.bfloat16, ro, config, inputs)
    mask = ro.response_mask.float()
    n = mask.sum().item()
    measured = {
        "mean |Δ log-prob| per token (nats)": ((fp32["logprobs"] - bf16["logprobs"]).abs() * mask).sum().item() / n,
        "KL(fp32 ‖ bf16) per token (nats)": kl_exact(fp32["logp"], bf16["logp"], mask).mean().item(),
        "|Δ policy loss| (mean over minibatches)": float(np.abs(fp32["stats"][:, 0] - bf16["stats"][:, 0]).mean()),
        "|Δ value loss| (relative)": float(np.abs(fp32["stats"][:, 1] - bf16["stats"][:, 1]).mean()
                                           / np.abs(fp32["stats"][:, 1]).mean()),
        "|Δ KL to the reference after one epoch| (relative)": abs(fp32["kl_ref"] - bf16["kl_ref"]) / fp32["kl_ref"],
    }
    return {"profile": profile.name, "tokens": int(n), "fp32": {"policy_loss": fp32["stats"][:, 0].tolist(),
            "value_loss": fp32["stats"][:, 1].tolist(), "kl_ref_after_epoch": fp32["kl_ref"]},
            "bf16": {"policy_loss": bf16["stats"][:, 0].tolist(), "value_loss": bf16["stats"][:, 1].tolist(),
                     "kl_ref_after_epoch": bf16["kl_ref"]},
            "measured": measured, "tolerance": TOLERANCE,
            "within": {k: v <= TOLERANCE[k] for k, v in measured.items()}, "machine": signature()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default=profile_name())
    parser.add_argument("--json", help="also write the figures, with the machine, to this file")
    args = parser.parse_args()
    result = compare(args.profile)
    for key, value in result["measured"].items():
        print(f"{key:52s} {value:10.2e}  tolerance {TOLERANCE[key]:.0e}  {'ok' if result['within'][key] else 'OVER'}")
    print(f"KL to the reference after one epoch: fp32 {result['fp32']['kl_ref_after_epoch']:.4g}, "
          f"bf16 {result['bf16']['kl_ref_after_epoch']:.4g} nats/token")
    if args.json:
        with open(f"{args.json}.tmp", "w") as f:
            json.dump(result, f, indent=1)
        os.replace(f"{args.json}.tmp", args.json)


if __name__ == "__main__":
    main()
