"""Notebook 04: every reference-model choice, run with the same seed, prompts, reward, steps and
hyperparameters, measured on one table.

An *arm* is (what the policy is, what the reference is). Each step also measures, on the same rollouts,
KL to two fixed frozen yardsticks, the SFT model (`kl_sft`) and the base model (`kl_base`), so arms with
different references compare on one axis. Yardsticks are held outside the arm and kept out of its
memory figure.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from peft import PeftModel

from .artifacts import read_json, require, stage_dir, write_csv, write_json
from .merge import load_adapter
from .models import PPO_ADAPTER, load_model, model_bytes, new_lora, ppo_lora_config
from .ppo import PPOConfig, ValueHead, sample_and_score, train, trainable_parameters
from .profiles import Profile
from .reference import DisabledAdapters, FrozenAdapter, FrozenModel, Reference


@dataclass(frozen=True)
class ArmSpec:
    policy: str
    reference: str
    backbones: int
    why: str


ARMS: dict[str, ArmSpec] = {
    "merged+disabled": ArmSpec(
        "merged SFT model + new LoRA", "same network, adapters disabled", 1,
        "The original recipe: the reference is the SFT model for free, one backbone in memory."),
    "merged+copy": ArmSpec(
        "merged SFT model + new LoRA", "a second frozen copy of the merged model", 2,
        "What an explicit ref_model does: the same numbers as merged+disabled at twice the memory."),
    "adapter+disabled": ArmSpec(
        "base + SFT adapter, trained further", "adapters disabled = the raw base model", 1,
        "The pitfall: skipping the merge silently makes the reference the base model."),
    "adapter+copy": ArmSpec(
        "base + SFT adapter, trained further", "a second frozen model: base + SFT adapter", 2,
        "Fixes the pitfall without merging, at the price of a second backbone."),
    "adapter+ref-adapter": ArmSpec(
        "base + SFT adapter, trained further", "a frozen copy of the SFT adapter on the same backbone", 1,
        "Fixes it on one backbone: what TRL's GRPOTrainer does with a 'ref' adapter."),
    "stacked": ArmSpec(
        "base + frozen SFT adapter + new trainable LoRA", "the SFT adapter alone", 1,
        "No merge, one backbone, SFT weights untouched: the new LoRA learns only the RL change."),
    "base+disabled": ArmSpec(
        "base + new LoRA (no SFT)", "adapters disabled = base", 1,
        "RL straight from the base: does SFT first make RL converge faster?"),
}



@dataclass
class Arm:
    name: str
    policy: PeftModel
    value_head: ValueHead
    reference: Reference
    holds: list  # every module the arm itself keeps in memory (for model_bytes)


def _train_only(policy: PeftModel, adapter_names: list[str]) -> None:
    """Exactly the LoRA weights of `adapter_names` train; every other weight is frozen."""
    for name, param in policy.named_parameters():
        param.requires_grad_(any(f".{a}." in name for a in adapter_names) and "lora_" in name)


def build_arm(name: str, profile: Profile, sft_adapter: str | Path, merged_dir: str | Path,
              quantize: str | None = None, seed: int = 0) -> Arm:
    """Load the models of one arm (from the 01 adapter and the 02 merged model) and its reference."""
    if name not in ARMS:
        raise ValueError(f"Unknown arm {name!r}; valid arms: {', '.join(ARMS)}")

    def base():
        return load_model(profile, quantize=quantize)

    def merged():
        return load_model(profile, merged_dir, quantize=quantize)

    holds = []
    if name in ("merged+disabled", "merged+copy", "base+disabled"):
        policy = new_lora(base() if name == "base+disabled" else merged(), profile, seed)
        trained = [PPO_ADAPTER]
        if name == "merged+copy":
            reference = FrozenModel(merged())
            holds.append(reference.model)
        else:
            reference = DisabledAdapters(policy)
    elif name.startswith("adapter+"):
        policy = load_adapter(base(), sft_adapter, profile, adapter_name="sft", trainable=True)
        trained = ["sft"]
        if name == "adapter+disabled":
            reference = DisabledAdapters(policy)
        elif name == "adapter+copy":
            reference = FrozenModel(load_adapter(base(), sft_adapter, profile))
            holds.append(reference.model)
        else:  # adapter+ref-adapter
            policy.load_adapter(sft_adapter, adapter_name="ref", is_trainable=False)
            reference = FrozenAdapter(policy, "ref")
    else:  # stacked
        policy = load_adapter(base(), sft_adapter, profile, adapter_name="sft")
        torch.manual_seed(seed)
        policy.add_adapter(PPO_ADAPTER, ppo_lora_config(profile, policy.get_base_model()))
        policy.base_model.set_adapter(["sft", PPO_ADAPTER])  # both on for the policy
        trained = [PPO_ADAPTER]
        reference = FrozenAdapter(policy, "sft")
    _train_only(policy, trained)
    torch.manual_seed(seed)
    value_head = ValueHead(policy.get_base_model().config.hidden_size).to(policy.device)
    return Arm(name, policy, value_head, reference, [policy, value_head, *holds])


def _replace_arm(table: pd.DataFrame, arm: str, rows: pd.DataFrame) -> pd.DataFrame:
    kept = table[table["arm"] != arm] if len(table) else table
    return pd.concat([kept, rows], ignore_index=True)


def yardsticks(profile: Profile, merged_dir: str | Path) -> dict[str, Reference]:
    """Fixed frozen models every arm is measured against: the SFT model (merged) and the base."""
    return {"sft": FrozenModel(load_model(profile, merged_dir)), "base": FrozenModel(load_model(profile))}


def run_comparison(profile: Profile, out: str | Path, tokenizer, queries, reward_fn, config: PPOConfig,
                   eval_queries=None, arms: list[str] | None = None, force: bool = False,
                   quantize: str | None = None, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run PPO once per arm with identical settings; write metrics.csv, summary.csv (and, given
    `eval_queries`, samples.csv: each arm's responses to them before and after training) after each arm.

    An arm already in metrics and summary is skipped unless `force`, so an interrupted run resumes where
    it stopped. Returns (metrics: one row per arm and step, summary: one row per arm).
    """
    arms = list(ARMS) if arms is None else list(arms)
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"Unknown arm(s) {unknown}; valid arms: {', '.join(ARMS)}")
    sft_adapter = require(stage_dir(out, profile.name, "01_sft") / "adapter", "01_sft", profile.name)
    merged_dir = require(stage_dir(out, profile.name, "02_merge") / "model", "02_merge", profile.name)
    folder = stage_dir(out, profile.name, "04_comparison")
    metrics_file, summary_file, samples_file = (folder / f for f in ("metrics.csv", "summary.csv", "samples.csv"))
    metrics = pd.read_csv(metrics_file) if metrics_file.exists() else pd.DataFrame()
    summary = pd.read_csv(summary_file) if summary_file.exists() else pd.DataFrame()
    samples = pd.read_csv(samples_file) if samples_file.exists() else pd.DataFrame()
    done = set(summary["arm"]) & set(metrics["arm"]) if len(summary) and len(metrics) else set()
    settings = {"steps": config.steps, "batch_size": config.batch_size, "seed": config.seed, "profile": profile.name}
    settings_file = folder / "settings.json"
    if done and settings_file.exists() and read_json(settings_file) != settings:
        done = set()  # results from other settings are not comparable: start over
        metrics, summary, samples = pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    write_json(settings_file, settings)
    sticks = None
    for name in arms:
        if name in done and not force:
            print(f"{name}: results exist, skipped (force=True to re-run)")
            continue
        sticks = sticks or yardsticks(profile, merged_dir)
        cuda_baseline = 0  # the yardsticks already on the GPU: not the arm's memory
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            cuda_baseline = torch.cuda.memory_allocated()
        start = time.perf_counter()
        arm = build_arm(name, profile, sft_adapter, merged_dir, quantize=quantize, seed=config.seed)
        def held_out_samples():  # the same prompts and seed before and after training
            return sample_and_score(arm.policy, tokenizer, eval_queries, reward_fn, config.response_len, config.seed)

        if eval_queries is not None:
            before = held_out_samples()
        rows = train(arm.policy, arm.value_head, arm.reference, tokenizer, queries, reward_fn, config,
                     yardsticks=sticks, progress=progress)
        rows.insert(0, "arm", name)
        arm_summary = {
            "arm": name,
            "backbones": ARMS[name].backbones,
            "model_bytes": model_bytes(*arm.holds),
            "trainable_params": sum(p.numel() for p in trainable_parameters(arm.policy, arm.value_head)),
            "peak_cuda_bytes": torch.cuda.max_memory_allocated() - cuda_baseline if torch.cuda.is_available() else 0,
            "step_time_s": rows["step_time_s"].mean(),
            "total_time_s": time.perf_counter() - start,
        }
        metrics = _replace_arm(metrics, name, rows)
        summary = _replace_arm(summary, name, pd.DataFrame([arm_summary]))
        if eval_queries is not None:
            both = pd.concat([before.assign(when="before"), held_out_samples().assign(when="after")],
                             ignore_index=True)
            samples = _replace_arm(samples, name, both.assign(arm=name))
            write_csv(samples_file, samples)
        write_csv(metrics_file, metrics)
        write_csv(summary_file, summary)
        del arm
        gc.collect()
    order = {a: i for i, a in enumerate(ARMS)}
    metrics = metrics[metrics["arm"].isin(arms)].sort_values(["arm", "step"], key=lambda c: c.map(order) if c.name == "arm" else c)
    summary = summary[summary["arm"].isin(arms)].sort_values("arm", key=lambda c: c.map(order))
    return metrics.reset_index(drop=True), summary.reset_index(drop=True)


