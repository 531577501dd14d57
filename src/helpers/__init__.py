"""Helpers the lora-rlhf-tutorial notebooks call: profiles, data, models, SFT, merge, rewards,
reference models, PPO, the arms of the reference-model comparison (arms), one run as one value (runs),
verdicts from paired seeds (verdicts), notebook 04's plan (compare), the full study (study) and the plots."""

import logging
import os
import re
import sys
import warnings


class _Once(logging.Filter):
    """Let a message through the first time only."""

    def __init__(self, start: str):
        super().__init__()
        self.start, self.seen = start, False

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith(self.start):
            return True
        seen, self.seen = self.seen, True
        return not seen


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.start)


def quiet_libraries() -> None:
    """Hide loading bars, and the few library messages that tell a learner nothing, each named below with
    the reason. Every other warning (peft's included) stays visible."""
    # bitsandbytes, on a CPU with AVX512-BF16, tries at import to download a faster 4-bit CPU kernel from
    # the Hub ("kernels-community", through the `kernels` package) and logs a warning when it cannot. The
    # tutorial is offline and the built-in kernel it falls back to is the one the results were measured
    # with. Installed before bitsandbytes is imported, since the message comes at import.
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        _DropMessage("Failed to load CPU gemm_4bit_forward from kernels-community"))
    # bitsandbytes' int8 matmul logs this on every forward of every 8-bit layer whose input is not fp16
    # (any 8-bit model on CPU): true and worth knowing, once.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(_Once("MatMul8bitLt: inputs will be cast"))
    # The Trainer's DataLoader asks for pinned memory, which means nothing without a GPU; torch says so once
    # per loader on CPU-only machines (every `tiny` run).
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator",
                            category=UserWarning)
    # Deprecations one library raises about another's call, which no notebook code makes: peft 0.21 reads
    # `model.is_gradient_checkpointing` whenever it wraps a model, and TRL 1.16's SFTConfig sets
    # `gradient_checkpointing` itself. Both are renamed in transformers 5 ("activation_checkpointing").
    for name in ("`is_gradient_checkpointing` is deprecated", "`gradient_checkpointing` is deprecated"):
        warnings.filterwarnings("ignore", message=re.escape(name), category=FutureWarning)

    import datasets
    import transformers

    # "Loading weights" and "Map" bars for a few MB of weights and data: noise between a cell and its result.
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def _mirror_trainer_progress_to_terminal() -> None:
    """`make tutorial` (helpers.run_notebooks) sets TUTORIAL_TERMINAL_PROGRESS=1. In a notebook the
    Trainer's progress is an HTML table that a terminal never sees; this adds a text bar written to the
    kernel's own stderr (the terminal running `make tutorial`), not into the notebook."""
    import transformers.trainer
    from tqdm import tqdm
    from transformers import TrainerCallback

    class TerminalProgress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            name = type(args).__name__.removesuffix("Config")  # SFT, GRPO
            self.bar = tqdm(total=state.max_steps, desc=f"   {name}", file=sys.__stderr__, dynamic_ncols=True)

        def on_step_end(self, args, state, control, **kwargs):
            self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.bar.set_postfix(loss=f"{logs['loss']:.3f}")

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

    if not any(c.__name__ == "TerminalProgress" for c in transformers.trainer.DEFAULT_CALLBACKS):
        transformers.trainer.DEFAULT_CALLBACKS.append(TerminalProgress)


quiet_libraries()
if os.environ.get("TUTORIAL_TERMINAL_PROGRESS") == "1" and sys.__stderr__ is not None:
    _mirror_trainer_progress_to_terminal()

from .machine import fix_mmap_threshold  # noqa: E402  (after the filters: it imports torch)
from .profiles import PROFILES, Profile, configure, get_profile  # noqa: E402

fix_mmap_threshold()  # before any model is loaded: see its docstring

__all__ = ["PROFILES", "Profile", "configure", "get_profile", "quiet_libraries"]
