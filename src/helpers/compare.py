"""Notebook 04: every reference-model choice, as evidence.

An *arm* is (what the policy is, what the reference is). Every arm runs with the same prompts, reward,
steps and hyperparameters, over several seeds that are paired across arms: seed k gives every arm the
same training-prompt order, the same rollout sampling seed and the same held-out evaluation. Each
evaluation measures, on the same held-out prompts for every arm, KL to two fixed frozen yardsticks, the
SFT model (`kl_sft_exact`) and the base model (`kl_base_exact`), so arms with different references
compare on one axis. Yardsticks are held outside the arm and kept out of its memory figure.

A claim is judged against the arm that differs from it in one thing only (its *control*), from the
per-seed differences: mean, 95% t-interval, and a verdict ("as expected", "differs", "inconclusive").

Each (study, arm, seed) run lands in its own folder in one atomic step, with a fingerprint of everything
that decides its numbers; a re-run skips a run only if that folder is complete and its fingerprint matches.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from peft import PeftModel

from .artifacts import atomic_dir, read_json, require, stage_dir, write_csv, write_json
from .evaluation import Evaluator, t_interval  # noqa: F401  (t_interval: also part of this module's API)
from .merge import load_adapter
from .models import PPO_ADAPTER, load_model, model_bytes, new_lora, ppo_lora_config
from .ppo import PPOConfig, ValueHead, config_from_profile, train, trainable_parameters
from .profiles import Profile
from .reference import DisabledAdapters, FrozenAdapter, FrozenModel, Reference


# --- the arms: one registry, one entry per arm -------------------------------------------------------


@dataclass
class Sources:
    """Where an arm's models come from: the profile's base, the 01 SFT adapter, the 02 merged model."""

    profile: Profile
    sft_adapter: Path
    merged_dir: Path
    quantize: str | None = None  # "8bit" on an 8-bit profile: arms and yardsticks alike

    def base(self):
        return load_model(self.profile, quantize=self.quantize)

    def merged(self):
        return load_model(self.profile, self.merged_dir, quantize=self.quantize)

    def with_sft(self, name: str = "sft", trainable: bool = False) -> PeftModel:
        return load_adapter(self.base(), self.sft_adapter, self.profile, adapter_name=name, trainable=trainable)


@dataclass
class Built:
    policy: PeftModel
    reference: Reference
    trained: list[str]  # the adapters whose LoRA weights PPO trains
    extra: list = field(default_factory=list)  # modules held only for the reference (a second backbone)


def _merged_disabled(src: Sources, seed: int) -> Built:
    policy = new_lora(src.merged(), src.profile, seed)
    return Built(policy, DisabledAdapters(policy), [PPO_ADAPTER])


def _merged_copy(src: Sources, seed: int) -> Built:
    policy, reference = new_lora(src.merged(), src.profile, seed), FrozenModel(src.merged())
    return Built(policy, reference, [PPO_ADAPTER], [reference.model])


def _adapter_disabled(src: Sources, seed: int) -> Built:
    policy = src.with_sft(trainable=True)
    return Built(policy, DisabledAdapters(policy), ["sft"])


def _adapter_copy(src: Sources, seed: int) -> Built:
    policy, reference = src.with_sft(trainable=True), FrozenModel(src.with_sft())
    return Built(policy, reference, ["sft"], [reference.model])


def _adapter_ref_adapter(src: Sources, seed: int) -> Built:
    policy = src.with_sft(trainable=True)
    policy.load_adapter(src.sft_adapter, adapter_name="ref", is_trainable=False)
    return Built(policy, FrozenAdapter(policy, "ref"), ["sft"])


def _stacked(src: Sources, seed: int) -> Built:
    policy = src.with_sft()
    torch.manual_seed(seed)
    policy.add_adapter(PPO_ADAPTER, ppo_lora_config(src.profile, policy.get_base_model()))
    policy.base_model.set_adapter(["sft", PPO_ADAPTER])  # both on for the policy
    return Built(policy, FrozenAdapter(policy, "sft"), [PPO_ADAPTER])


def _base_disabled(src: Sources, seed: int) -> Built:
    policy = new_lora(src.base(), src.profile, seed)
    return Built(policy, DisabledAdapters(policy), [PPO_ADAPTER])


@dataclass(frozen=True)
class Arm:
    policy: str
    reference: str
    why: str
    build: Callable[[Sources, int], Built]
    style: dict  # matplotlib line style, the same in every figure
    backbones: int = 1
    claim: bool = True  # carries a claim: runs every seed; False: the plan's fewer side seeds and steps


# Arms whose curves coincide (a copy and its one-backbone twin) get a wide line under a narrow one.
ARMS: dict[str, Arm] = {
    "merged+disabled": Arm(
        "merged SFT model + new LoRA", "same network, adapters disabled",
        "The original recipe: the reference is the SFT model for free, one backbone in memory.",
        _merged_disabled, dict(color="#1f77b4", linestyle="-", linewidth=5, marker="o", alpha=0.6)),
    "merged+copy": Arm(
        "merged SFT model + new LoRA", "a second frozen copy of the merged model",
        "What an explicit ref_model does: the same numbers as merged+disabled at twice the memory.",
        _merged_copy, dict(color="#0b2f55", linestyle="--", linewidth=1.5, marker=None, alpha=1.0),
        backbones=2, claim=False),
    "adapter+disabled": Arm(
        "base + SFT adapter, trained further", "adapters disabled = the raw base model",
        "The pitfall: skipping the merge silently makes the reference the base model.",
        _adapter_disabled, dict(color="#d62728", linestyle="-", linewidth=5, marker="o", alpha=0.6)),
    "adapter+copy": Arm(
        "base + SFT adapter, trained further", "a second frozen model: base + SFT adapter",
        "Fixes the pitfall without merging, at the price of a second backbone.",
        _adapter_copy, dict(color="#5c0a0b", linestyle="--", linewidth=1.5, marker=None, alpha=1.0),
        backbones=2, claim=False),
    "adapter+ref-adapter": Arm(
        "base + SFT adapter, trained further", "a frozen copy of the SFT adapter on the same backbone",
        "Fixes it on one backbone (TRL's GRPOTrainer 'ref' adapter); the pitfall's control.",
        _adapter_ref_adapter, dict(color="#2ca02c", linestyle=":", linewidth=2.5, marker="^", alpha=1.0)),
    "stacked": Arm(
        "base + frozen SFT adapter + new trainable LoRA", "the SFT adapter alone",
        "No merge, one backbone, SFT weights untouched: the new LoRA learns only the RL change.",
        _stacked, dict(color="#9467bd", linestyle="-.", linewidth=1.5, marker="x", alpha=1.0), claim=False),
    "base+disabled": Arm(
        "base + new LoRA (no SFT)", "adapters disabled = base",
        "RL straight from the base: does SFT first make RL converge faster?",
        _base_disabled, dict(color="#7f7f7f", linestyle="-", linewidth=2.5, marker="s", alpha=0.9)),
}


def arm_table() -> pd.DataFrame:
    return pd.DataFrame([{"arm": n, "policy": a.policy, "reference": a.reference, "backbones": a.backbones,
                          "claim": a.claim, "why": a.why} for n, a in ARMS.items()]).set_index("arm")


@dataclass
class ArmModels:
    name: str
    policy: PeftModel
    value_head: ValueHead
    reference: Reference
    holds: list  # every module the arm itself keeps in memory (for model_bytes)


def _train_only(policy: PeftModel, adapter_names: list[str]) -> None:
    """Exactly the LoRA weights of `adapter_names` train; every other weight is frozen."""
    for name, param in policy.named_parameters():
        param.requires_grad_(any(f".{a}." in name for a in adapter_names) and "lora_" in name)


def _check_arms(arms) -> list[str]:
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"Unknown arm(s) {unknown}; valid arms: {', '.join(ARMS)}")
    return list(arms)


def build_arm(name: str, profile: Profile, sft_adapter: str | Path, merged_dir: str | Path,
              quantize: str | None = None, seed: int = 0) -> ArmModels:
    """Load the models of one arm (from the 01 adapter and the 02 merged model) and its reference."""
    _check_arms([name])
    built = ARMS[name].build(Sources(profile, Path(sft_adapter), Path(merged_dir), quantize), seed)
    _train_only(built.policy, built.trained)
    torch.manual_seed(seed)
    value_head = ValueHead(built.policy.get_base_model().config.hidden_size).to(built.policy.device)
    return ArmModels(name, built.policy, value_head, built.reference, [built.policy, value_head, *built.extra])


def yardsticks(profile: Profile, merged_dir: str | Path, quantize: str | None = None) -> dict[str, Reference]:
    """Fixed frozen models every arm is measured against: the SFT model (merged) and the base."""
    return {"sft": FrozenModel(load_model(profile, merged_dir, quantize=quantize)),
            "base": FrozenModel(load_model(profile, quantize=quantize))}


def profile_quantization(profile: Profile) -> str | None:
    return "8bit" if profile.load_in_8bit else None


# --- the plan: which runs, how many seeds and steps -----------------------------------------------------

PENALTY_ARMS = ("adapter+disabled", "adapter+ref-adapter")


@dataclass
class Plan:
    arms: list[str]
    seeds: list[int]  # every claim arm runs each of them
    side_seeds: list[int]  # the other arms (copies, stacked): a prefix of `seeds`, so still paired
    steps: int
    side_steps: int
    eval_every: int
    penalty_steps: int  # the penalty alone (reward off) for PENALTY_ARMS; 0 skips it
    penalty_eval_every: int = 1

    def runs(self) -> list[tuple[str, str, int, int]]:
        """(study, arm, seed, steps) for every run, in the order they are run."""
        runs = [("main", arm, seed, self.steps if ARMS[arm].claim else self.side_steps)
                for arm in self.arms for seed in (self.seeds if ARMS[arm].claim else self.side_seeds)]
        if self.penalty_steps:
            runs += [("penalty", arm, seed, self.penalty_steps)
                     for arm in PENALTY_ARMS if arm in self.arms for seed in self.seeds]
        return runs


def plan_from_profile(profile: Profile, arms: list[str] | None = None, seed: int = 0, seeds: int | None = None,
                      steps: int | None = None, penalty_steps: int | None = None) -> Plan:
    """The profile's comparison: `seeds` seeds starting at `seed` (0, 1, 2 ... for seed=0)."""
    n = seeds or profile.comparison_seeds
    steps = steps or profile.comparison_steps
    all_seeds = [seed + i for i in range(n)]
    return Plan(arms=_check_arms(list(ARMS) if arms is None else arms), seeds=all_seeds,
                side_seeds=all_seeds[: min(n, profile.comparison_side_seeds)],
                steps=steps, side_steps=min(steps, profile.comparison_side_steps or steps),
                eval_every=profile.comparison_eval_every,
                penalty_steps=profile.penalty_steps if penalty_steps is None else penalty_steps,
                penalty_eval_every=profile.penalty_eval_every)


