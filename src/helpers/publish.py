"""`make publish`: copy the executed notebooks of a run into docs/ so that GitHub shows their results.

    python -m helpers.publish outputs/smol/notebooks docs/notebooks

The copies keep every output a reader looks at (tables, figures, printed results, the final state of each
progress bar) and drop what only a live kernel uses: the widget state, papermill's per-cell timing
metadata and the intermediate frames of progress bars. The notebooks in notebooks/ stay output-free.
"""

from __future__ import annotations

import sys
from pathlib import Path

from .artifacts import atomic_file

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
    import nbformat

    source, destination = Path(source), Path(destination)
    notebooks = sorted(p for p in source.glob("[0-9]*.ipynb") if not p.name.endswith(".failed.ipynb"))
    if not notebooks:
        raise SystemExit(f"No executed notebooks in {source}. Run them first: `make tutorial PROFILE=smol`, "
                         "then `make publish`.")
    written = []
    for path in notebooks:
        nb = slim(nbformat.read(path, as_version=4))
        with atomic_file(destination / path.name) as tmp:
            nbformat.write(nb, tmp)
        written.append(destination / path.name)
    total = sum(p.stat().st_size for p in written) / 2**20
    for p in written:
        print(f"{p}  {p.stat().st_size / 2**20:.2f} MB")
    if total > MAX_TOTAL_MB:
        raise SystemExit(f"The published notebooks take {total:.1f} MB (limit {MAX_TOTAL_MB} MB): find the "
                         "cell with the largest output and show less of it (fewer rows, a smaller figure).")
    return written


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: python -m helpers.publish <executed notebooks folder> <destination>")
    publish(*sys.argv[1:])
