"""Step 1 of the recipe: supervised fine-tuning of a LoRA adapter on IMDB reviews, with TRL's SFTTrainer.

The base stays frozen (8-bit for the 20B profile, as in the original example); only the adapter trains
and only the adapter is saved. While it trains, a callback measures held-out perplexity every few optimizer
steps: the curve notebook 01 plots (the training loss of one small batch is too noisy to read).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
from datasets import Dataset
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from .artifacts import atomic_dir, write_json
from .models import lora_config, perplexity
from .profiles import Profile
from .settings import evaluation_steps

EVAL_POINTS = 5  # measurements after step 0: enough to see the trend; on a small slice they stay cheap


class HeldoutPerplexity(TrainerCallback):
    """Perplexity of fixed held-out texts at step 0 (the adapter is zero there: the base) and every
    `every` optimizer steps. Dropout is off while measuring; the Trainer sets train mode again each step."""

    def __init__(self, tokenizer, texts: list[str], seq_len: int, every: int):
        self.tokenizer, self.texts, self.seq_len, self.every = tokenizer, list(texts), seq_len, every
        self.curve: list[dict] = []

    @classmethod
    def for_profile(cls, profile: Profile, tokenizer, texts: list[str]) -> "HeldoutPerplexity":
        """At step 0 and at most EVAL_POINTS more steps of the profile's SFT run, at its sequence length."""
        every = max(1, -(-profile.sft.steps // EVAL_POINTS))  # ceil: at most 5 + 1 points
        return cls(tokenizer, texts, profile.sft.seq_len, every)

    def table(self) -> pd.DataFrame:
        """The curve: `step` and `perplexity`, one row per measurement."""
        return pd.DataFrame(self.curve, columns=["step", "perplexity"])

    def measure(self, state, model):
        self.curve.append({"step": state.global_step,
                           "perplexity": perplexity(model, self.tokenizer, self.texts, self.seq_len)})
        model.train()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.measure(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in evaluation_steps(state.max_steps, self.every):
            self.measure(state, model)


def sft_config(profile: Profile, seed: int = 0, output_dir: str = "unused") -> SFTConfig:
    """TRL's settings for the adapter's training (the profile's sft section): a constant learning rate, one
    pass over the reviews."""
    steps = profile.sft.steps
    return SFTConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=profile.sft.batch_size,
        learning_rate=profile.sft.lr,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_length=profile.sft.seq_len,
        packing=False,
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        bf16=False,
        fp16=False,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )


def settings(profile: Profile, model, seed: int = 0) -> pd.DataFrame:
    """The LoRA and SFT settings `train_sft` uses, read from the same config objects (notebook 01 shows them).
    α/r is the factor notebook 02 merges with: W' = W + (α/r)·BA."""
    lora, args = lora_config(profile, model), sft_config(profile, seed)
    rows = [("LoraConfig", k, getattr(lora, k)) for k in ("r", "lora_alpha", "lora_dropout", "target_modules")]
    rows += [("LoraConfig", "scale α/r", lora.lora_alpha / lora.r)]
    rows += [("SFTConfig", k, getattr(args, k)) for k in ("max_steps", "per_device_train_batch_size",
                                                          "learning_rate", "lr_scheduler_type", "max_length")]
    rows = [(c, k, sorted(v) if isinstance(v, (set, frozenset)) else v) for c, k, v in rows]
    return pd.DataFrame(rows, columns=["config", "setting", "value"]).set_index(["config", "setting"])


def sft_reviews(profile: Profile, train_texts) -> Dataset:
    """The reviews SFT trains on: one pass, no repeats (steps × batch of them), in TRL's "text" column."""
    n_texts = min(len(train_texts), profile.sft.steps * profile.sft.batch_size)
    return Dataset.from_dict({"text": list(train_texts[:n_texts])})


def train_sft(profile: Profile, model, tokenizer, train_texts, eval_texts=None, seed: int = 0):
    """Train a new LoRA adapter on `train_texts` (causal LM loss): TRL's SFTTrainer with the profile's LoraConfig
    and SFTConfig, as notebook 01 shows it step by step.

    Returns the PEFT model, the logged training losses, and the held-out perplexity curve of `eval_texts`
    (a DataFrame with `step` and `perplexity`; empty without `eval_texts`).
    """
    callbacks = []
    if eval_texts is not None and len(eval_texts):
        callbacks.append(HeldoutPerplexity.for_profile(profile, tokenizer, eval_texts))
    with tempfile.TemporaryDirectory() as scratch:  # the Trainer wants an output_dir; nothing is kept
        trainer = SFTTrainer(model=model, args=sft_config(profile, seed, scratch),
                             train_dataset=sft_reviews(profile, train_texts), processing_class=tokenizer,
                             peft_config=lora_config(profile, model), callbacks=callbacks)
        trainer.train()
    curve = callbacks[0].table() if callbacks else pd.DataFrame(columns=["step", "perplexity"])
    return trainer.model, logged_losses(trainer), curve


def logged_losses(trainer) -> list[float]:
    """The training losses the Trainer logged (every `logging_steps`)."""
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def save_adapter(peft_model, destination: str | Path, metrics: dict | None = None) -> Path:
    """Save the adapter (safetensors) and `metrics.json` in one atomic step."""
    with atomic_dir(destination) as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        if metrics is not None:
            write_json(Path(tmp) / "metrics.json", metrics)
    return Path(destination)
