"""The reference model of the KL penalty: one small interface, three strategies.

PPO penalises KL(policy || reference) per token. Which network is the reference is the whole question
of this tutorial, and this module is the single place it is decided: the PPO loop only ever calls
`reference.logits(input_ids, attention_mask, query_len)`.

Every strategy runs under `torch.no_grad()`, never changes a weight, and leaves every parameter's
`requires_grad` as it found it: switching adapters on and off in peft flips those flags (on exit from
`disable_adapter()`, peft 0.21 makes every *active* adapter trainable, a frozen one too), so the base
class saves them before the pass and restores them after it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from peft import PeftModel

from .models import response_forward


class Reference:
    name = "reference"
    extra_backbones = 0  # backbones held only for the reference

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, query_len: int) -> torch.Tensor:
        """The reference's logits at the positions that predict the response tokens (columns query_len-1 ...)."""
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            with self.active():
                return response_forward(self.model, input_ids, attention_mask, query_len)[0]
        finally:
            for p, flag in flags:
                p.requires_grad_(flag)

    @contextmanager
    def active(self):
        yield


class DisabledAdapters(Reference):
    """The policy's own network with every adapter switched off: TRL's original `ref_model=None`.

    Memory: nothing extra. After merging the SFT adapter this is the SFT model; without merging it is the
    raw base model, which is the pitfall notebook 04 measures.
    """

    name = "adapters disabled"

    def __init__(self, policy: PeftModel):
        self.model = policy

    @contextmanager
    def active(self):
        with self.model.disable_adapter():
            yield


class FrozenModel(Reference):
    """A separate frozen network (e.g. a second copy of the merged model, or base + SFT adapter).

    Memory: a whole second backbone (plus its adapter, if any).
    """

    name = "frozen model"
    extra_backbones = 1

    def __init__(self, model: torch.nn.Module):
        self.model = model.eval().requires_grad_(False)


class FrozenAdapter(Reference):
    """Named adapter(s) on the policy's own backbone, switched on only for the reference pass: a frozen
    copy of the trained adapter (what TRL's GRPOTrainer does with `ref` adapters), or the lower, frozen
    adapter of a stack.

    Memory: one extra LoRA adapter (a few MB), no second backbone.
    """

    name = "frozen adapter"

    def __init__(self, policy: PeftModel, adapter_names: str | list[str]):
        self.model = policy
        self.adapter_names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        missing = set(self.adapter_names) - set(policy.peft_config)
        if missing:
            raise ValueError(f"No adapter named {sorted(missing)} on the policy; it has {sorted(policy.peft_config)}.")

    @contextmanager
    def active(self):
        lora_model = self.model.base_model
        policy_adapters = list(lora_model.active_adapters)
        lora_model.set_adapter(self.adapter_names, inference_mode=True)  # flips requires_grad: Reference.logits restores it
        try:
            yield
        finally:
            lora_model.set_adapter(policy_adapters)
