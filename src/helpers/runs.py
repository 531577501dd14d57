"""One run is one value: `Run(study, arm, seed, ppo, reward, eval_every)`, executed by `execute`.

Notebook 04 and the full study (`make study`, helpers.study) both make a list of `Run`s and hand it to
`run_all`. A run's numbers are decided by the run value itself and by the `Inputs` every run of a plan
shares (the prompts, the evaluation's prompts and reviews, the 01 adapter and the 02 model, by content):
its fingerprint is those two, so a re-run skips exactly the runs whose folder is complete and whose
fingerprint is unchanged, and says why it runs the others.

Each run lands in `<folder>/runs/<study>/<arm>[/beta<β>]/seed<k>/` in one atomic step, with its tables
(metrics.csv: one row per step; evaluation.csv: one row per held-out evaluation; samples.csv: every
held-out response) and summary.json (memory, time, the hash of the trained weights, the commit and machine
it ran on). The combined tables beside `runs/` are rewritten after each run.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import resource
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from .arms import ARMS, Sources, build_arm, check_arms, profile_quantization, yardsticks
from .artifacts import atomic_dir, read_json, require, stage_dir, write_csv, write_json
from .evaluation import Evaluator
from .machine import cpu_model, release_free_memory
from .models import compute_dtype, model_bytes
from .ppo import LR_RATIOS, PPOConfig, train, trainable_parameters
from .profiles import Profile

RUN_FILES = ("metrics.csv", "evaluation.csv", "samples.csv", "summary.json", "fingerprint.json")
TABLES = ("metrics", "evaluation", "samples", "runs")


def check_count(name: str, value, minimum: int = 1) -> int:
    """`value` if it is an integer >= minimum, else an error that says what is valid."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return int(value)


@dataclass(frozen=True)
class Run:
    """Everything that decides one run's numbers, apart from the inputs all runs share."""

    study: str  # "main", "penalty" (notebook 04), "fixed-beta" (the full study), ...
    arm: str  # a name in helpers.arms.ARMS
    seed: int  # training-prompt order, rollout sampling, LoRA and value-head init, held-out sampling
    ppo: PPOConfig  # steps and the KL coefficient included; its seed is the run's
    reward: str  # a name in helpers.rewards.REWARDS (or the profile's reward), or "off"
    eval_every: int  # held-out evaluation at step 0, every `eval_every` steps and after the last

    def __post_init__(self):
        check_arms([self.arm])
        check_count("seed", self.seed, minimum=0)
        check_count("steps", self.ppo.steps)
        check_count("eval_every", self.eval_every)
        if not self.ppo.init_kl_coef >= 0:
            raise ValueError(f"the KL coefficient β must be >= 0, not {self.ppo.init_kl_coef!r}")
        object.__setattr__(self, "ppo", replace(self.ppo, seed=self.seed))

    @property
    def beta(self) -> float | None:
        """The fixed KL coefficient, or None where the adaptive controller sets it."""
        return None if self.ppo.adaptive_kl else self.ppo.init_kl_coef

    @property
    def path(self) -> Path:
        beta = [] if self.beta is None else [f"beta{self.beta:g}"]
        return Path(self.study, self.arm, *beta, f"seed{self.seed}")

    @property
    def label(self) -> str:
        return "/".join(self.path.parts)

    def fingerprint(self) -> dict:
        d = asdict(self)
        for ratio in LR_RATIOS:  # absent at TRL's one learning rate, as before these settings existed: runs
            if d["ppo"][ratio] == 1:  # made before them keep their fingerprints
                del d["ppo"][ratio]
        return d


def no_reward(texts: list[str]) -> torch.Tensor:
    """The reward switched off: PPO then optimises only the KL penalty."""
    return torch.zeros(len(texts))


def seed_queries(queries: list[list[int]], seed: int) -> list[list[int]]:
    """Seed k's order of the training prompts: the same for every arm (paired), different across seeds."""
    return [queries[i] for i in np.random.default_rng(seed).permutation(len(queries))]


def content_hash(*items) -> str:
    """sha256 of files (by content, folders file by file in name order) and JSON-able values."""
    h = hashlib.sha256()
    for item in items:
        if isinstance(item, Path):
            for f in sorted(item.rglob("*")) if item.is_dir() else [item]:
                if f.is_file():
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