def comparison_configs(profile: Profile, plan: Plan) -> dict[str, PPOConfig]:
    """The PPO settings of each study, the same for every arm: the reward-on runs ("main") take 04's own
    batch where the profile gives one (cheaper steps, as many optimizer updates); the penalty alone keeps
    03's batch: with no reward its only signal is the KL penalty, and the critic's noise drowns it in
    small minibatches (smol, 3 seeds: 8 rollouts in minibatches of 4 left its pull inconclusive)."""
    return {"main": config_from_profile(profile, steps=plan.steps, batch_size=profile.comparison_batch_size,
                                        mini_batch_size=profile.comparison_mini_batch_size),
            "penalty": config_from_profile(profile, steps=plan.penalty_steps)}


def seed_queries(queries: list[list[int]], seed: int) -> list[list[int]]:
    """Seed k's order of the training prompts: the same for every arm (paired), different across seeds."""
    return [queries[i] for i in np.random.default_rng(seed).permutation(len(queries))]


def no_reward(texts: list[str]) -> torch.Tensor:
    """The reward switched off: PPO then optimises only the KL penalty."""
    return torch.zeros(len(texts))


# --- resume: a fingerprint of everything that decides a run's numbers --------------------------------------

RUN_FILES = ("metrics.csv", "evaluation.csv", "samples.csv", "summary.json", "fingerprint.json")


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


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


