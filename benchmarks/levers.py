"""Each lever of the fast path alone (helpers.fastpath.LEVERS), against the reference path, paired.

Every round runs one fresh process per configuration, in an order that rotates between rounds, all on the same
PPO steps (same seed, same prompts); a configuration's figure is the mean over rounds of median(step) /
median(step on the reference path) of the same round, the first (warm-up) step left out, with its 95%
t-interval; phases and peak resident memory beside it.

    .venv/bin/python benchmarks/levers.py [--rounds 3 --profile smol --dtype float32 --batch 8 --mini-batch 4
        --epochs 4 --steps 3] [--json PATH]

Needs the merged model of notebook 02 (`make tutorial`). Run nothing else beside it.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from ab_step import run_one  # this folder is the script's, so first on sys.path

from helpers.profiles import profile_name

CONFIGS = {  # name -> environment of the child
    "reference path": {"TUTORIAL_REFERENCE_PATH": "1"},
    "pack_forward alone": {"TUTORIAL_FAST_LEVERS": "pack_forward"},
    "pack_forward + pack_backward": {"TUTORIAL_FAST_LEVERS": "pack_forward,pack_backward"},
    "lean_loop + from_generation alone": {"TUTORIAL_FAST_LEVERS": "lean_loop,from_generation"},
    "all four": {"TUTORIAL_FAST_LEVERS": "pack_forward,pack_backward,lean_loop,from_generation"},
    "the fast path (its default levers)": {},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", default=profile_name())
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process, after one warm-up step")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--mini-batch", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    from scipy import stats

    names = list(CONFIGS)
    rounds = []
    for i in range(args.rounds):
        order = names[i % len(names):] + names[: i % len(names)]
        got = {name: run_one(args, None, **CONFIGS[name]) for name in order}
        rounds.append(got)
        print(f"round {i + 1}: " + ", ".join(f"{n} {statistics.median(got[n]['step_s'][1:]):.2f} s" for n in names),
              flush=True)
    table = {}
    for name in names:
        ratios = [statistics.median(r[name]["step_s"][1:]) / statistics.median(r["reference path"]["step_s"][1:])
                  for r in rounds]
        mean, n = statistics.mean(ratios), len(ratios)
        half = stats.t.ppf(0.975, n - 1) * statistics.stdev(ratios) / n**0.5 if n > 1 else float("nan")
        table[name] = {"step_s": statistics.median(statistics.median(r[name]["step_s"][1:]) for r in rounds),
                       "ratio_mean": mean, "ratio_ci": [mean - half, mean + half],
                       "phases_s": {k: statistics.median(r[name]["phases_s"][k] for r in rounds)
                                    for k in rounds[0][name]["phases_s"]},
                       "peak_rss_bytes": statistics.median(r[name]["peak_rss_bytes"] for r in rounds)}
        t = table[name]
        print(f"{name:36s} step {t['step_s']:.2f} s, / reference {mean:.3f} [{mean - half:.3f}, {mean + half:.3f}], "
              f"peak {t['peak_rss_bytes'] / 2**30:.2f} GiB, phases "
              + " ".join(f"{k} {v:.2f}" for k, v in t["phases_s"].items()))
    if args.json:
        from datetime import date

        from helpers.artifacts import write_json
        from helpers.machine import signature

        command = ".venv/bin/python benchmarks/levers.py " + " ".join(sys.argv[1:])
        write_json(args.json, {"command": command, "date": date.today().isoformat(), "machine": signature(),
                               "profile": args.profile, "dtype": args.dtype, "batch": args.batch,
                               "mini_batch": args.mini_batch, "ppo_epochs": args.epochs, "steps": args.steps,
                               "rounds": len(rounds), "levers": table})


if __name__ == "__main__":
    main()
