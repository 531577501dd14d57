"""`make publish`: copy the executed notebooks of a run into docs/ so that GitHub shows their results.

    python -m helpers.harness.publish outputs/smol/notebooks docs/notebooks

The copies keep every output a reader looks at (tables, figures, printed results, the final state of each
progress bar) and drop what only a live kernel uses: the widget state, papermill's per-cell timing
metadata and the intermediate frames of progress bars. The notebooks in notebooks/ stay output-free.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

import nbformat
import pandas as pd

from ..artifacts import atomic_dir, atomic_file, output_dir, project_root, read_json, write_json
from ..profiles import DEFAULT_PROFILE, profile_name
from ..run_notebooks import RUNS_FILE
from .readme import README_PROFILE, tutorial_dir, update_readme
from .study import study_dir

MAX_TOTAL_MB = 8  # "a few MB in all": the repository carries these files
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def final_frame(text: str) -> str:
    """What a terminal shows of `text`: on each line, only what follows the last carriage return."""
    return "\n".join(line.rsplit("\r", 1)[-1] for line in text.split("\n"))


def slim(nb):
    """Drop widget state and timings; merge consecutive stream outputs into their final frame."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.outputs:
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                data.pop(WIDGET_VIEW)
                if not data:
                    continue
            if (output.output_type == "stream" and outputs and outputs[-1].output_type == "stream"
                    and outputs[-1].name == output.name):
                outputs[-1].text += output.text
                continue
            outputs.append(output)
        for output in outputs:
            if output.output_type == "stream":
                output.text = final_frame(output.text)
        cell.outputs = outputs
    return nb


def publish(source: str | Path, destination: str | Path) -> list[Path]:
    """The executed notebooks of one complete run, slimmed, into `destination`; refused (nothing written) while
    a notebook's failure report is there, when the notebooks come from different runs or not all of them ran,
    or when they would take more than MAX_TOTAL_MB."""
    source, destination = Path(source), Path(destination)
    notebooks = sorted(p for p in source.glob("[0-9]*.ipynb") if not p.name.endswith(".failed.ipynb"))
    if not notebooks:
        raise SystemExit(f"No executed notebooks in {source}. Run them first: `make tutorial PROFILE=smol`, "
                         "then `make publish`.")
    failed = sorted(source.glob("*.failed.ipynb"))
    if failed:
        raise SystemExit(f"{failed[0]} is there: that notebook failed in the last run. Fix it and run `make tutorial` "
                         f"again; nothing was published.")
    expected = {p.stem for p in (project_root() / "notebooks").glob("[0-9]*.ipynb")} if project_root() else set()
    made_by = read_json(source / RUNS_FILE) if (source / RUNS_FILE).exists() else {}
    runs = {made_by.get(p.stem) for p in notebooks}
    if len(runs) != 1 or None in runs or not expected <= {p.stem for p in notebooks}:
        raise SystemExit(f"The notebooks in {source} are not one complete run (made by: "
                         f"{ {p.stem: made_by.get(p.stem) for p in notebooks} }; expected {sorted(expected)}). Run "
                         f"them all in one `make tutorial`, then `make publish`; nothing was published.")
    slimmed = {path.name: nbformat.writes(slim(nbformat.read(path, as_version=4))) for path in notebooks}
    sizes = {name: len(text.encode()) / 2**20 for name, text in slimmed.items()}
    if sum(sizes.values()) > MAX_TOTAL_MB:
        raise SystemExit(f"The published notebooks would take {sum(sizes.values()):.1f} MB (limit {MAX_TOTAL_MB} MB; "
                         f"largest: {max(sizes, key=sizes.get)}): show less in its largest output (fewer rows, a "
                         f"smaller figure). Nothing was written.")
    written = []
    for name, text in slimmed.items():
        with atomic_file(destination / name) as tmp:
            tmp.write_text(text)
        written.append(destination / name)
        print(f"{destination / name}  {sizes[name]:.2f} MB")
    return written


