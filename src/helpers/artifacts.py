"""Where each notebook writes, and how: atomically, so an interrupted run leaves nothing half-written.

Layout (see the README): `<output_dir>/<profile>/<stage>/...`, one stage folder per notebook. There is one
output folder, whoever runs the notebooks: see `output_dir`.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from .provenance import content_hash

# stage folder -> the notebook that writes it (named in "run this first" errors)
STAGES = {
    "01_sft": "01_sft_lora.ipynb",
    "02_merge": "02_merge_adapter.ipynb",
    "03_ppo": "03_ppo_lora.ipynb",
    "04_comparison": "04_reference_model_comparison.ipynb",
    "05_study": "05_study.ipynb",  # the study's own merge of its committed SFT adapter (make study)
    "06_grpo": "06_grpo_reference.ipynb",
}


class MissingArtifactError(FileNotFoundError):
    """An input a notebook needs has not been made yet; the message names the notebook that makes it
    (`notebook`, e.g. "01_sft_lora")."""

    def __init__(self, message: str, notebook: str | None = None):
        super().__init__(message)
        self.notebook = notebook


class StaleArtifactError(MissingArtifactError):
    """An input was made from another version of its own input (02's merge from an SFT adapter that 01 has
    since replaced); the message names the notebook to run again."""


class FolderInUseError(RuntimeError):
    """Another process holds the folder's lock (a second `make tutorial`, or 05 during `make study`)."""


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
            f"with the same profile and output dir (e.g. `make tutorial PROFILE={profile}`).",
            STAGES[stage].removesuffix(".ipynb"))
    if stage == "02_merge":  # the merge records the hash of the adapter it merged (helpers.merge.merge_adapter)
        recorded = path.parent / "verification.json"
        adapter = path.parent.parent / "01_sft" / "adapter"
        made_from = read_json(recorded).get("adapter_hash") if recorded.exists() else None
        if made_from and adapter.exists() and content_hash(adapter) != made_from:
            raise StaleArtifactError(
                f"{path} was merged from another SFT adapter than {adapter} holds now (notebook 01 ran again "
                f"since): run notebooks/{STAGES[stage]} again, then the notebooks after it "
                f"(e.g. `make tutorial PROFILE={profile} NOTEBOOKS=\"02_merge_adapter 03_ppo_lora\"`).",
                STAGES[stage].removesuffix(".ipynb"))
    return path


def input_hashes(out: str | os.PathLike | None, profile: str) -> dict:
    """What a stage after 02 was made from, by content: 01's adapter and 02's merged model (03 records it in
    its evaluation.json; 04's runs carry both in their fingerprints)."""
    return {"sft_adapter": content_hash(require(stage_dir(out, profile, "01_sft") / "adapter", "01_sft", profile)),
            "merged_model": content_hash(require(stage_dir(out, profile, "02_merge") / "model", "02_merge", profile))}


_HELD: set[Path] = set()


@contextmanager
def locked(folder: str | os.PathLike, what: str = "this folder"):
    """Hold `folder`'s lock (fcntl.flock on `folder/.lock`) for the block; a second holder is refused at once
    with the first one's process id and command, instead of racing it on the same files."""
    folder = Path(folder).resolve()
    if folder in _HELD:  # already this process's (run_study holds it around run_all): flock would refuse itself
        yield folder
        return
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / ".lock", "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderInUseError(f"{folder} is in use by {holder}: {what} cannot run beside it. Wait for it to "
                                   f"finish, or stop it first.") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} ({' '.join(sys.argv)[:200]}, since "
                     f"{datetime.now(timezone.utc).isoformat(timespec='seconds')})")
        handle.flush()
        _HELD.add(folder)
        try:
            yield folder
        finally:
            _HELD.discard(folder)
    finally:
        handle.close()  # closing releases the lock


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
