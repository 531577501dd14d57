"""`make tutorial`: execute the notebooks in order with papermill.

    PROFILE=tiny OUTPUT_DIR=outputs python -m helpers.run_notebooks 01_sft_lora 02_merge_adapter

Executed notebooks land in `<OUTPUT_DIR>/<PROFILE>/notebooks/`, with `timings.json` (seconds per notebook)
and `runs.json` (which invocation executed each).

The terminal shows which notebook out of how many, each code cell as it starts (`[4/12]`, the number
the executed notebook shows beside it), and the kernel's stderr as it comes, which carries the PPO bars
and any library warning. The SFT bar of the Trainer is an HTML table in the notebook; the kernel mirrors
it to the terminal as a text bar because this runner sets `TUTORIAL_TERMINAL_PROGRESS=1` (see helpers/__init__.py).

A notebook that fails stops the run. The terminal then ends with a short report (notebook, cell, the
exception's own message on one line) and the partly executed notebook is kept beside the others as
`<name>.failed.ipynb`: open it to see the failing cell with its full traceback. A later successful run
of that notebook removes the stale `.failed` copy.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import papermill
from papermill.exceptions import PapermillExecutionError
from traitlets.config import Config

from .artifacts import atomic_file, locked, output_dir, read_json, write_json
from .profiles import get_profile, profile_name

RUNS_FILE = "runs.json"  # executed notebook -> the invocation of `run` that executed it

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class NotebookFailed(RuntimeError):
    """A notebook raised in one of its cells; `report()` is what the terminal shows."""

    def __init__(self, notebook: str, cell: int | None, first_line: str, error: str, kept: Path | None):
        self.notebook, self.cell, self.first_line, self.error, self.kept = notebook, cell, first_line, error, kept
        super().__init__(self.report())

    def report(self) -> str:
        where = f"in cell [{self.cell}] `{self.first_line}`" if self.cell is not None else "before any cell ran"
        kept = (f"   partly executed notebook, with the full traceback: {self.kept}\n" if self.kept else "")
        return f"FAILED: {self.notebook} {where}\n{kept}   {self.error}"  # last line: the error itself


def one_line(text: str) -> str:
    return " ".join(ANSI.sub("", text).split())


def _failure(source: Path, error: BaseException, kept: Path | None) -> NotebookFailed:
    """The short report for `error`: papermill's own error knows the cell; anything else (a dead kernel,
    a timeout) is reported with its type and message."""
    if isinstance(error, PapermillExecutionError):
        first = next((line for line in error.source.splitlines() if line.strip() and not line.startswith("#")), "")
        return NotebookFailed(source.name, error.exec_count, first.strip()[:80],
                              one_line(f"{error.ename}: {error.evalue}"), kept)
    return NotebookFailed(source.name, None, "", one_line(f"{type(error).__name__}: {error}"), kept)


class CellProgress:
    """nbclient hook: one line per code cell as it starts, numbered as the executed notebook numbers it."""

    def __init__(self):
        self.done, self.total, self.nb = 0, None, None

    def start(self, notebook):
        self.nb = notebook

    def __call__(self, cell, cell_index):
        if cell.cell_type != "code":
            return
        if self.total is None:  # counted at the first cell: the notebook now includes papermill's injected cell
            self.total = sum(c.cell_type == "code" for c in self.nb.cells)
        self.done += 1
        first = next((line for line in cell.source.splitlines() if line.strip() and not line.startswith("#")), "")
        print(f"   [{self.done}/{self.total}] {first.strip()[:90]}", flush=True)


def _kernel_config(sockets: str | os.PathLike):
    """IPC sockets instead of TCP: the kernel is only ever reached from this machine, and ipykernel warns
    ("running over TCP without encryption") for unencrypted TCP. The sockets go in a folder of this run's own
    (`sockets`), not in notebooks/, so two runs side by side cannot cross-wire their kernels."""
    return Config({"KernelManager": {"transport": "ipc", "ip": str(Path(sockets) / "kernel")}})


def run(names: list[str], profile_name: str, out: str | os.PathLike | None = None, **parameters) -> dict:
    """Execute `names` in order into `<output_dir(out)>/<profile>/notebooks/`; raise NotebookFailed."""
    profile = get_profile(profile_name)  # fails at once for an unknown name or a missing GPU
    out = output_dir(out)
    executed = out / profile.name / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    timings_file = executed / "timings.json"
    timings = read_json(timings_file) if timings_file.exists() else {}
    sources = []
    for name in names:
        source = NOTEBOOK_DIR / f"{name.removesuffix('.ipynb')}.ipynb"
        if not source.exists():
            valid = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
            raise SystemExit(f"No notebook {source.name}; valid: {', '.join(valid)}")
        sources.append(source)
    previous = os.environ.get("TUTORIAL_TERMINAL_PROGRESS")
    os.environ["TUTORIAL_TERMINAL_PROGRESS"] = "1"  # inherited by the kernels started below
    try:  # one run per output folder and profile: a second `make tutorial` there is refused, not raced
        with locked(out / profile.name, "make tutorial"), tempfile.TemporaryDirectory(prefix="kernels-") as sockets:
            return _execute(sources, profile.name, out, executed, timings, parameters, sockets)
    finally:
        if previous is None:
            os.environ.pop("TUTORIAL_TERMINAL_PROGRESS")
        else:
            os.environ["TUTORIAL_TERMINAL_PROGRESS"] = previous


def _execute(sources, profile_name, out, executed, timings, parameters, sockets) -> dict:
    timings_file = executed / "timings.json"
    run_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"  # this invocation, recorded for each notebook it ran
    for number, source in enumerate(sources, 1):
        print(f"== [{number}/{len(sources)}] {source.name} (profile {profile_name}) ==", flush=True)
        progress = CellProgress()
        failed = executed / f"{source.stem}.failed.ipynb"
        start = time.perf_counter()
        with atomic_file(executed / source.name) as tmp:
            try:
                papermill.execute_notebook(
                    str(source), str(tmp), parameters=dict(PROFILE=profile_name, OUTPUT_DIR=str(out), **parameters),
                    cwd=str(NOTEBOOK_DIR), kernel_name="python3", progress_bar=False, log_output=False,
                    stderr_file=sys.stderr, on_notebook_start=progress.start, on_cell_start=progress,
                    config=_kernel_config(sockets),
                    # the kernel's own stderr stays the terminal's (the SFT bar goes there), not the notebook's
                    extra_arguments=["--IPKernelApp.capture_fd_output=False"],
                )
            except Exception as error:
                # papermill has written the partly executed notebook (with the traceback) to tmp
                kept = None
                if tmp.exists():
                    shutil.copyfile(tmp, tmp.with_name(f".{failed.name}.tmp"))
                    os.replace(tmp.with_name(f".{failed.name}.tmp"), failed)
                    kept = failed
                raise _failure(source, error, kept) from error
        failed.unlink(missing_ok=True)  # a stale report of an earlier failure
        timings[source.stem] = round(time.perf_counter() - start, 1)
        write_json(timings_file, timings)
        made_by = read_json(executed / RUNS_FILE) if (executed / RUNS_FILE).exists() else {}
        write_json(executed / RUNS_FILE, {**made_by, source.stem: run_id})  # `make publish` wants one run's notebooks
        print(f"   {timings[source.stem]} s -> {executed / source.name}", flush=True)
    return timings


def main(argv: list[str]) -> int:
    profile = profile_name(os.environ.get("PROFILE"))  # make's PROFILE, else $TUTORIAL_PROFILE, else the default
    try:
        run(argv, profile)  # the output folder: $OUTPUT_DIR, else <project root>/outputs
    except NotebookFailed as failure:
        print("\n" + failure.report(), file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