# what a tutorial run leaves that the README's results are made of: small files, committed in docs/tutorial/
RESULT_FILES = {"notebooks/timings.json": "timings.json", "01_sft/adapter/metrics.json": "01_sft_metrics.json",
                "02_merge/verification.json": "02_merge_verification.json",
                "03_ppo/evaluation.json": "03_ppo_evaluation.json",
                **{f"04_comparison/{t}.csv": f"04_comparison/{t}.csv" for t in ("metrics", "evaluation", "runs", "summary")},
                **{f"figures/{f}.png": f"figures/{f}.png" for f in ("01_sft_perplexity", "03_ppo_curves")},
                **{f"04_comparison/figures/{f}.png": f"figures/04_{f}.png"
                   for f in ("comparison", "frontier", "memory_time", "penalty_alone")},
                **{f"06_grpo/{t}.csv": f"06_grpo_{t}.csv" for t in ("step0", "run_ends")},
                **{f"06_grpo/figures/{f}.png": f"figures/06_{f}.png" for f in ("grpo_curves", "grpo_beside_ppo")}}


def publish_results(run: str | Path, destination: str | Path, command: str) -> Path:
    """Copy a tutorial run's result files (`outputs/<profile>/`) into `destination` in one atomic step, with
    run.json: the command, the date the notebooks finished, the machine and commit the comparison ran on."""

    run = Path(run)
    missing = [f for f in RESULT_FILES if not (run / f).exists()]
    if missing:
        raise SystemExit(f"{run} lacks {', '.join(missing)}: run `make tutorial` (every notebook) first.")
    runs = pd.read_csv(run / "04_comparison" / "runs.csv")
    with atomic_dir(destination) as tmp:
        for source, name in RESULT_FILES.items():
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run / source, tmp / name)
        finished = datetime.fromtimestamp((run / "notebooks" / "timings.json").stat().st_mtime, timezone.utc)
        write_json(tmp / "run.json", {"command": command, "date": finished.date().isoformat(),
                                      "machine": str(runs.cpu.iloc[0]), "threads": sorted(set(runs.threads.astype(int))),
                                      "commits": sorted(set(runs.commit.astype(str))), "torch": str(runs.torch.iloc[0])})
    return Path(destination)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Publish one complete `make tutorial` run: its executed notebooks, "
                                     "its result files (docs/tutorial/<profile>/) and the README's generated blocks.")
    parser.add_argument("--profile", default=None, help=f"default: $TUTORIAL_PROFILE, else {DEFAULT_PROFILE}")
    parser.add_argument("--out", default=None, help="the run's output folder (default: $OUTPUT_DIR, else outputs/)")
    parser.add_argument("--to", default=None, help="where the executed notebooks go (default: docs/notebooks/, "
                        f"the {README_PROFILE} profile's only; another profile needs a folder of its own)")
    parser.add_argument("--readme", default="README.md", help="the README whose generated blocks are rewritten "
                        "(with docs/notebooks/ only)")
    args = parser.parse_args(argv)
    name = profile_name(args.profile)
    run = output_dir(args.out) / name
    docs_notebooks = (project_root() or Path.cwd()) / "docs" / "notebooks"
    to = Path(args.to) if args.to else docs_notebooks
    if to.resolve() == docs_notebooks and name != README_PROFILE:
        raise SystemExit(f"docs/notebooks and the README show the {README_PROFILE} profile; publishing {name} there "
                         f"would mix two profiles. Publish {name} elsewhere: python -m helpers.harness.publish "
                         f"--profile {name} --to <another folder>")
    publish(run / "notebooks", to)
    if to.resolve() == docs_notebooks:
        results = publish_results(run, tutorial_dir(name), f"make tutorial PROFILE={name}")
        print(f"{results}: the run's result files")
        changed = update_readme(args.readme, study_dir(name), tutorial_dir(name))
        print("README's generated blocks", "regenerated" if changed else "unchanged")
    return 0


if __name__ == "__main__":
    sys.exit(main())