def _run_state(folder: Path, fingerprint: dict) -> str | None:
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


class RssPeak:
    """Peak resident memory above its level at entry, sampled every 20 ms by a background thread."""

    def __enter__(self):
        import psutil

        gc.collect()
        try:  # hand freed heap back to the OS, so a previous arm's freed pages do not hide this arm's growth
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self._stop, self._paused = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.02):
            if not self._paused.is_set():
                self.peak = max(self.peak, self._process.memory_info().rss)

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


class _Unmeasured:
    """An evaluator (with its yardsticks) whose calls the arm's RSS peak leaves out."""

    def __init__(self, inner, rss: RssPeak):
        self.inner, self.rss = inner, rss

    def __call__(self, *args, **kwargs):
        return self.rss.unmeasured(self.inner)(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def run_one(name: str, seed: int, steps: int, sources: Sources, tokenizer, queries, reward_fn, config: PPOConfig,
            sticks: dict, eval_settings: dict, progress: bool = True) -> dict:
    """One arm, one seed: PPO with evaluations; returns its tables and a one-row summary."""
    config = replace(config, steps=steps, seed=seed)
    cuda_baseline = 0  # the yardsticks already on the GPU: not the arm's memory
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        cuda_baseline = torch.cuda.memory_allocated()
    start = time.perf_counter()
    arm = build_arm(name, sources.profile, sources.sft_adapter, sources.merged_dir, sources.quantize, seed)
    evaluator = Evaluator(tokenizer, reward_fn=eval_settings["reward_fn"], seed=seed, yardsticks=sticks,
                          **{k: v for k, v in eval_settings.items() if k != "reward_fn"})
    with RssPeak() as rss:
        metrics = train(arm.policy, arm.value_head, arm.reference, tokenizer, seed_queries(queries, seed), reward_fn,
                        config, evaluator=_Unmeasured(evaluator, rss), progress=progress)
    timed = metrics["step_time_s"].iloc[1:] if len(metrics) > 1 else metrics["step_time_s"]  # no warm-up step
    summary = {
        "arm": name, "seed": seed, "steps": steps, "backbones": ARMS[name].backbones,
        "model_bytes": model_bytes(*arm.holds),
        "rss_growth_bytes": rss.growth,
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() - cuda_baseline if torch.cuda.is_available() else 0,
        "trainable_params": sum(p.numel() for p in trainable_parameters(arm.policy, arm.value_head)),
        "step_time_median_s": timed.median(), "step_time_min_s": timed.min(), "step_time_max_s": timed.max(),
        "total_time_s": time.perf_counter() - start,
    }
    del arm
    gc.collect()
    return {"metrics": metrics, "evaluation": evaluator.table(), "samples": evaluator.samples(), "summary": summary}


@dataclass
class Results:
    """Every run of a comparison, each table with `study`, `arm` and `seed` columns."""

    metrics: pd.DataFrame  # one row per training step
    evaluation: pd.DataFrame  # one row per evaluation on the held-out prompts
    samples: pd.DataFrame  # held-out responses and rewards at each evaluation
    runs: pd.DataFrame  # one row per run: memory, time

    def study(self, name: str) -> "Results":
        return Results(*(t[t["study"] == name].drop(columns="study") if len(t) else t
                         for t in (self.metrics, self.evaluation, self.samples, self.runs)))

    def summary(self) -> pd.DataFrame:
        """One row per arm of the main study: memory, and step time as median with its min-max spread."""
        runs = self.study("main").runs
        return runs.groupby("arm", sort=False).agg(
            seeds=("seed", "count"), backbones=("backbones", "first"), model_bytes=("model_bytes", "max"),
            rss_growth_bytes=("rss_growth_bytes", "median"), peak_cuda_bytes=("peak_cuda_bytes", "max"),
            trainable_params=("trainable_params", "first"), step_time_s=("step_time_median_s", "median"),
            step_time_min_s=("step_time_min_s", "min"), step_time_max_s=("step_time_max_s", "max"),
        ).reset_index()


def run_comparison(profile: Profile, out: str | Path, tokenizer, queries, eval_queries, reward_fn,
                   config: PPOConfig | dict[str, PPOConfig], plan: Plan, perplexity_texts: list[str] | None = None,
                   reward_name: str | None = None, force: bool = False, progress: bool = True) -> Results:
    """Run every (study, arm, seed) of `plan`; each lands in `04_comparison/runs/<study>/<arm>/seed<k>/` in
    one atomic step, and the combined tables (metrics.csv, evaluation.csv, samples.csv, runs.csv,
    summary.csv) are rewritten after each. `config`: one PPOConfig for every study, or one per study
    (`comparison_configs`); its steps are the plan's.

    A run is skipped when its folder is complete and was made with the same fingerprint (PPO settings,
    reward, prompts, evaluation, quantization, and the content of the 01 adapter and 02 model); otherwise
    it runs, and says why.
    """
    _check_arms(plan.arms)
    sft_adapter = require(stage_dir(out, profile.name, "01_sft") / "adapter", "01_sft", profile.name)
    merged_dir = require(stage_dir(out, profile.name, "02_merge") / "model", "02_merge", profile.name)
    folder = stage_dir(out, profile.name, "04_comparison")
    sources = Sources(profile, sft_adapter, merged_dir, profile_quantization(profile))
    configs = config if isinstance(config, dict) else {"main": config, "penalty": config}
    eval_settings = dict(queries=eval_queries, response_len=configs["main"].response_len,
                         perplexity_texts=perplexity_texts, perplexity_seq_len=profile.sft_seq_len)
    common = {
        "profile": profile.name, "quantization": sources.quantize,
        "train_prompts": content_hash(queries),
        "eval_prompts": content_hash(eval_queries, perplexity_texts, profile.sft_seq_len),
        "sft_adapter": content_hash(sft_adapter), "merged_model": content_hash(merged_dir),
    }
    sticks, tables = None, {k: [] for k in ("metrics", "evaluation", "samples", "runs")}
    for study, name, seed, steps in plan.runs():
        run_dir = folder / "runs" / study / name / f"seed{seed}"
        every = plan.penalty_eval_every if study == "penalty" else plan.eval_every
        ppo = {k: v for k, v in asdict(configs[study]).items() if k not in ("seed", "steps")}
        fingerprint = {**common, "ppo": ppo, "study": study, "arm": name, "seed": seed, "steps": steps,
                       "eval_every": every,
                       "reward": "off" if study == "penalty" else reward_name or profile.reward,
                       "eval_reward": reward_name or profile.reward}
        why = "force=True" if force else _run_state(run_dir, fingerprint)
        if why is None:
            print(f"{study}/{name}/seed{seed}: results exist with the same settings, skipped")
        else:
            print(f"{study}/{name}/seed{seed}: running ({why})", flush=True)
            sticks = sticks or yardsticks(profile, merged_dir, sources.quantize)
            result = run_one(name, seed, steps, sources, tokenizer, queries,
                             no_reward if study == "penalty" else reward_fn, configs[study], sticks,
                             {**eval_settings, "reward_fn": reward_fn, "every": every}, progress)
            with atomic_dir(run_dir) as tmp:  # the run counts as done only once every file has landed
                for key in ("metrics", "evaluation", "samples"):
                    write_csv(tmp / f"{key}.csv", result[key])
                write_json(tmp / "summary.json", result["summary"])
                write_json(tmp / "fingerprint.json", fingerprint)
            print(f"   done in {result['summary']['total_time_s']:.0f} s", flush=True)
        for key in ("metrics", "evaluation", "samples"):
            tables[key].append(pd.read_csv(run_dir / f"{key}.csv").assign(study=study, arm=name, seed=seed))
        tables["runs"].append(pd.DataFrame([{**read_json(run_dir / "summary.json"), "study": study}]))
        results = Results(*(_ordered(pd.concat(tables[k], ignore_index=True))
                            for k in ("metrics", "evaluation", "samples", "runs")))
        for key in ("metrics", "evaluation", "samples", "runs"):
            write_csv(folder / f"{key}.csv", getattr(results, key))
        write_csv(folder / "summary.csv", results.summary())
    return results


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Columns study, arm, seed first; rows in registry order."""
    first = ["study", "arm", "seed"]
    table = table[first + [c for c in table.columns if c not in first]]
    order = {a: i for i, a in enumerate(ARMS)}
    keys = ["study", "arm", "seed"] + (["step"] if "step" in table else [])
    table = table.sort_values(keys, key=lambda c: c.map(order) if c.name == "arm" else c, kind="stable")
    return table.reset_index(drop=True)


# --- verdicts from paired seeds --------------------------------------------------------------------------


def seeds_needed(values, cap: int = 10_000) -> int | None:
    """Smallest number of seeds whose 95% interval, at the measured mean and spread, would exclude zero.
    None where the measured mean is zero or fewer than 2 seeds ran; `cap` means "more than cap"."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if len(x) < 2 or np.mean(x) == 0:
        return None
    ratio = float(np.std(x, ddof=1)) / abs(float(np.mean(x)))
    for m in range(2, cap):
        if stats.t.ppf(0.975, m - 1) * ratio / math.sqrt(m) < 1:
            return m
    return cap


def verdict(diffs, expected: str, tolerance: float = 0.0, grows_with_steps: bool = False, target: float = 0.0) -> dict:
    """The verdict on per-seed differences (arm minus control).

    expected ">0" / "<0": "as expected" if the 95% interval lies on that side of zero, "differs" if it
    lies on the other side, else "inconclusive" with the seeds (or, for an effect that accumulates over
    training, the factor on steps) that would settle it at the measured spread. expected "=": an
    equality claim, "as expected" if every per-seed value is within `tolerance` of `target` (exact
    equality, or a ratio fixed by construction, has no seed-to-seed spread to put an interval on).
    """
    mean, low, high, n = t_interval(diffs)
    row = {"effect": mean, "ci_low": low, "ci_high": high, "n_seeds": n, "to_settle": ""}
    if expected == "=":
        x = np.asarray(diffs, dtype=float)
        if not n:
            return {**row, "verdict": "inconclusive", "to_settle": "no paired seeds"}
        worst = float(x[np.argmax(np.abs(x - target))])
        row.update(effect=worst, verdict="as expected" if abs(worst - target) <= tolerance else "differs",
                   to_settle=f"every one of {n} paired seed(s) within {tolerance:g} of {target:g}")
        return row
    if expected not in (">0", "<0"):
        raise ValueError(f"expected must be '>0', '<0' or '=', not {expected!r}")
    sign = 1 if expected == ">0" else -1
    if n >= 2 and sign * low > 0 and sign * high > 0:
        row["verdict"] = "as expected"
    elif n >= 2 and sign * low < 0 and sign * high < 0:
        row["verdict"] = "differs"
    else:
        row["verdict"] = "inconclusive"
        m = seeds_needed(diffs)
        if m is None:
            row["to_settle"] = "needs at least 2 seeds" if n < 2 else "no effect measured"
        else:
            row["to_settle"] = f"≈ {m}{'+' if m >= 10_000 else ''} seeds"
            if grows_with_steps:
                row["to_settle"] += f", or ≈ {m / n:.1f}× the steps with {n} seeds (if the effect grows linearly)"
    return row


# the claims of the thread, each against the arm that differs from it in one thing only
@dataclass(frozen=True)
class Claim:
    claim: str
    arm: str
    control: str
    measure: str  # a key of MEASURES
    expected: str  # sign of (arm - control): ">0", "<0", or "=" (equal to `target`)
    study: str = "main"
    tolerance: float = 0.0  # "=" claims: every per-seed value within tolerance of `target`
    target: float = 0.0
    combine: str = "difference"  # per seed: arm - control, or arm / control ("ratio")


def _eval_at(results: Results, arm: str, column: str, where: str) -> pd.Series:
    e = results.evaluation[results.evaluation["arm"] == arm]
    if not len(e):
        return pd.Series(dtype=float)
    steps = e.groupby("seed")["step"].transform("min" if where == "first" else "max")
    return e[e["step"] == steps].set_index("seed")[column]


def _curve_difference(results: Results, arm: str, control: str) -> pd.Series:
    """Per seed: the largest |difference| in any reward, KL or loss column at the steps both ran."""
    out = {}
    for table in (results.metrics, results.evaluation):
        cols = [c for c in table.columns if c.startswith(("reward", "kl_", "policy_loss", "value_loss", "perplexity"))]
        a = table[table["arm"] == arm].set_index(["seed", "step"])[cols]
        b = table[table["arm"] == control].set_index(["seed", "step"])[cols]
        both = a.index.intersection(b.index)
        for seed, diff in (a.loc[both] - b.loc[both]).abs().groupby(level="seed"):
            out[seed] = max(out.get(seed, 0.0), float(diff.max().max()))
    return pd.Series(out, dtype=float)


MEASURES: dict[str, tuple[str, Callable[[Results, str], pd.Series]]] = {
    "kl_ref_start": ("held-out KL to its reference at step 0 (nats/token)",
                     lambda r, a: _eval_at(r, a, "kl_ref_exact", "first")),
    "kl_base_change": ("change in held-out KL to the base, end minus step 0 (nats/token)",
                       lambda r, a: _eval_at(r, a, "kl_base_exact", "last") - _eval_at(r, a, "kl_base_exact", "first")),
    "kl_sft_end": ("held-out KL to the SFT model at the end (nats/token)",
                   lambda r, a: _eval_at(r, a, "kl_sft_exact", "last")),
    "perplexity_end": ("held-out IMDB perplexity at the end",
                       lambda r, a: _eval_at(r, a, "perplexity", "last")),
    "reward_end": ("held-out reward at the end", lambda r, a: _eval_at(r, a, "reward_mean", "last")),
    "step_time": ("seconds per PPO step (median, warm-up excluded)",
                  lambda r, a: r.runs[r.runs["arm"] == a].set_index("seed")["step_time_median_s"]),
    "model_bytes": ("MiB of weights held",
                    lambda r, a: r.runs[r.runs["arm"] == a].set_index("seed")["model_bytes"] / 2**20),
}

CLAIMS = [
    Claim("the pitfall: KL to the reference starts at KL(SFT‖base) > 0", "adapter+disabled", "adapter+ref-adapter",
          "kl_ref_start", ">0"),
    Claim("the pitfall pulls the policy towards the base", "adapter+disabled", "adapter+ref-adapter",
          "kl_base_change", "<0"),
    Claim("the pitfall drifts further from the SFT model", "adapter+disabled", "adapter+ref-adapter",
          "kl_sft_end", ">0"),
    Claim("the pitfall raises held-out IMDB perplexity", "adapter+disabled", "adapter+ref-adapter",
          "perplexity_end", ">0"),
    Claim("the penalty alone pulls the pitfall towards the base", "adapter+disabled", "adapter+ref-adapter",
          "kl_base_change", "<0", study="penalty"),
    Claim("the penalty alone raises the pitfall's perplexity", "adapter+disabled", "adapter+ref-adapter",
          "perplexity_end", ">0", study="penalty"),
    Claim("SFT first ends with a higher held-out reward than RL from the base", "merged+disabled", "base+disabled",
          "reward_end", ">0"),
    Claim("after merging, an explicit reference equals None", "merged+copy", "merged+disabled",
          "curves", "=", tolerance=1e-4),
    Claim("an explicit copy holds twice the weights", "merged+copy", "merged+disabled", "model_bytes", "=",
          tolerance=0.2, target=2.0, combine="ratio"),
    Claim("keeping the SFT adapter unmerged is slower per step", "adapter+ref-adapter", "merged+disabled",
          "step_time", ">0"),
]

FINDING_COLUMNS = ["claim", "study", "arm", "control", "measure", "expected", "effect", "ci_low", "ci_high",
                   "n_seeds", "verdict", "to_settle"]
GROWS_WITH_STEPS = {"kl_base_change", "kl_sft_end", "perplexity_end", "reward_end"}


def findings(results: Results, claims: list[Claim] = CLAIMS) -> pd.DataFrame:
    """One row per claim whose arm and control both ran: the control, the effect (arm minus control, per
    paired seed), its 95% interval, the number of seeds and the verdict."""
    rows = []
    for c in claims:
        r = results.study(c.study)
        if not len(r.runs) or not {c.arm, c.control} <= set(r.runs["arm"]):
            continue
        if c.measure == "curves":
            unit, diffs = "largest |difference| in any curve", _curve_difference(r, c.arm, c.control)
        else:
            unit, measure = MEASURES[c.measure]
            a, b = measure(r, c.arm), measure(r, c.control)
            diffs = (a / b if c.combine == "ratio" else a - b).dropna()  # paired by seed
            unit = f"{unit}, arm / control" if c.combine == "ratio" else unit
        rows.append({"claim": c.claim, "study": c.study, "arm": c.arm, "control": c.control, "measure": unit,
                     "expected": c.expected,
                     **verdict(diffs.to_numpy(), c.expected, c.tolerance, c.measure in GROWS_WITH_STEPS, c.target)})
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)
