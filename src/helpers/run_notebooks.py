"""`make tutorial`: execute the notebooks in order with papermill.

    PROFILE=tiny OUTPUT_DIR=outputs python -m helpers.run_notebooks 01_sft_lora 02_merge_adapter

Executed notebooks land in `<OUTPUT_DIR>/<PROFILE>/notebooks/`, with `timings.json` (seconds per notebook).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .artifacts import atomic_file, read_json, write_json
from .profiles import get_profile

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"


def run(names: list[str], profile_name: str, output_dir: str | os.PathLike, **parameters) -> dict:
    import papermill

    profile = get_profile(profile_name)  # fails at once for an unknown name or a missing GPU
    out = Path(output_dir).resolve()
    executed = out / profile.name / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    timings_file = executed / "timings.json"
    timings = read_json(timings_file) if timings_file.exists() else {}
    for name in names:
        source = NOTEBOOK_DIR / f"{name.removesuffix('.ipynb')}.ipynb"
        if not source.exists():
            valid = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9]*.ipynb"))
            raise SystemExit(f"No notebook {source.name}; valid: {', '.join(valid)}")
        print(f"== {source.name} (profile {profile.name}) ==", flush=True)
        start = time.perf_counter()
        with atomic_file(executed / source.name) as tmp:
            papermill.execute_notebook(
                str(source), str(tmp), parameters=dict(PROFILE=profile.name, OUTPUT_DIR=str(out), **parameters),
                cwd=str(NOTEBOOK_DIR), kernel_name="python3", progress_bar=False, log_output=False,
            )
        timings[source.stem] = round(time.perf_counter() - start, 1)
        write_json(timings_file, timings)
        print(f"   {timings[source.stem]} s -> {executed / source.name}", flush=True)
    return timings


if __name__ == "__main__":
    run(sys.argv[1:], os.environ.get("PROFILE") or os.environ.get("TUTORIAL_PROFILE") or "smol",
        os.environ.get("OUTPUT_DIR") or "outputs")
