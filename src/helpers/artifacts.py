"""Where each notebook writes, and how: atomically, so an interrupted run leaves nothing half-written.

Layout (see the README): `<output_dir>/<profile>/<stage>/...`, one stage folder per notebook. There is one
output folder, whoever runs the notebooks: see `output_dir`.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path

# stage folder -> the notebook that writes it (named in "run this first" errors)
STAGES = {
    "01_sft": "01_sft_lora.ipynb",
    "02_merge": "02_merge_adapter.ipynb",
    "03_ppo": "03_ppo_lora.ipynb",
    "04_comparison": "04_reference_model_comparison.ipynb",
    "05_study": "05_study.ipynb",  # the study's own merge of its committed SFT adapter (make study)
}


class MissingArtifactError(FileNotFoundError):
    """An input a notebook needs has not been made yet; the message names the notebook that makes it."""


def project_root() -> Path | None:
    """The source checkout this package runs from (the folder with pyproject.toml and notebooks/), or None
    when it was installed from git or a wheel (Colab), where there is no project folder."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def output_dir(value: str | os.PathLike | None = None) -> Path:
    """The output folder: `value` if given, else $OUTPUT_DIR, else `outputs`.

    A relative path is taken from the project root, not from the working directory, so that a notebook
    opened in JupyterLab (working directory notebooks/), `make tutorial` (the project root) and a script run
    from anywhere read and write the same artifacts. Without a project root (the package installed from
    git, as on Colab) it is taken from the working directory: /content/outputs on Colab.
    """
    chosen = Path(value or os.environ.get("OUTPUT_DIR") or "outputs").expanduser()
    return chosen if chosen.is_absolute() else (project_root() or Path.cwd()) / chosen


def stage_dir(out: str | os.PathLike | None, profile: str, stage: str) -> Path:
    """`<output_dir(out)>/<profile>/<stage>`; `out=None` is the default output folder."""
    if stage not in STAGES and stage != "figures":
        raise ValueError(f"Unknown stage {stage!r}; valid: {', '.join([*STAGES, 'figures'])}")
    return output_dir(out) / profile / stage


def require(path: str | os.PathLike, stage: str, profile: str) -> Path:
    """`path` if it exists, else an error naming the notebook (and profile) that makes it."""
    path = Path(path)
    if not path.exists():
        raise MissingArtifactError(
            f"{path} does not exist. It is made by notebooks/{STAGES[stage]}: run that notebook first "
            f"with the same profile and output dir (e.g. `make tutorial PROFILE={profile}`)."
        )
    return path


@contextmanager
def atomic_dir(final: str | os.PathLike):
    """Yield a fresh temporary folder beside `final`; on success it replaces `final` in one rename."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextmanager
def atomic_file(final: str | os.PathLike):
    """Yield a temporary path beside `final`; on success it is renamed onto `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.stem}.tmp-{uuid.uuid4().hex[:8]}{final.suffix}"  # same suffix: writers check it
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, data) -> Path:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> dict:
    return json.loads(Path(path).read_text())


def write_csv(path: str | os.PathLike, frame) -> Path:
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def save_figure(fig, path: str | os.PathLike) -> Path:
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return Path(path)
