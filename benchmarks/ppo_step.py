"""How close is one PPO step to its floor?

The floor is the work a step cannot avoid, each part timed alone on the same batch with the same
response-only computation the loop uses (LM head on the response positions): generation + the policy's
forward over the rollout (the old log-probs and values PPO needs) + one reference forward + ppo_epochs x
(forward/backward over the minibatches). The ratio step / floor shows what the loop adds on top (scoring,
GAE, bookkeeping, and any slack in those parts). Target: <= 1.2. `ratio_without_rollout_forward` is the
ratio against the floor as it was defined before (no rollout forward), for comparison. Rollouts per
second (batch / median step time) is the throughput a learner waits on.

    .venv/bin/python benchmarks/ppo_step.py --profile tiny --profile smol [--steps 4]

Needs the merged model of notebook 02 for each profile (`make tutorial PROFILE=...`). Run nothing else
beside it: two torch processes on two cores slow each other down several times over.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import helpers  # noqa: F401
from helpers import get_profile
from helpers.artifacts import output_dir, require, stage_dir
from helpers.data import load_imdb, ppo_queries
from helpers.models import load_model, load_tokenizer, new_lora
from helpers.ppo import (ValueHead, config_from_profile, gather_logprobs, log_softmax, policy_forward, rollout,
                         trainable_parameters, train)
from helpers.reference import DisabledAdapters
from helpers.rewards import load_reward


def timed(fn, repeats: int) -> float:
    """Median wall time of `fn()` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(profile_name: str, steps: int, repeats: int, **overrides) -> dict:
    profile = get_profile(profile_name)
    merged_dir = require(stage_dir(output_dir(), profile.name, "02_merge") / "model", "02_merge", profile.name)
    model = load_model(profile, merged_dir, quantize="8bit" if profile.load_in_8bit else None)
    tokenizer = load_tokenizer(merged_dir)
    policy = new_lora(model, profile)
    value_head = ValueHead(model.config.hidden_size).to(policy.device)
    reference = DisabledAdapters(policy)
    config = config_from_profile(profile, steps=steps + 1, **overrides)
    queries = ppo_queries(load_imdb(profile)["train"]["text"], tokenizer, n=config.steps * config.batch_size, seed=0)
    reward = load_reward(profile)

    # the whole loop: median step time, the first (warm-up) step left out
    metrics = train(policy, value_head, reference, tokenizer, queries, reward, config, progress=False)
    step = float(metrics.step_time_s.iloc[1:].median())
    phases = metrics[["gen_s", "score_s", "ref_s", "update_s"]].iloc[1:].median().to_dict()

    # the floor, each part alone on one batch like the loop's
    batch = queries[: config.batch_size]
    lengths = np.random.default_rng(0).integers(config.response_len[0], config.response_len[1] + 1,
                                                size=config.batch_size).tolist()
    torch.manual_seed(0)
    ro = rollout(policy, tokenizer, batch, lengths)
    generation = timed(lambda: rollout(policy, tokenizer, batch, lengths), repeats)
    ref_forward = timed(lambda: reference.logits(*ro.rows(slice(None))), repeats)
    with torch.no_grad():
        rollout_forward = timed(lambda: log_softmax(policy_forward(policy, value_head, *ro.rows(slice(None)))[0]), repeats)
    params = trainable_parameters(policy, value_head)

    def one_epoch():
        for i in range(0, config.batch_size, config.mini_batch_size):
            mb = slice(i, i + config.mini_batch_size)
            logits, values = policy_forward(policy, value_head, *ro.rows(mb))
            logprobs = gather_logprobs(log_softmax(logits), ro.response_tokens[mb])
            (logprobs.sum() + values.sum()).backward()
            for p in params:
                p.grad = None

    fwd_bwd = config.ppo_epochs * timed(one_epoch, repeats)
    floor = generation + rollout_forward + ref_forward + fwd_bwd
    return {"profile": profile.name, "batch": config.batch_size, "mini_batch": config.mini_batch_size,
            "ppo_epochs": config.ppo_epochs, "step_s": step, "rollouts_per_s": config.batch_size / step, **phases,
            "floor_generation_s": generation, "floor_rollout_forward_s": rollout_forward,
            "floor_ref_forward_s": ref_forward, "floor_epochs_fwd_bwd_s": fwd_bwd, "floor_s": floor,
            "ratio": step / floor, "ratio_without_rollout_forward": step / (floor - rollout_forward)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", action="append", help="profile(s) to measure (default: tiny and smol)")
    parser.add_argument("--steps", type=int, default=4, help="PPO steps timed after one warm-up step")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each floor measurement")
    parser.add_argument("--batch", type=int, help="rollouts per step (default: the profile's)")
    parser.add_argument("--mini-batch", type=int, help="minibatch size (default: the profile's)")
    parser.add_argument("--epochs", type=int, help="PPO epochs (default: the profile's)")
    args = parser.parse_args()
    overrides = dict(batch_size=args.batch, mini_batch_size=args.mini_batch, ppo_epochs=args.epochs)
    import pandas as pd

    rows = [bench(name, args.steps, args.repeats, **overrides) for name in args.profile or ["tiny", "smol"]]
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if platform.system() == "Linux" else platform.processor()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU ' + cpu}")
    print(pd.DataFrame(rows).set_index("profile").T.round(3).to_string())


if __name__ == "__main__":
    main()
