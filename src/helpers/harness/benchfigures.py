"""The Performance page's "Runs in parallel" figures, rendered from docs/benchmarks/workers.json (written by
`benchmarks/workers.py --compare`): every number, and the sentence that judges them, computed here."""

from __future__ import annotations

from pathlib import Path
from statistics import median

from ..artifacts import read_json

# 8 runs of 4 steps: long enough that Ray's start and each worker's model loading weigh as they do in notebook 04
# (4 runs of 2 steps measured 2 workers 1.06-1.08x slower on 2 cores: start-up, not throughput)
WORKERS_COMMAND = (".venv/bin/python benchmarks/workers.py --compare --pairs 2 --profile smol --runs 8 --steps 4 "
                   "--json docs/benchmarks/workers.json")


def workers_block(folder: str | Path) -> str:
    """One process with every core's threads against Ray workers that split them: wall time per layout, the
    ratio of medians and each pair's, and runs per hour and memory compared."""
    path = Path(folder) / "workers.json"
    if not path.exists():
        return (f"Not measured yet: run `{WORKERS_COMMAND}` with nothing else running (needs notebook 02's merged "
                "model), then `make publish`.")
    w = read_json(path)
    m, s = w["machine"], w["settings"]
    one, many = sorted(w["layouts"], key=lambda layout: layout["workers"])
    ratio = median(many["wall_s"]) / median(one["wall_s"])
    gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
    threads = lambda n: f"{n} thread{'s' if n > 1 else ''}"  # noqa: E731
    # all of a layout's processes' peaks added: the one process, or each worker and Ray's driver beside them
    memory_one = max(one["driver_peak_rss_bytes"])
    memory_many = many["workers"] * max(many["peak_rss_bytes"]) + max(many["driver_peak_rss_bytes"])
    change = 1 / ratio - 1  # runs per hour, many workers over one process
    pct = round(100 * abs(change))
    runs_per_hour = "as many runs per hour as" if pct == 0 else f"{pct}% {'more' if change > 0 else 'fewer'} runs per hour than"
    n = len(one["wall_s"])
    pairs = ", ".join(f"{p['ratio']:.2f}×" for p in w["pairs"])
    return "\n".join([
        f"From `{w['command']}` on {w['date']} ({m['cpu']}, {m['cores']} cores, torch {m['torch']}): {s['runs']} runs, "
        f"{s['steps']} steps each; {s['pairs']} pairs of whole processes, the order alternating.", "",
        f"| layout | wall time (median of {n}) | largest process peak RSS |", "| --- | --- | --- |",
        f"| 1 process × {threads(one['threads'])} (`--workers 1`) | {median(one['wall_s']):.1f} s | "
        f"{gib(max(one['peak_rss_bytes']))} |",
        f"| {many['workers']} Ray workers × {threads(many['threads'])} (`--workers {many['workers']}`) | "
        f"{median(many['wall_s']):.1f} s ({ratio:.2f}×, pairs {pairs}) | "
        f"{gib(max(many['peak_rss_bytes']))} per worker, driver {gib(max(many['driver_peak_rss_bytes']))} |", "",
        f"{many['workers']} workers with {threads(many['threads'])} each do {runs_per_hour} one process with "
        f"{threads(one['threads'])} (ratio of the median wall times, Ray's start and each worker's model loading "
        f"included); their processes' peaks added come to {gib(memory_many)} against {gib(memory_one)}, "
        f"{memory_many / memory_one:.1f}× the memory (each worker holds its own models; an upper bound, since the "
        "peaks need not coincide). `WORKERS=auto` picks 2 workers on such a machine: "
        + ("the faster layout in this measurement." if ratio < 1 else "not the faster layout in this measurement.")])
