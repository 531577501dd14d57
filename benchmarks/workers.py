"""Runs per hour: one process on every core against Ray workers that split the cores.

Runs the first `--runs` runs of notebook 04's plan (the reward-on arms, `--steps` steps each, held-out
evaluation at the start and the end) into a temporary folder, with `--workers` workers (1: in-process with
all the cores' threads, as `WORKERS=1` does; W > 1: W Ray workers, each with cores / W
threads). Prints the wall time, runs per hour, and the largest peak resident memory of any one process that
ran a run (the driver, or a worker).

    .venv/bin/python benchmarks/workers.py --profile smol --workers 1
    .venv/bin/python benchmarks/workers.py --profile smol --workers 2

`--compare` times the two as whole processes, in turn, `--pairs` times each (the order alternating), and
writes the figures the Performance page renders (`make publish`); run nothing else beside it:

    .venv/bin/python benchmarks/workers.py --compare --pairs 2 --profile smol --runs 8 --steps 4 \
        --json docs/benchmarks/workers.json

Ray's start and each worker's model loading are part of what a user waits for, hence whole processes. Needs
notebook 02's merged model in the output folder (`--out`, else $OUTPUT_DIR, else outputs/;
`make tutorial NOTEBOOKS="01_sft_lora 02_merge_adapter"`).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone

import torch

import helpers  # noqa: F401
from helpers.artifacts import output_dir, stage_dir, write_json
from helpers.profiles import configure, profile_name
from helpers.data import load_imdb, perplexity_reviews, ppo_queries
from helpers.harness.compare import plan_from_profile
from helpers.harness.run import inputs_from_outputs
from helpers.harness.schedule import run_all
from helpers.harness.workers import cores
from helpers.machine import cpu_model
from helpers.models import load_tokenizer
from helpers.rewards import load_reward

FIGURES = ("PEAK_RSS_BYTES", "DRIVER_PEAK_RSS_BYTES", "THREADS")  # the child's machine-readable lines


def single(args) -> None:
    profile = configure(args.profile, comparison_eval_every=args.steps, comparison_seeds=args.runs,
                        comparison_steps=args.steps, comparison_penalty_steps=0)
    plan = plan_from_profile(profile)
    runs = plan.runs()[: args.runs]
    data = load_imdb(profile)
    tokenizer = load_tokenizer(stage_dir(args.out, profile.name, "02_merge") / "model")
    queries = ppo_queries(data["train"]["text"], tokenizer, n=args.steps * plan.main.batch_size, seed=0)
    eval_queries = ppo_queries(data["heldout"]["text"], tokenizer, n=profile.comparison.eval_prompts, seed=1)
    inputs = inputs_from_outputs(profile, args.out, tokenizer, queries, eval_queries, load_reward(profile),
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
    # for --compare: with W > 1 the driver holds the data and the inputs beside the workers, so its own peak too
    driver = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    print(f"PEAK_RSS_BYTES={int(r.process_peak_rss_bytes.max())}\nDRIVER_PEAK_RSS_BYTES={driver}\n"
          f"THREADS={int(r.threads.iloc[0])}")


def timed(args, workers: int) -> dict:
    """One whole single-run process with `workers`: its wall time, as the user waits for it, and its figures."""
    command = [sys.executable, __file__, "--profile", args.profile, "--workers", str(workers), "--runs",
               str(args.runs), "--steps", str(args.steps), "--out", str(output_dir(args.out))]
    start = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    print(done.stdout, end="", flush=True)
    if done.returncode:
        sys.exit(done.returncode)
    figures = dict(line.split("=", 1) for line in done.stdout.splitlines() if line.startswith(tuple(f + "=" for f in FIGURES)))
    return {"wall_s": wall, **{key.lower(): int(value) for key, value in figures.items()}}


def compare(args) -> None:
    layouts = {w: {"workers": w, "wall_s": [], "peak_rss_bytes": [], "driver_peak_rss_bytes": []} for w in (1, 2)}
    pairs = []
    for i in range(args.pairs):
        order = (1, 2) if i % 2 == 0 else (2, 1)  # alternate which goes first: neither always finds a warm cache
        got = {w: timed(args, w) for w in order}
        for w, figures in got.items():
            layouts[w]["threads"] = figures.pop("threads")
            for key, value in figures.items():
                layouts[w][key].append(value)
        pairs.append({"first_workers": order[0], "ratio": got[2]["wall_s"] / got[1]["wall_s"]})
        print(f"pair {i + 1}: 1 process {got[1]['wall_s']:.1f} s, 2 workers {got[2]['wall_s']:.1f} s, "
              f"ratio {pairs[-1]['ratio']:.3f}", flush=True)
    if args.json:
        write_json(args.json, {  # write_json: a temporary file beside it, then os.replace
            "command": ".venv/bin/python benchmarks/workers.py " + " ".join(sys.argv[1:]),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_model(), "cores": cores(), "cpu_count": os.cpu_count(), "torch": torch.__version__},
            "settings": {"profile": args.profile, "runs": args.runs, "steps": args.steps, "pairs": args.pairs},
            "layouts": list(layouts.values()), "pairs": pairs})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=profile_name())
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", help="the output folder with notebook 02's merged model (default: $OUTPUT_DIR, else outputs)")
    parser.add_argument("--compare", action="store_true", help="time --workers 1 and 2 as whole processes, in turn")
    parser.add_argument("--pairs", type=int, default=2, help="with --compare: how many of each, alternating")
    parser.add_argument("--json", help="with --compare: write the figures to this file")
    args = parser.parse_args()
    compare(args) if args.compare else single(args)


if __name__ == "__main__":
    main()
