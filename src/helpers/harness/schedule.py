"""Running a plan: `run_all` executes every run not yet done with its fingerprint, in this process or on Ray
workers (helpers.harness.workers), and lands each in `<folder>/runs/<study>/<arm>[/beta<β>]/seed<k>/` in one
atomic step, with its tables (metrics.csv: one row per step; evaluation.csv: one row per held-out
evaluation; samples.csv: every held-out response) and summary.json (memory, time, the hash of the trained
weights, the commit and machine it ran on). The combined tables beside `runs/` are rewritten after each run.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from IPython import get_ipython
from IPython.display import display

from ..artifacts import atomic_dir, locked, write_csv, write_json
from .arms import yardsticks
from .execute import execute
from .results import TABLES, Results, _combine, _read_run
from .run import Inputs, Run, checksums, run_state
from .workers import resolve_workers, run_on_ray


class Progress:
    """'[k/n] label: ...' lines: printed by a script, one line updated in place in a notebook (a run log of
    one line, not one per run), mirrored to the terminal under `make tutorial`."""

    def __init__(self, total: int):
        self.total, self.done, self.start, self.counts = total, 0, time.perf_counter(), {"ran": 0, "skipped": 0}
        self.terminal = sys.__stderr__ if os.environ.get("TUTORIAL_TERMINAL_PROGRESS") == "1" else None
        self.line = _notebook_line()

    def say(self, text: str) -> None:
        if self.line is not None:
            self.line.update({"text/plain": text}, raw=True)
        else:
            print(text, flush=True)
        if self.terminal is not None:
            print(f"   {text}", file=self.terminal, flush=True)

    def ran(self, run: Run, why: str, seconds: float) -> None:
        self.done += 1
        self.counts["ran"] += 1
        elapsed = (time.perf_counter() - self.start) / 60
        self.say(f"[{self.done}/{self.total}] {run.label}: ran ({why}) in {seconds:.0f} s; {elapsed:.1f} min elapsed")

    def pending(self, run: Run, why: str) -> None:
        self.done += 1
        self.say(f"[{self.done}/{self.total}] {run.label}: {why}; left for a later run")

    def skipped(self, run: Run) -> None:
        self.done += 1
        self.counts["skipped"] += 1
        self.say(f"[{self.done}/{self.total}] {run.label}: results exist with the same settings, skipped")

    def finish(self) -> None:
        if self.line is not None:  # the notebook's one line ends as a summary of the whole log
            self.say(f"{self.total} runs: {self.counts['ran']} ran, {self.counts['skipped']} skipped (settings "
                     f"unchanged), {self.total - sum(self.counts.values())} left; "
                     f"{(time.perf_counter() - self.start) / 60:.1f} min")


def _notebook_line():
    """A display handle to update in place when running in a Jupyter kernel, else None (print lines)."""
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return None
    return display({"text/plain": "starting the runs..."}, raw=True, display_id=True)


def run_all(runs: list[Run], inputs: Inputs, folder: str | Path, force: bool = False, progress: bool = False,
            combined: tuple[str, ...] = TABLES, run_missing: bool = True, workers: int | str | None = None,
            keep_changed: bool = False) -> Results:
    """Execute every run not yet done with its fingerprint; each lands in `folder/runs/...` in one atomic
    step, and the combined tables named in `combined` are rewritten after each. `run_missing=False` runs
    nothing: the results are the runs that have landed with their fingerprint. `workers` > 1 runs them on Ray
    workers, on $RAY_ADDRESS's cluster if set (helpers.harness.workers.resolve_workers: None is $TUTORIAL_WORKERS,
    else "auto", 2 on a CPU machine with Ray, else 1); the driver writes every file either way. `keep_changed=True` (a committed study): runs made with other
    settings are refused instead of replaced, unless `force`. With nothing landed, `run_missing=False` writes
    no table (a report never replaces results with empty tables)."""
    folder = Path(folder)
    with locked(folder, "run_all"):  # one driver per folder: a second one would race this one's renames
        return _run_all(runs, inputs, folder, force, progress, combined, run_missing, workers, keep_changed)


def _run_all(runs, inputs, folder, force, progress, combined, run_missing, workers, keep_changed) -> Results:
    labels = [r.label for r in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"Two runs of the plan share a folder: {sorted({l for l in labels if labels.count(l) > 1})}")
    workers = resolve_workers(workers)
    prints = [{**inputs.fingerprint(), **run.fingerprint()} for run in runs]
    log, todo, landed = Progress(len(runs)), {}, {}  # landed: each run's tables, read from its folder once
    for run, fingerprint in zip(runs, prints):
        why = "force=True" if force else run_state(folder / "runs" / run.path, fingerprint)
        if why is None:
            log.skipped(run)
            landed[run.label] = _read_run(run, folder / "runs" / run.path)
        elif not run_missing:
            log.pending(run, why)
        else:
            todo[run.label] = (run, fingerprint, why)
    replaced = [r for r in todo if (folder / "runs" / todo[r][0].path / "fingerprint.json").exists()]
    if force and replaced:
        print(f"force: {len(replaced)} of {len(runs)} runs in {folder} will be replaced", flush=True)
    changed = [r for r, _, why in todo.values() if why.startswith("settings changed")]
    if keep_changed and changed and not force:
        raise ValueError(f"{len(changed)} of {len(runs)} runs in {folder} were made with other settings (first: "
                         f"{changed[0].label}: {todo[changed[0].label][2]}). Nothing was replaced: a new setting is a "
                         f"new study version (Profile.study.version); --force replaces these {len(changed)} runs.")

    def land(run: Run, result: dict) -> None:
        _, fingerprint, why = todo[run.label]
        with atomic_dir(folder / "runs" / run.path) as tmp:  # the run counts as done only once every file landed
            for key in ("metrics", "evaluation", "samples"):
                write_csv(tmp / f"{key}.csv", result[key])
            write_json(tmp / "summary.json", result["summary"])
            write_json(tmp / "fingerprint.json", {**fingerprint, **checksums(tmp)})
        log.ran(run, why, result["summary"]["total_time_s"])
        landed[run.label] = _read_run(run, folder / "runs" / run.path)
        _write_combined(folder, runs, landed, combined)

    failed = []
    if todo and workers > 1:  # $RAY_ADDRESS is used only then: WORKERS = 1 runs here
        failed = run_on_ray([run for run, _, _ in todo.values()], inputs, workers, land)
    elif todo:
        sticks = yardsticks(inputs.profile, inputs.sources.merged_dir, inputs.sources.quantize)
        for run, _, _ in todo.values():
            land(run, execute(run, inputs, sticks, progress))
    results = _write_combined(folder, runs, landed, combined if landed or run_missing else ())
    log.finish()
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(runs)} runs did not land (the others did; running again runs "
                           f"only these): " + "; ".join(f"{run.label}: {why}" for run, why in failed))
    return results


def _write_combined(folder: Path, runs: list[Run], landed: dict, combined: tuple[str, ...]) -> Results:
    """The combined tables of every run that has landed with its fingerprint, in plan order."""
    tables = {k: [landed[r.label][k] for r in runs if r.label in landed] for k in TABLES}
    results = _combine(tables)
    for key in combined:
        write_csv(folder / f"{key}.csv", getattr(results, key))
    return results
