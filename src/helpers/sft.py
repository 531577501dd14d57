"""Step 1 of the recipe: supervised fine-tuning of a LoRA adapter on IMDB reviews, with TRL's SFTTrainer.

The base stays frozen (8-bit for the 20B profile, as in the original example); only the adapter trains
and only the adapter is saved.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from trl import SFTConfig, SFTTrainer

from .artifacts import atomic_dir, write_json
from .models import lora_config
from .profiles import Profile


def train_sft(profile: Profile, model, tokenizer, train_texts, steps: int | None = None, seed: int = 0):
    """Train a new LoRA adapter on `train_texts` (causal LM loss); returns the PEFT model and the loss log."""
    from datasets import Dataset

    steps = steps or profile.sft_steps
    n_texts = min(len(train_texts), steps * profile.sft_batch_size)  # one epoch, no repeats
    dataset = Dataset.from_dict({"text": list(train_texts[:n_texts])})
    with tempfile.TemporaryDirectory() as scratch:  # the Trainer wants an output_dir; nothing is kept
        args = SFTConfig(
            output_dir=scratch,
            max_steps=steps,
            per_device_train_batch_size=profile.sft_batch_size,
            learning_rate=profile.sft_lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_length=profile.sft_seq_len,
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
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=dataset,
            processing_class=tokenizer,
            peft_config=lora_config(profile, model),
        )
        trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return trainer.model, losses


def save_adapter(peft_model, destination: str | Path, metrics: dict | None = None) -> Path:
    """Save the adapter (safetensors) and `metrics.json` in one atomic step."""
    with atomic_dir(destination) as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
        if metrics is not None:
            write_json(Path(tmp) / "metrics.json", metrics)
    return Path(destination)
