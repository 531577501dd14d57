"""The arms of the reference-model comparison: one registry, one entry per arm.

An *arm* is (what the policy is, what the reference is). Its builder is three lines that load the models
from the 01 SFT adapter and the 02 merged model (or the base) and pick the reference strategy
(helpers.reference); everything else about a run is the same for every arm. Adding an arm is one entry in
`ARMS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from peft import PeftModel

from ..display import Columns, sources
from ..merge import load_adapter
from ..models import PPO_ADAPTER, load_model, new_lora, ppo_lora_config
from ..profiles import Profile
from ..reference import DisabledAdapters, FrozenAdapter, FrozenModel, Reference


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
    reference: Reference
    holds: list  # every module the arm itself keeps in memory (for model_bytes); a trainer adds its own


def _train_only(policy: PeftModel, adapter_names: list[str]) -> None:
    """Exactly the LoRA weights of `adapter_names` train; every other weight is frozen."""
    for name, param in policy.named_parameters():
        param.requires_grad_(any(f".{a}." in name for a in adapter_names) and "lora_" in name)


def check_arms(arms) -> list[str]:
    """`arms` as a list, or an error naming the valid ones."""
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise ValueError(f"Unknown arm(s) {unknown}; valid arms: {', '.join(ARMS)}")
    return list(arms)


def builder_sources(*names: str) -> Columns:
    """The few lines that build each arm, side by side: what notebook 04 compares, shown rather than described."""
    return sources(*(ARMS[n].build for n in check_arms(list(names))),
                   titles=[f"{n}: the reference is {ARMS[n].reference}" for n in names])


def build_arm(name: str, profile: Profile, sft_adapter: str | Path, merged_dir: str | Path,
              quantize: str | None = None, seed: int = 0) -> ArmModels:
    """Load the models of one arm (from the 01 adapter and the 02 merged model) and its reference. What a
    trainer adds (PPO's value head) is the trainer's: helpers.harness.trainers."""
    check_arms([name])
    built = ARMS[name].build(Sources(profile, Path(sft_adapter), Path(merged_dir), quantize), seed)
    _train_only(built.policy, built.trained)
    return ArmModels(name, built.policy, built.reference, [built.policy, *built.extra])


def build_from(name: str, sources: Sources, seed: int = 0) -> ArmModels:
    """`build_arm` from a Sources (what the harness's trainers take)."""
    return build_arm(name, sources.profile, sources.sft_adapter, sources.merged_dir, sources.quantize, seed)


def yardsticks(profile: Profile, merged_dir: str | Path, quantize: str | None = None) -> dict[str, Reference]:
    """Fixed frozen models every arm is measured against: the SFT model (merged) and the base. Each runs one
    token through at once: safetensors are memory-mapped, and a forward reads every weight page in, so the
    first arm measured in a process does not count the yardsticks' pages as its own memory."""
    sticks = {"sft": FrozenModel(load_model(profile, merged_dir, quantize=quantize)),
              "base": FrozenModel(load_model(profile, quantize=quantize))}
    with torch.no_grad():
        for stick in sticks.values():
            stick.model(input_ids=torch.zeros(1, 1, dtype=torch.long, device=stick.model.device))
    return sticks
