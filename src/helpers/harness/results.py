"""Many runs' tables as one value: `Results` (metrics, evaluation, samples, runs), each row keyed by study,
arm, β and seed; read back from a study folder with `load_results`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..artifacts import read_json
from .arms import ARMS
from .run import Run

TABLES = ("metrics", "evaluation", "samples", "runs")


@dataclass
class Results:
    """Every run of a plan, each table with `study`, `arm`, `beta` (NaN: adaptive) and `seed` columns."""

    metrics: pd.DataFrame  # one row per training step
    evaluation: pd.DataFrame  # one row per evaluation on the held-out prompts
    samples: pd.DataFrame  # held-out responses and rewards at each evaluation
    runs: pd.DataFrame  # one row per run: memory, time, where it ran

    def select(self, study: str, beta: float | None = None) -> "Results":
        """The runs of one study (and one β, if given), without the `study` column."""
        def pick(t):
            if not len(t) or "study" not in t:
                return t
            keep = t["study"] == study
            if beta is not None:
                keep &= np.isclose(t["beta"].astype(float), beta)
            return t[keep].drop(columns="study")
        return Results(*(pick(getattr(self, k)) for k in TABLES))

    def seeds(self, keep) -> "Results":
        """The runs of these seeds only (a pilot's, say)."""
        keep = set(keep)
        return Results(*(t[t["seed"].isin(keep)] if len(t) and "seed" in t else t
                         for t in (getattr(self, k) for k in TABLES)))

    def study(self, name: str) -> "Results":
        return self.select(name)

    def summary(self, study: str = "main") -> pd.DataFrame:
        """One row per arm of a study: memory, and step time as median with its min-max spread."""
        runs = self.study(study).runs
        for part in ("rss_file_growth_bytes", "rss_anon_growth_bytes"):  # runs of an older version lack them
            runs = runs if part in runs else runs.assign(**{part: np.nan})
        return runs.groupby("arm", sort=False).agg(
            seeds=("seed", "count"), backbones=("backbones", "first"), model_bytes=("model_bytes", "max"),
            rss_growth_bytes=("rss_growth_bytes", "median"), rss_file_growth_bytes=("rss_file_growth_bytes", "median"),
            rss_anon_growth_bytes=("rss_anon_growth_bytes", "median"), peak_cuda_bytes=("peak_cuda_bytes", "max"),
            trainable_params=("trainable_params", "first"), step_time_s=("step_time_median_s", "median"),
            step_time_min_s=("step_time_min_s", "min"), step_time_max_s=("step_time_max_s", "max"),
        ).reset_index()


def readable_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """`Results.summary()` for a reader: MiB and seconds; the CUDA column only where a GPU ran."""
    t = summary.set_index("arm")
    mib = lambda col: (t[col] / 2**20).round(0)  # noqa: E731
    out = pd.DataFrame({"seeds": t.seeds, "backbones": t.backbones, "weights held (MiB)": mib("model_bytes"),
                        "RSS growth in training (MiB)": mib("rss_growth_bytes"),
                        "of it: mapped weight pages (MiB)": mib("rss_file_growth_bytes"),
                        "of it: anonymous (MiB)": mib("rss_anon_growth_bytes")})
    if t.peak_cuda_bytes.gt(0).any():
        out["peak CUDA above the yardsticks (MiB)"] = mib("peak_cuda_bytes")
    out["trainable parameters"] = t.trainable_params
    out["s per step (median)"] = t.step_time_s.round(2)
    out["s per step (min–max)"] = [f"{a:.2f}–{b:.2f}" for a, b in zip(t.step_time_min_s, t.step_time_max_s)]
    return out


def ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Columns study, arm, beta, seed first; rows in registry order."""
    first = ["study", "arm", "beta", "seed"]
    table = table[first + [c for c in table.columns if c not in first]]
    order = {a: i for i, a in enumerate(ARMS)}
    keys = first + (["step"] if "step" in table else [])
    table = table.sort_values(keys, key=lambda c: c.map(order) if c.name == "arm" else c, kind="stable")
    return table.reset_index(drop=True)


def load_results(folder: str | Path) -> Results:
    """The combined tables `run_all` wrote into `folder` (samples.csv may be left out: empty then)."""
    folder = Path(folder)
    return Results(*(pd.read_csv(folder / f"{k}.csv") if (folder / f"{k}.csv").exists() else
                     pd.DataFrame(columns=["study", "arm", "beta", "seed"]) for k in TABLES))


def _read_run(run: Run, run_dir: Path) -> dict[str, pd.DataFrame]:
    keys = dict(study=run.study, arm=run.arm, beta=np.nan if run.beta is None else run.beta, seed=run.seed)
    tables = {k: pd.read_csv(run_dir / f"{k}.csv").assign(**keys) for k in ("metrics", "evaluation", "samples")}
    tables["runs"] = pd.DataFrame([{**read_json(run_dir / "summary.json"), **keys}])
    return tables


def _combine(tables: dict[str, list]) -> Results:
    if not tables["runs"]:
        return Results(*(pd.DataFrame(columns=["study", "arm", "beta", "seed"]) for _ in TABLES))
    return Results(*(ordered(pd.concat(tables[k], ignore_index=True)) for k in TABLES))
