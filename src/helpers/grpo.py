"""GRPO on a LoRA with TRL's own `GRPOTrainer`: the ways a learner meets its reference, each built through TRL's code.

TRL 1.16 decides the reference from what it is handed (trl/trainer/grpo_trainer.py, `GRPOTrainer.__init__`):
  - a plain model plus `peft_config`: TRL wraps it in a new LoRA; the reference is that model with adapters
    disabled. Given the *merged* SFT model, that is the SFT model: the thread's recipe (`recipe` below).
  - a `PeftModel` that already carries a trained adapter (named "default"), with β != 0: TRL copies it into a
    frozen adapter "ref" and the reference is the SFT model again (`ref-copy`).
  - a `PeftModel` plus a new `peft_config`: a ValueError asking to merge and unload first.
  - at β = 0 TRL loads no reference at all (its default since v0.19).
At each step TRL computes the reference's log-probabilities under `use_adapter(model, "ref" if "ref" in
model.peft_config else None)`: without the "ref" adapter, that is the model with adapters disabled, which is
the raw base when the adapter being trained is the SFT adapter. Several frameworks remove TRL's copy or never
make one (the README's framework table); `pitfall` is that: the same `PeftModel`, "ref" deleted.

This module builds each arm, checks that something trains (a `PeftModel` loaded with `is_trainable=False`
trains nothing, silently), and runs TRL's trainer with the package's reward and held-out evaluations. It
re-implements nothing of GRPO: the loss, the group advantages and the KL are TRL's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
from datasets import Dataset
from peft import PeftModel
from transformers import PrinterCallback, TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import use_adapter

from .merge import load_adapter
from .models import load_model, ppo_lora_config
from .reference import Reference
from .settings import GRPOSettings

REF_ADAPTER = "ref"  # the name TRL gives its frozen copy of the trained adapter
TRAINED_ADAPTER = "default"  # the adapter TRL copies (it looks for ".default." in parameter names)


def grpo_config(settings: GRPOSettings, output_dir: str | Path = "unused") -> GRPOConfig:
    """TRL's config: one generation of prompts_per_step x group completions per optimizer step, no saving or
    logging services (offline), on the GPU where there is one."""
    return GRPOConfig(
        output_dir=str(output_dir), max_steps=settings.steps, learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.prompts_per_step * settings.group, gradient_accumulation_steps=1,
        num_generations=settings.group, max_completion_length=settings.response_len[1], beta=settings.beta,
        temperature=settings.temperature, seed=settings.seed, data_seed=settings.seed,
        use_cpu=not torch.cuda.is_available(), report_to="none", save_strategy="no", logging_steps=1,
        disable_tqdm=True, lr_scheduler_type="constant", warmup_steps=0,
        shuffle_dataset=False,  # the prompts' order is the caller's (the harness orders them by seed, as for PPO)
        gradient_checkpointing=False,  # TRL's default saves memory a 135M model does not need, at ~30% more compute
    )


class NothingToTrainError(ValueError):
    """The model handed to GRPO has no trainable parameter."""


def require_trainable(model) -> int:
    """The number of trainable parameters, or a clear error where there are none: a `PeftModel` loaded with
    `PeftModel.from_pretrained(..., is_trainable=False)` (peft's default) trains nothing, and TRL runs anyway."""
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if n == 0:
        raise NothingToTrainError(
            "The model has no trainable parameters, so GRPO would train nothing. Load the SFT adapter with "
            "PeftModel.from_pretrained(base, adapter_dir, is_trainable=True), or pass a plain model with a "
            "peft_config.")
    return n


# --- the arms: what the learner hands TRL ---------------------------------------------------------------------


@dataclass
class Handed:
    """What goes into GRPOTrainer(model=..., peft_config=...), and what to undo after TRL's set-up."""

    model: object
    peft_config: object | None = None
    drop_ref: bool = False  # delete TRL's "ref" copy after __init__ (what several frameworks do)


# an 8-bit profile trains on an 8-bit backbone here too (Profile.quantize), as its PPO arms do
def _recipe(profile, sft_adapter: Path, merged_dir: Path) -> Handed:
    merged = load_model(profile, merged_dir, quantize=profile.quantize)
    return Handed(merged, ppo_lora_config(profile, merged))


def _sft_trainable(profile, sft_adapter: Path) -> PeftModel:
    return load_adapter(load_model(profile, quantize=profile.quantize), sft_adapter, profile, TRAINED_ADAPTER,
                        trainable=True)


def _ref_copy(profile, sft_adapter: Path, merged_dir: Path) -> Handed:
    return Handed(_sft_trainable(profile, sft_adapter))


def _pitfall(profile, sft_adapter: Path, merged_dir: Path) -> Handed:
    return Handed(_sft_trainable(profile, sft_adapter), drop_ref=True)


@dataclass(frozen=True)
class GRPOArm:
    handed: str  # what the learner hands TRL
    reference: str  # what TRL then uses as the reference (β > 0)
    who: str  # who meets it this way
    build: Callable[..., Handed]
    ppo_twin: str  # the PPO arm (helpers.harness.arms) with the same policy and reference


GRPO_ARMS: dict[str, GRPOArm] = {
    "recipe": GRPOArm("merged SFT model + peft_config", "adapters disabled = the SFT model",
                      "the thread's recipe; TRL's error message asks for it", _recipe, "merged+disabled"),
    "ref-copy": GRPOArm("PeftModel with the SFT adapter (is_trainable=True)", "TRL's frozen 'ref' copy = the SFT model",
                        "TRL itself (grpo_trainer.py:478-506)", _ref_copy, "adapter+ref-adapter"),
    "pitfall": GRPOArm("the same PeftModel, 'ref' copy removed", "adapters disabled = the raw base",
                       "the default of several frameworks when an SFT adapter is continued", _pitfall,
                      "adapter+disabled"),
}


def check_grpo_arm(name: str) -> GRPOArm:
    if name not in GRPO_ARMS:
        raise ValueError(f"Unknown GRPO arm {name!r}; valid arms: {', '.join(GRPO_ARMS)}")
    return GRPO_ARMS[name]


class TRLReference(Reference):
    """The reference exactly as TRL's GRPOTrainer computes it: its own `use_adapter` with "ref" where TRL made
    that adapter, else None (adapters disabled)."""

    name = "TRL's reference"

    def __init__(self, model: PeftModel):
        self.model = model

    def active(self):
        return use_adapter(self.model, REF_ADAPTER if REF_ADAPTER in self.model.peft_config else None)


def reward_function(reward_fn) -> Callable:
    """The package's reward (texts -> tensor, scored on prompt + response as in PPO) in TRL's signature."""
    def sentiment(prompts, completions, **kwargs) -> list[float]:
        return reward_fn([p + c for p, c in zip(prompts, completions)]).float().tolist()
    return sentiment


def prompt_dataset(tokenizer, queries: list[list[int]]) -> Dataset:
    """IMDB openings (token ids, helpers.data.ppo_queries) as TRL's standard-format prompt column."""
    return Dataset.from_dict({"prompt": [tokenizer.decode(q, skip_special_tokens=True) for q in queries]})


class Evaluations(TrainerCallback):
    """Held-out evaluations (helpers.evaluation.Evaluator) before the first update and whenever due."""

    def __init__(self, evaluator, model: PeftModel, steps: int):
        self.evaluator, self.reference, self.steps = evaluator, TRLReference(model), steps

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.evaluator(0, model, self.reference)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step > 0 and self.evaluator.due(state.global_step, self.steps):
            self.evaluator(state.global_step, model, self.reference)
        model.train()


def grpo_trainer(arm: str, profile, sft_adapter: str | Path, merged_dir: str | Path, tokenizer, queries,
                 reward_fn, settings: GRPOSettings, callbacks=()) -> GRPOTrainer:
    """TRL's GRPOTrainer for one arm, set up by TRL itself; refuses a model with nothing to train."""
    torch.manual_seed(settings.seed)  # the new LoRA's init (recipe)
    handed = check_grpo_arm(arm).build(profile, Path(sft_adapter), Path(merged_dir))
    trainer = GRPOTrainer(model=handed.model, args=grpo_config(settings), train_dataset=prompt_dataset(tokenizer, queries),
                          reward_funcs=reward_function(reward_fn), processing_class=tokenizer,
                          peft_config=handed.peft_config, callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)  # with tqdm off, Trainer prints every step's log dict
    if handed.drop_ref and REF_ADAPTER in trainer.model.peft_config:
        trainer.model.delete_adapter(REF_ADAPTER)
    require_trainable(trainer.model)
    return trainer


def grpo_metrics(trainer: GRPOTrainer) -> pd.DataFrame:
    """TRL's logged metrics, one row per step: `step`, `reward`, `kl` (TRL's k3, 0 at β = 0), `step_time_s`..."""
    rows = [h for h in trainer.state.log_history if "loss" in h and "step" in h]
    return pd.DataFrame(rows).rename(columns={"step_time": "step_time_s"})


# --- showing what TRL did ------------------------------------------------------------------------------------


def adapters(model: PeftModel) -> pd.DataFrame:
    """Each adapter on the model TRL trains: LoRA parameters, how many train, whether its B matrices are all 0 (a
    fresh LoRA: the model under it unchanged), whether it equals the adapter that trains, and whether TRL's
    reference pass switches it on (none on: the reference is the model with adapters disabled)."""
    weights = {name: {n.replace(f".{name}.", "."): p for n, p in model.named_parameters() if f".{name}." in n}
               for name in model.peft_config}
    trained = weights.get(TRAINED_ADAPTER, {})
    rows = {name: {
        "LoRA parameters": sum(p.numel() for p in w.values()),
        "trainable": sum(p.numel() for p in w.values() if p.requires_grad),
        "B = 0 (fresh)": all(not p.any() for n, p in w.items() if "lora_B" in n),
        f"equals '{TRAINED_ADAPTER}'": w.keys() == trained.keys() and all(torch.equal(p, trained[n]) for n, p in w.items()),
        "on in TRL's reference pass": name == REF_ADAPTER,
    } for name, w in weights.items()}
    return pd.DataFrame(rows).T.rename_axis("adapter")


def step0_table(models: dict[str, PeftModel], evaluator) -> pd.DataFrame:
    """Each arm's model before any update, on the evaluator's held-out prompts and sampled responses (the same
    for every arm: the evaluator re-seeds): KL per token to the reference TRL will use, and to the yardsticks."""
    rows = {}
    for arm, model in models.items():
        row = evaluator(0, model, TRLReference(model))
        rows[arm] = {"TRL's reference": "the 'ref' copy" if REF_ADAPTER in model.peft_config else "adapters disabled",
                     "KL to its reference": row["kl_ref_exact"], "KL to the SFT model": row["kl_sft_exact"],
                     "KL to the base": row["kl_base_exact"], "held-out reward": row["reward_mean"]}
    table = pd.DataFrame(rows).T.rename_axis("arm")
    for column in table.columns[1:]:
        table[column] = table[column].astype(float).round(4) + 0.0  # + 0.0: float rounding's -0.0 shows as 0.0
    return table
