"""Runs per hour: one process on every core against Ray workers that split the cores.

Runs the first `--runs` runs of notebook 04's plan (the reward-on arms, `--steps` steps each, held-out
evaluation at the start and the end) into a temporary folder, with `--workers` workers (1: in-process with
all the cores' threads, as `make tutorial` does by default; W > 1: W Ray workers, each with cores / W
threads). Prints the wall time, runs per hour, and the largest peak resident memory of any one process that
ran a run (the driver, or a worker).

    .venv/bin/python benchmarks/workers.py --profile smol --workers 1
    .venv/bin/python benchmarks/workers.py --profile smol --workers 2

Time the two as whole processes, in turn, with nothing else running (e.g. `/usr/bin/time -v`, several
times each): Ray's start and each worker's model loading are part of what a user waits for. Needs notebook
02's merged model (`make tutorial NOTEBOOKS="01_sft_lora 02_merge_adapter"`).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

import helpers  # noqa: F401
from helpers.profiles import configure, profile_name
from helpers.data import load_imdb, perplexity_reviews, ppo_queries
from helpers.harness.compare import plan_from_profile
from helpers.harness.run import inputs_from_outputs
from helpers.harness.schedule import run_all
from helpers.harness.workers import cores
from helpers.models import load_tokenizer
from helpers.rewards import load_reward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=profile_name())
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    args = parser.parse_args()
    profile = configure(args.profile, comparison_eval_every=args.steps, comparison_seeds=args.runs,
                        comparison_steps=args.steps, comparison_penalty_steps=0)
    plan = plan_from_profile(profile)
    runs = plan.runs()[: args.runs]
    data = load_imdb(profile)
    from helpers.artifacts import output_dir, stage_dir

    tokenizer = load_tokenizer(stage_dir(output_dir(), profile.name, "02_merge") / "model")
    queries = ppo_queries(data["train"]["text"], tokenizer, n=args.steps * plan.main.batch_size, seed=0)
    eval_queries = ppo_queries(data["heldout"]["text"], tokenizer, n=profile.comparison.eval_prompts, seed=1)
    inputs = inputs_from_outputs(profile, None, tokenizer, queries, eval_queries, load_reward(profile),
                                 perplexity_reviews(profile, data))
    inputs.fingerprint()  # hashed once, before the clock
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        results = run_all(runs, inputs, folder, workers=args.workers)
    wall = time.perf_counter() - start
    r = results.runs
    print(f"{args.profile}: {len(r)} runs ({', '.join(sorted(set(r.arm)))}; {args.steps} steps) on {cores()} cores, "
          f"{args.workers} worker(s) x {int(r.threads.iloc[0])} thread(s): {wall:.0f} s, "
          f"{3600 * len(r) / wall:.1f} runs/hour; per run {r.total_time_s.median():.0f} s (median); "
          f"largest process peak RSS {r.process_peak_rss_bytes.max() / 2**30:.2f} GiB; torch {torch.__version__}")


if __name__ == "__main__":
    main()
