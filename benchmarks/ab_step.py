"""Paired A/B of the PPO step's time: this checkout's code against another's, in alternating fresh processes.

On a shared machine one run's step time moves by more than a code change does, so a ratio of two single runs
is an anecdote. Here each pair runs the same PPO steps (same seed, same prompts: the same work, bit for bit,
when the numbers are pinned) once with each code, A then B or B then A in turn; the figure is the mean over
pairs of median(step A) / median(step B), the first (warm-up) step left out, with its 95% t-interval.

    .venv/bin/python benchmarks/ab_step.py --before <a checkout of the other code>/src --pairs 6 \
        [--profile smol --batch 8 --mini-batch 4 --epochs 4 --steps 4 --dtype float32] [--json PATH]

Needs the merged model of notebook 02 (`make tutorial`). Run nothing else beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from helpers.profiles import profile_name  # the one precedence: --profile, else $TUTORIAL_PROFILE, else smol

ROOT = Path(__file__).resolve().parents[1]


def child(args) -> None:
    """One process: set up as notebook 03 does (benchmarks/ppo_step.py's `setup`), run the steps, print their
    times as JSON."""
    from ppo_step import setup  # this folder is the script's, so first on sys.path

    from helpers.ppo import train

    run = setup(args.profile, args.dtype, args.steps, batch_size=args.batch, mini_batch_size=args.mini_batch,
                ppo_epochs=args.epochs)
    metrics = train(run.policy, run.value_head, run.reference, run.tokenizer, run.queries, run.reward, run.config,
                    progress=False)
    phases = [c for c in ("gen_s", "fwd_s", "ref_s", "update_s") if c in metrics]
    print(json.dumps({"step_s": metrics.step_time_s.tolist(), "kl_ref": metrics.kl_ref.tolist(),
                      "phases_s": metrics[phases].iloc[1:].median().to_dict(),
                      "peak_rss_bytes": int(metrics.peak_rss_bytes.max())}))


def run_one(args, pythonpath: str | None, **env_vars: str) -> dict:
    """One fresh child process on this checkout's code, or on `pythonpath`'s; `env_vars` added to its environment."""
    env = dict(os.environ, OUTPUT_DIR=str(Path(os.environ.get("OUTPUT_DIR", "outputs")).resolve()), **env_vars)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    command = [sys.executable, __file__, "--child", "--profile", args.profile, "--dtype", args.dtype,
               "--steps", str(args.steps), "--batch", str(args.batch), "--mini-batch", str(args.mini_batch),
               "--epochs", str(args.epochs)]
    return run_child(command, env)


def run_child(command: list[str], env: dict) -> dict:
    """Run a benchmark's child process from the project root; the JSON on the last line of what it printed
    (exits with the child's status if it failed)."""
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    if done.returncode:
        sys.exit(done.returncode)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", help="PYTHONPATH of the code B (a checkout's src/); A is this checkout")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--profile", default=profile_name())
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=4, help="timed steps per process, after one warm-up step")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mini-batch", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    if not args.before:
        parser.error("--before is required: the src/ folder of the code to compare against")
    from scipy import stats

    ratios, pairs = [], []
    for i in range(args.pairs):
        order = ("A", "B") if i % 2 == 0 else ("B", "A")  # alternate which goes first
        got = {code: run_one(args, None if code == "A" else args.before) for code in order}
        if got["A"]["kl_ref"] != got["B"]["kl_ref"]:
            print("note: A and B computed different numbers, so their steps are not the same work")
        a, b = (statistics.median(got[c]["step_s"][1:]) for c in ("A", "B"))
        ratios.append(a / b)
        pairs.append({"first": order[0], "a_step_s": a, "b_step_s": b})
        print(f"pair {i + 1}: A {a:.2f} s, B {b:.2f} s, A/B {a / b:.3f}", flush=True)
    mean = statistics.mean(ratios)
    n = len(ratios)
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(ratios) / n**0.5 if n > 1 else float("nan")
    print(f"A/B step time: {mean:.3f} [{mean - half:.3f}, {mean + half:.3f}] (95% t-interval, {len(ratios)} pairs)")
    if args.json:
        from datetime import date

        from helpers.artifacts import write_json
        from helpers.machine import signature

        command = ".venv/bin/python benchmarks/ab_step.py " + " ".join(sys.argv[1:])
        write_json(args.json, {"command": command, "date": date.today().isoformat(), "machine": signature(),
                               "profile": args.profile, "dtype": args.dtype, "batch": args.batch,
                               "mini_batch": args.mini_batch, "ppo_epochs": args.epochs, "steps": args.steps,
                               "pairs": pairs, "ratio_mean": mean, "ratio_ci": [mean - half, mean + half]})


if __name__ == "__main__":
    main()