@dataclass
class Inputs:
    """What every run of a plan shares: the models' sources, the prompts and the evaluation protocol."""

    profile: Profile
    sources: Sources
    tokenizer: object
    queries: list[list[int]]  # training prompts; seed k takes them in its own order
    eval_queries: list[list[int]]  # held-out prompts, the same at every evaluation of every run
    rewards: dict[str, Callable]  # every reward a run may name ("off" is always there)
    eval_reward: str  # the evaluation always measures this one, whatever the run trains on
    perplexity_texts: list[str] | None = None
    eval_samples: int = 1  # responses per held-out prompt at each evaluation
    # what identifies the merged model when it is remade from a committed adapter (the study): last-bit float
    # differences of a merge on another machine then do not invalidate committed runs. None: its files' hash
    merged_from: str | None = None
    _common: dict | None = field(default=None, repr=False)

    def reward(self, name: str) -> Callable:
        if name == "off":
            return no_reward
        if name not in self.rewards:
            raise ValueError(f"Unknown reward {name!r} for these inputs; they have: off, {', '.join(self.rewards)}")
        return self.rewards[name]

    def fingerprint(self) -> dict:
        """The inputs by content (computed once: hashing the merged model reads its files)."""
        if self._common is None:
            self._common = {
                "profile": self.profile.name, "quantization": self.sources.quantize,
                "train_prompts": content_hash(self.queries),
                "eval_prompts": content_hash(self.eval_queries, self.perplexity_texts, self.profile.sft_seq_len),
                "eval_samples": self.eval_samples, "eval_reward": self.eval_reward,
                "sft_adapter": content_hash(self.sources.sft_adapter),
                "merged_model": self.merged_from or content_hash(self.sources.merged_dir),
            }
            dtype = str(compute_dtype(self.profile)).removeprefix("torch.")
            if dtype != "float32":  # absent for fp32, the one dtype before the setting: committed runs keep theirs
                self._common["dtype"] = dtype
        return self._common


def inputs_from_outputs(profile: Profile, out, tokenizer, queries, eval_queries, reward_fn, perplexity_texts=None,
                        reward_name: str | None = None, eval_samples: int = 1) -> Inputs:
    """Inputs from the 01 adapter and the 02 model in the output folder (an error names the notebook to run
    first when one is missing)."""
    sft_adapter = require(stage_dir(out, profile.name, "01_sft") / "adapter", "01_sft", profile.name)
    merged_dir = require(stage_dir(out, profile.name, "02_merge") / "model", "02_merge", profile.name)
    name = reward_name or profile.reward
    return Inputs(profile, Sources(profile, sft_adapter, merged_dir, profile_quantization(profile)), tokenizer,
                  queries, eval_queries, {name: reward_fn}, name, perplexity_texts, eval_samples)


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


def run_state(folder: Path, fingerprint: dict) -> str | None:
    """None if the run in `folder` is complete and made with `fingerprint`, else why it must (re-)run."""
    if not folder.exists():
        return "not run yet"
    missing = [f for f in RUN_FILES if not (folder / f).exists()]
    if missing:
        return f"incomplete (missing {', '.join(missing)})"
    changed = _differences(json.loads(json.dumps(read_json(folder / "fingerprint.json"))),
                           json.loads(json.dumps(fingerprint)))
    return f"settings changed ({'; '.join(changed)})" if changed else None


# --- measuring one run ---------------------------------------------------------------------------------


def _rss_parts() -> dict:
    """Resident memory by kind (Linux): file-backed pages (memory-mapped safetensors weights, libraries) and
    anonymous ones (tensors the process made: activations, gradients, optimizer state, allocator caches)."""
    parts = {}
    try:
        for line in open("/proc/self/status"):
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                key, kib = line.split()[:2]
                parts[key[3:-1].lower()] = int(kib) * 1024
    except OSError:
        pass
    return parts


class RssPeak:
    """Peak resident memory above its level at entry, sampled every 20 ms by a background thread, with its
    split into file-backed and anonymous pages at the peak (Linux)."""

    def __enter__(self):
        import psutil

        release_free_memory()  # so a previous arm's freed pages do not hide this arm's growth
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self.start_parts = self.peak_parts = _rss_parts()
        self._stop, self._paused = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.02):
            if not self._paused.is_set():
                rss = self._process.memory_info().rss
                if rss > self.peak:
                    self.peak, self.peak_parts = rss, _rss_parts()

    def unmeasured(self, fn):
        """`fn` with sampling paused while it runs: yardsticks and evaluations are not the arm's memory."""
        def call(*args, **kwargs):
            self._paused.set()
            try:
                return fn(*args, **kwargs)
            finally:
                self._paused.clear()
        return call

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.start

    def growth_of(self, kind: str) -> int | None:
        """Growth of "file" or "anon" pages from entry to the peak; None where /proc does not say."""
        if kind not in self.start_parts or kind not in self.peak_parts:
            return None
        return self.peak_parts[kind] - self.start_parts[kind]


