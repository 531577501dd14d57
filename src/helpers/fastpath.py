"""The fast path, and the reference path it is checked against.

During PPO only the LoRA and the value head train: every base weight is frozen for the whole run. So each
frozen `nn.Linear` can be laid out once in the blocked format oneDNN's kernels read fastest (on smol the LM
head at 8 rows runs ~4x faster than MKL's sgemm on the plain [vocab x hidden] weight, the layers' products
~1.3-2x), and reused by generation, the no-grad forwards and the update's forward (and, with the
`pack_backward` lever, its input gradients).

The price is the last bits: oneDNN adds in another order than MKL, so a logit moves by ~1e-6 and, rarely, a
sampled token flips. What must not move is the distribution of results: tests/test_equivalence.py checks
per-token log-probs within 1e-4 nats of the reference path on fixed inputs, and a paired statistical check
over seeds of whole runs.

The reference path is the code as it was before (plain `F.linear`, transformers' `generate`, a second forward
over the rollout for the old log-probs and values). It stays, behind a flag, for those checks:
    TUTORIAL_REFERENCE_PATH=1          in the environment (a whole process, Ray workers included), or
    with fastpath.reference_path():    in code (tests).
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.nn.functional as F

ENV = "TUTORIAL_REFERENCE_PATH"
_override: list[bool] = []  # innermost `reference_path()` wins over the environment


def reference_path_on() -> bool:
    """True when the reference path is asked for (the context manager, else TUTORIAL_REFERENCE_PATH=1)."""
    if _override:
        return _override[-1]
    return os.environ.get(ENV, "0") not in ("", "0", "false", "False")


def fast_path_on() -> bool:
    return not reference_path_on()


# The fast path's levers, each measured alone by benchmarks/levers.py (docs/site/performance.md). TUTORIAL_FAST_LEVERS
# =name,name turns on exactly those named (a benchmark's knob, not a setting to tune). The default leaves out
# pack_backward: measured alone it bought less than the machine's noise (step 0.77 [0.40, 1.15] of the reference
# path's with it, 0.82 [0.67, 0.96] without; the profiler: 0.3 s of input-gradient products per smol step) for a
# second packed copy of every weight (+0.5 GiB on smol in fp32).
LEVERS = ("pack_forward", "pack_backward", "lean_loop", "from_generation")
DEFAULT_LEVERS = ("pack_forward", "lean_loop", "from_generation")


def lever_on(name: str) -> bool:
    if name not in LEVERS:
        raise ValueError(f"Unknown lever {name!r}; valid: {', '.join(LEVERS)}")
    if not fast_path_on():
        return False
    chosen = os.environ.get("TUTORIAL_FAST_LEVERS")
    if chosen is None:
        return name in DEFAULT_LEVERS
    unknown = set(filter(None, chosen.split(","))) - set(LEVERS)
    if unknown:
        raise ValueError(f"TUTORIAL_FAST_LEVERS names unknown levers {sorted(unknown)}; valid: {', '.join(LEVERS)}")
    return name in chosen.split(",")


@contextmanager
def reference_path(on: bool = True):
    """Run the enclosed code on the reference path (`on=True`) or the fast path (`on=False`)."""
    _override.append(on)
    try:
        yield
    finally:
        _override.pop()


# --- frozen weights laid out once ---------------------------------------------------------------------

PACK_ROWS_HINT = 64  # oneDNN picks a blocking for this many rows; any row count is computed correctly


def packs_on_this_machine(weight: torch.Tensor) -> bool:
    """oneDNN's packed linear: CPU tensors in fp32 or bf16 (bf16 only where oneDNN has it, i.e. everywhere
    torch ships it; natively fast with AVX512-BF16 or AMX)."""
    return (weight.device.type == "cpu" and weight.dtype in (torch.float32, torch.bfloat16)
            and torch.backends.mkldnn.is_available())


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACK_ROWS_HINT)


def _packed_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class _FrozenLinear(torch.autograd.Function):
    """y = x W^T + b with W frozen: forward on the packed W; input gradient g W with the plain W, or, with the
    pack_backward lever, on a packed W^T (laid out at the first backward, so a model that never trains, such
    as a reference, never pays for it)."""

    @staticmethod
    def forward(ctx, x, module):
        ctx.module = module
        return _packed_linear(x, module._packed_weight, module.bias)

    @staticmethod
    def backward(ctx, grad):
        module = ctx.module
        if not lever_on("pack_backward"):
            return grad.matmul(module.weight), None
        if module._packed_weight_t is None:
            module._packed_weight_t = _pack(module.weight.t().contiguous())
        return _packed_linear(grad.contiguous(), module._packed_weight_t, None), None


def _identity(weight: torch.Tensor) -> tuple:
    """What changes when a weight is replaced (object, storage) or changed in place through autograd's view of it
    (its version). A write through `.data` (peft's merge does `weight.data += ...`) bumps no version: merge
    before packing, or load the model again, never merge a packed model in place."""
    return id(weight), weight.data_ptr(), weight._version


def _frozen_linear_forward(module: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    weight = module.weight
    if (reference_path_on() or weight.requires_grad or (module.bias is not None and module.bias.requires_grad)
            or x.dtype != weight.dtype or x.device != weight.device):
        return F.linear(x, weight, module.bias)
    if module._packed_for != _identity(weight):  # replaced or changed in place since: lay out again
        module._packed_weight, module._packed_weight_t = _pack(weight), None
        module._packed_for = _identity(weight)
    if not torch.is_grad_enabled() or not x.requires_grad:
        return _packed_linear(x, module._packed_weight, module.bias)
    return _FrozenLinear.apply(x, module)


def pack_frozen_linears(model: torch.nn.Module) -> int:
    """Give every plain frozen `nn.Linear` of `model` (the base layers and the LM head; not the LoRA matrices,
    not bitsandbytes' layers) a packed copy of its weight, used while its weight stays frozen and unchanged
    and the reference path is off. Idempotent; returns how many layers it packed now."""
    packed = 0
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or "lora_" in name or hasattr(module, "_packed_for"):
            continue
        if module.weight.requires_grad or not packs_on_this_machine(module.weight):
            continue
        module._packed_weight, module._packed_weight_t = _pack(module.weight), None
        module._packed_for = _identity(module.weight)
        module.forward = _frozen_linear_forward.__get__(module)
        packed += 1
    return packed
