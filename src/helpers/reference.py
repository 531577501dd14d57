"""The reference model of the KL penalty: one small interface, three strategies.

PPO penalises KL(policy || reference) per token. Which network is the reference is the whole question
of this tutorial, and this module is the single place it is decided: the PPO loop only ever calls
`reference.logits(input_ids, attention_mask)`.

Every strategy runs under `torch.no_grad()` and never changes a trainable parameter.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from peft import PeftModel

from .models import position_ids


class Reference:
    name = "reference"
    extra_backbones = 0  # backbones held only for the reference

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self.active():
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              position_ids=position_ids(attention_mask)).logits

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
        # set_adapter also flips requires_grad; remember the flags so the policy trains exactly as before
        flags = [(p, p.requires_grad) for n, p in self.model.named_parameters() if "lora_" in n]
        lora_model.set_adapter(self.adapter_names, inference_mode=True)
        try:
            yield
        finally:
            lora_model.set_adapter(policy_adapters)
            for p, flag in flags:
                p.requires_grad_(flag)