class _Unmeasured:
    """An evaluator (with its yardsticks) whose calls the arm's RSS peak leaves out."""

    def __init__(self, inner, rss: RssPeak):
        self.inner, self.rss = inner, rss

    def __call__(self, *args, **kwargs):
        return self.rss.unmeasured(self.inner)(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def where_it_ran() -> dict:
    """The commit and machine a run came from (recorded, never part of the fingerprint)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return {"commit": commit, "cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def execute(run: Run, inputs: Inputs, sticks: dict, progress: bool = False) -> dict:
    """One run: build the arm, train it with held-out evaluations; its tables and a one-row summary."""
    cuda_baseline = 0  # the yardsticks already on the GPU: not the arm's memory
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        cuda_baseline = torch.cuda.memory_allocated()
    start = time.perf_counter()
    src = inputs.sources
    arm = build_arm(run.arm, src.profile, src.sft_adapter, src.merged_dir, src.quantize, run.seed)
    evaluator = Evaluator(inputs.tokenizer, inputs.eval_queries, inputs.reward(inputs.eval_reward),
                          run.ppo.response_len, every=run.eval_every, seed=run.seed,
                          samples_per_prompt=inputs.eval_samples, yardsticks=sticks,
                          perplexity_texts=inputs.perplexity_texts, perplexity_seq_len=src.profile.sft_seq_len)
    with RssPeak() as rss:
        metrics = train(arm.policy, arm.value_head, arm.reference, inputs.tokenizer, seed_queries(inputs.queries, run.seed),
                        inputs.reward(run.reward), run.ppo, evaluator=_Unmeasured(evaluator, rss), progress=progress)
    timed = metrics["step_time_s"].iloc[1:] if len(metrics) > 1 else metrics["step_time_s"]  # no warm-up step
    summary = {
        "arm": run.arm, "seed": run.seed, "steps": run.ppo.steps, "backbones": ARMS[run.arm].backbones,
        "model_bytes": model_bytes(*arm.holds),
        "rss_growth_bytes": rss.growth,
        # of it: weights' file pages the first forward touches (safetensors are memory-mapped), and the rest
        "rss_file_growth_bytes": rss.growth_of("file"), "rss_anon_growth_bytes": rss.growth_of("anon"),
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() - cuda_baseline if torch.cuda.is_available() else 0,
        "trainable_params": sum(p.numel() for p in trainable_parameters(arm.policy, arm.value_head)),
        "trained_weights": weights_hash(trainable_parameters(arm.policy, arm.value_head)),
        "step_time_median_s": timed.median(), "step_time_min_s": timed.min(), "step_time_max_s": timed.max(),
        "total_time_s": time.perf_counter() - start,
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        **where_it_ran(),
    }
    del arm
    gc.collect()
    return {"metrics": metrics, "evaluation": evaluator.table(), "samples": evaluator.samples(), "summary": summary}


# --- many runs -----------------------------------------------------------------------------------------


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
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    shell = get_ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return None
    return display({"text/plain": "starting the runs..."}, raw=True, display_id=True)


def run_all(runs: list[Run], inputs: Inputs, folder: str | Path, force: bool = False, progress: bool = False,
            combined: tuple[str, ...] = TABLES, run_missing: bool = True, workers: int | str = 1) -> Results:
    """Execute every run not yet done with its fingerprint; each lands in `folder/runs/...` in one atomic
    step, and the combined tables named in `combined` are rewritten after each. `run_missing=False` runs
    nothing: the results are the runs that have landed with their fingerprint. `workers` > 1 (or
    $RAY_ADDRESS set) runs them on Ray (helpers.workers; "auto": 2 on a CPU machine with Ray, else 1); the
    driver writes every file either way."""
    from .workers import resolve_workers

    folder = Path(folder)
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

    def land(run: Run, result: dict) -> None:
        _, fingerprint, why = todo[run.label]
        with atomic_dir(folder / "runs" / run.path) as tmp:  # the run counts as done only once every file landed
            for key in ("metrics", "evaluation", "samples"):
                write_csv(tmp / f"{key}.csv", result[key])
            write_json(tmp / "summary.json", result["summary"])
            write_json(tmp / "fingerprint.json", fingerprint)
        log.ran(run, why, result["summary"]["total_time_s"])
        landed[run.label] = _read_run(run, folder / "runs" / run.path)
        _write_combined(folder, runs, landed, combined)

    failed = []
    if todo and (workers > 1 or os.environ.get("RAY_ADDRESS")):
        from .workers import run_on_ray

        failed = run_on_ray([run for run, _, _ in todo.values()], inputs, workers, land)
    elif todo:
        sticks = yardsticks(inputs.profile, inputs.sources.merged_dir, inputs.sources.quantize)
        for run, _, _ in todo.values():
            land(run, execute(run, inputs, sticks, progress))
    results = _write_combined(folder, runs, landed, combined)
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


def _combine(tables: dict[str, list]) -> Results:
    if not tables["runs"]:
        return Results(*(pd.DataFrame(columns=["study", "arm", "beta", "seed"]) for _ in TABLES))
    return Results(*(ordered(pd.concat(tables[k], ignore_index=True)) for k in TABLES))
