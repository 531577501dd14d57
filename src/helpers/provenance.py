"""Where a result came from, and what it was made of: content hashes, weight hashes, the commit and machine.

Used by every stage that records its inputs (the study's run fingerprints, the tuning's trials), so a later
stage can tell an unchanged input from a changed one by content rather than by path.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import torch

from .machine import cpu_model


def check_count(name: str, value, minimum: int = 1) -> int:
    """`value` if it is an integer >= minimum, else an error that says what is valid."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return int(value)


def content_hash(*items) -> str:
    """sha256 of files (by content, folders file by file in name order, dotfiles left out) and JSON-able values."""
    h = hashlib.sha256()
    for item in items:
        if isinstance(item, Path):
            for f in sorted(item.rglob("*")) if item.is_dir() else [item]:
                # dotfiles (.DS_Store, .ipynb_checkpoints) are not content: a Finder visit must not change a hash
                hidden = item.is_dir() and any(part.startswith(".") for part in f.relative_to(item).parts)
                if f.is_file() and not hidden:
                    h.update(str(f.relative_to(item) if item.is_dir() else f.name).encode())
                    with open(f, "rb") as fh:
                        for chunk in iter(lambda: fh.read(1 << 20), b""):
                            h.update(chunk)
        else:
            h.update(json.dumps(item, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def weights_hash(params) -> str:
    """sha256 of tensors' bytes, in order: equal only for bit-identical weights."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]



def where_it_ran() -> dict:
    """The commit and machine a run came from (recorded, never part of the fingerprint)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"commit": commit, "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