def findings(metrics: pd.DataFrame, summary: pd.DataFrame, samples: pd.DataFrame | None = None,
             atol: float = 1e-4) -> pd.DataFrame:
    """The notebook's conclusions, computed from the run: one row per finding with the measured value,
    what the discussion expected, and whether the run agrees. Reward gains are measured on `samples`
    (the same held-out prompts and seed before and after training), not on the training batches, whose
    prompts change every step."""
    rows = []

    def add(finding, measured, expected, agrees):
        rows.append({"finding": finding, "measured": measured, "expected": expected,
                     "as_expected": None if agrees is None else bool(agrees)})

    arms = list(dict.fromkeys(metrics["arm"]))
    first = metrics[metrics["step"] == 0].set_index("arm")
    last = metrics.loc[metrics.groupby("arm")["step"].idxmax()].set_index("arm")
    for arm in arms:
        kl0 = first.loc[arm, "kl_ref_exact"]
        expect_zero = arm != "adapter+disabled"
        add(f"{arm}: KL to its reference at step 0", f"{kl0:.4g} nats/token",
            "0 (policy starts as its reference)" if expect_zero else "> 0: KL(SFT ‖ base)",
            abs(kl0) <= atol if expect_zero else kl0 > atol)
    if {"merged+disabled", "merged+copy"} <= set(arms):
        a = metrics[metrics["arm"] == "merged+disabled"].set_index("step").select_dtypes("number")
        b = metrics[metrics["arm"] == "merged+copy"].set_index("step").select_dtypes("number")
        cols = [c for c in a.columns if c.startswith(("reward", "kl_", "policy_loss", "value_loss"))]
        diff = (a[cols] - b[cols]).abs().max().max()
        add("merged+disabled vs merged+copy: largest difference in any reward/KL/loss curve", f"{diff:.2g}",
            "≈ 0: an explicit reference equals ref_model=None after merging", diff <= 1e-4)
    by_arm = summary.set_index("arm")
    for two, one in [("merged+copy", "merged+disabled"), ("adapter+copy", "adapter+disabled")]:
        if two in by_arm.index and one in by_arm.index:
            ratio = by_arm.loc[two, "model_bytes"] / by_arm.loc[one, "model_bytes"]
            add(f"memory of {two} / {one}", f"{ratio:.2f}×", "≈ 2× (a second backbone)", 1.8 <= ratio <= 2.2)
    held_out = None
    if samples is not None and len(samples):
        held_out = samples.pivot_table(index="arm", columns="when", values="reward", aggfunc="mean")
        for arm in arms:
            before, after = held_out.loc[arm, "before"], held_out.loc[arm, "after"]
            add(f"{arm}: held-out reward before → after PPO", f"{before:.3f} → {after:.3f} ({after - before:+.3f})",
                "> 0 gained (PPO improves the reward)", after > before)
    if {"adapter+disabled", "merged+disabled"} <= set(arms):
        pit, ok = last.loc["adapter+disabled", "kl_sft_exact"], last.loc["merged+disabled", "kl_sft_exact"]
        add("drift from the SFT model at the last step: adapter+disabled vs merged+disabled",
            f"{pit:.4g} vs {ok:.4g} nats/token",
            "adapter+disabled drifts further: its penalty pulls towards the base model", pit > ok)
        base_pull = first.loc["adapter+disabled", "kl_base_exact"] - last.loc["adapter+disabled", "kl_base_exact"]
        add("adapter+disabled: KL to the base model, step 0 minus last step", f"{base_pull:+.4g} nats/token",
            "> 0: the policy is pulled back towards the base", base_pull > 0)
    for arm in arms:
        add(f"{arm}: KL to the SFT model at the last step", f"{last.loc[arm, 'kl_sft_exact']:.4g} nats/token",
            "small where the reference is the SFT model", None)
    if held_out is not None and {"base+disabled", "merged+disabled"} <= set(arms):
        sft_first, from_base = held_out.loc["merged+disabled", "after"], held_out.loc["base+disabled", "after"]
        add("held-out reward after PPO: SFT first (merged+disabled) vs RL from the base (base+disabled)",
            f"{sft_first:.3f} vs {from_base:.3f}", "SFT first ends higher (it starts in the domain)",
            sft_first > from_base)
    return pd.DataFrame(rows)
