"""Step 2 of the recipe: merge the SFT adapter into a full-precision copy of the base.

W_merged = W + (alpha / r) * B @ A for every adapted layer. The result is a plain model: no LoRA
modules, no peft needed to load it, and a PPO adapter added on top of it later starts from the SFT
model rather than from the base.

Never merge into an 8-bit or 4-bit base: the quantized weight is dequantized, summed with the LoRA
update and quantized again, and on a real model most entries of the update are smaller than the
rounding step. `quantized_merge_report` measures it (notebook 02): on SmolLM2-135M the median update entry
is about 0.13 of the int8 step of its row; merged into 4-bit (NF4) the model ends up worse than the base
without SFT, and merged into 8-bit it no longer matches base+adapter (largest logit difference ~9), though
its perplexity is close to that of the full-precision merge loaded in 8-bit. `merge_adapter` refuses both.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

import pandas as pd
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.integrations import dequantize_bnb_weight

from .artifacts import atomic_dir, write_json
from .models import is_quantized, load_model, perplexity, position_ids
from .profiles import Profile
from .provenance import content_hash

ADAPTER_NOTEBOOK = "notebooks/01_sft_lora.ipynb"


class AdapterError(ValueError):
    """An adapter folder that is corrupt, or made for another base model."""


class QuantizedMergeError(ValueError):
    """Merging into an 8-bit or 4-bit base was asked for."""


def merge_tolerance(dtype: torch.dtype) -> float:
    """Largest |logit difference| accepted between merged and base+adapter: float rounding only."""
    return 1e-3 if dtype == torch.float32 else 5e-2


def load_adapter(base_model, adapter_dir: str | Path, profile: Profile, adapter_name: str = "default",
                 trainable: bool = False) -> PeftModel:
    """Put the adapter saved in `adapter_dir` on `base_model`, with an error that says what to do if it
    does not fit (corrupt files, or an adapter trained on another architecture)."""
    adapter_dir = Path(adapter_dir)
    hint = f"Re-run {ADAPTER_NOTEBOOK} with PROFILE={profile.name} to make a fresh adapter."
    config_file = adapter_dir / "adapter_config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as e:
        raise AdapterError(f"{config_file} is missing or not valid JSON ({e}). {hint}") from None
    try:
        return PeftModel.from_pretrained(base_model, adapter_dir, adapter_name=adapter_name, is_trainable=trainable)
    except Exception as e:  # peft raises ValueError, RuntimeError or safetensors errors here
        raise AdapterError(
            f"The adapter in {adapter_dir} (targets {config.get('target_modules')}) does not fit the "
            f"{profile.name!r} base model ({base_model.config.model_type}): {type(e).__name__}: {e}. {hint}"
        ) from e


@torch.no_grad()
def logits_on(model, tokenizer, texts: list[str], max_length: int) -> torch.Tensor:
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length).to(model.device)
    logits = model(**batch, position_ids=position_ids(batch.attention_mask)).logits.float()
    return logits[batch.attention_mask.bool()]  # padding positions excluded


def merge_base(profile: Profile):
    """The base to merge into: full precision (`merge_dtype`), in CPU RAM for a backbone that trains in 8-bit
    (it does not fit the GPU in full precision)."""
    return load_model(profile, dtype=getattr(torch, profile.merge_dtype), on="cpu" if profile.load_in_8bit else None)


def refuse_quantized(model, profile: Profile) -> None:
    if is_quantized(model):
        raise QuantizedMergeError(
            "Refusing to merge into an 8-bit/4-bit base: W + BA is rounded to the quantization grid again, and "
            "the part of the LoRA update smaller than a rounding step can be lost (notebook 02 measures how "
            "much). Load the base in full precision for the merge "
            f"(load_model(profile, dtype=torch.{profile.merge_dtype})) and quantize the merged model later."
        )


@torch.no_grad()
def merge_probe(model: PeftModel, tokenizer, check_texts: list[str], profile: Profile) -> dict:
    """What `verify_merge` compares the merged model with, taken from base+adapter before the merge: its
    logits on `check_texts`, its greedy continuations, and one adapted layer's W, A, B and scale α/r."""
    refuse_quantized(model, profile)
    model.eval()
    prompts = tokenizer([" ".join(t.split()[:6]) for t in check_texts[:4]], return_tensors="pt",
                        padding=True).to(model.device)
    name, layer = next((n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer))
    adapter = layer.active_adapters[0]
    return {"logits": logits_on(model, tokenizer, check_texts, profile.sft.seq_len), "prompts": prompts,
            "greedy": model.generate(**prompts, max_new_tokens=16, do_sample=False),
            "layer": name.removeprefix("base_model.model."), "W": layer.get_base_layer().weight.detach().clone(),
            "A": layer.lora_A[adapter].weight.detach().clone(), "B": layer.lora_B[adapter].weight.detach().clone(),
            "scale": float(layer.scaling[adapter]), "dtype": str(model.dtype).removeprefix("torch.")}


@torch.no_grad()
def verify_merge(probe: dict, merged, tokenizer, check_texts: list[str], profile: Profile) -> dict:
    """The merged model against base+adapter (`merge_probe`): logits within float rounding, the same greedy
    text, no LoRA module left, and in the probed layer W' = W + (α/r)·BA."""
    after = logits_on(merged, tokenizer, check_texts, profile.sft.seq_len)
    greedy_after = merged.generate(**probe["prompts"], max_new_tokens=16, do_sample=False)
    lora_left = [n for n, m in merged.named_modules() if isinstance(m, BaseTunerLayer)]
    diff = (probe["logits"] - after).abs().max().item()
    tolerance = merge_tolerance(getattr(torch, probe["dtype"]))
    merged_w = merged.get_submodule(probe["layer"]).weight.float()
    update = probe["scale"] * (probe["B"].float() @ probe["A"].float())
    verification = {
        "max_abs_logit_diff": diff,
        "tolerance": tolerance,
        "within_tolerance": diff <= tolerance,
        "dtype": probe["dtype"],
        "tokens_compared": int(after.shape[0]),
        "lora_modules_left": len(lora_left),
        "same_greedy_generation": bool(torch.equal(probe["greedy"], greedy_after)),
        "one_layer": probe["layer"],
        "one_layer_scale_alpha_over_r": probe["scale"],
        "one_layer_max_abs_update": update.abs().max().item(),
        "one_layer_max_abs_diff_from_W_plus_scaled_BA": (merged_w - probe["W"].float() - update).abs().max().item(),
    }
    if not verification["within_tolerance"] or lora_left:
        raise RuntimeError(f"Merge verification failed: {verification}")
    return verification


def merge_adapter(profile: Profile, adapter_dir: str | Path, tokenizer, check_texts: list[str], base_model=None):
    """Merge the adapter into a full-precision base; return (merged model, verification dict).

    The verification compares, on `check_texts`, the logits of base+adapter with those of the merged
    model (max |difference| within `merge_tolerance`), greedy generations of both, that no LoRA module is
    left, and one layer's merged weight with W + (α/r)·BA.
    """
    if base_model is not None:
        refuse_quantized(base_model, profile)
    model = load_adapter(merge_base(profile) if base_model is None else base_model, adapter_dir, profile)
    probe = merge_probe(model, tokenizer, check_texts, profile)
    merged = model.merge_and_unload()  # W' = W + (α/r)·BA in every adapted layer, in place; LoRA modules dropped
    verification = verify_merge(probe, merged, tokenizer, check_texts, profile)
    verification["adapter_dir"] = str(adapter_dir)
    return merged, verification


def save_merged(merged, tokenizer, destination: str | Path, verification: dict) -> Path:
    """Save the standalone merged model (safetensors) with its tokenizer; `verification.json` goes beside
    the model folder, in the stage folder, with the content hash of the adapter it merged (`adapter_dir`), which
    later stages check against 01's adapter (helpers.artifacts.require refuses a merge of a replaced adapter)."""
    if "adapter_dir" not in verification:
        raise ValueError("verification must name the merged adapter's folder (adapter_dir): later stages check that "
                         "the merge is of the adapter 01 holds now")
    verification = {**verification, "adapter_hash": content_hash(Path(verification["adapter_dir"]))}
    destination = Path(destination)
    with atomic_dir(destination) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    write_json(destination.parent / "verification.json", verification)
    return destination


def quantized_merge_report(profile: Profile, adapter_dir: str | Path, tokenizer, check_texts: list[str],
                           heldout_texts: list[str]):
    """What merging the adapter into an 8-bit base loses, measured; returns (models, layers) tables.

    The same adapter goes on the full-precision base and on an 8-bit copy; both are merged, the 8-bit one
    through peft's own path for bitsandbytes layers (dequantize W, add BA, quantize again; peft only warns).
    `models`: max |logit difference| and mean KL per token to base+adapter on `check_texts`, and held-out
    perplexity, of the base, base+adapter, the full-precision merge, that merge loaded in 8-bit (what the 20B
    recipe runs PPO on), and for 8-bit and 4-bit (NF4) alike: the quantized base alone, with the adapter
    (not merged), and the adapter merged into it: what quantizing costs apart from what the merge loses.
    `layers`, per adapted layer of the 8-bit merge: how large the update is against the int8 rounding step
    of the row it lands in (median |ΔW| / (row absmax / 127)), and which part of it the re-quantized weight
    lost, ‖(W8_merged − W8) − ΔW‖ / ‖ΔW‖ (W8: the dequantized 8-bit weight), read back from bitsandbytes.
    """
    seq_len = profile.sft.seq_len
    rows, reference = [], None

    def measure(name, model):
        nonlocal reference
        logits = logits_on(model, tokenizer, check_texts, seq_len)
        reference = logits if reference is None else reference
        kl = (reference.softmax(-1) * (reference.log_softmax(-1) - logits.log_softmax(-1))).sum(-1).mean()
        rows.append({"model": name, "max |Δlogit| vs base+adapter": (logits - reference).abs().max().item(),
                     "KL to base+adapter (nats/token)": kl.item(),
                     "held-out perplexity": perplexity(model, tokenizer, heldout_texts, seq_len)})

    full = load_adapter(load_model(profile, dtype=torch.float32, on="cpu"), adapter_dir, profile).eval()
    measure("base + adapter", full)
    with full.disable_adapter():
        measure("base (no adapter)", full)
    merged = full.merge_and_unload()
    measure("merged in full precision", merged)
    with tempfile.TemporaryDirectory() as scratch:
        merged.save_pretrained(scratch, safe_serialization=True)
        del full, merged
        measure("merged in full precision, then loaded in 8-bit", load_model(profile, scratch, quantize="8bit", on="cpu"))

    eight = load_adapter(load_model(profile, quantize="8bit", on="cpu"), adapter_dir, profile).eval()
    with eight.disable_adapter():
        measure("8-bit base (no adapter)", eight)
    measure("8-bit base + adapter (not merged)", eight)
    before = {}
    for name, m in eight.named_modules():
        if isinstance(m, LoraLayer):
            base = m.get_base_layer()
            w8 = dequantize_bnb_weight(base.weight, state=base.state).float()
            before[name] = (base, w8, m.get_delta_weight("default").float())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        measure("merged into the 8-bit base (peft)", eight.merge_and_unload())  # dequantize, add BA, re-quantize
        four = load_adapter(load_model(profile, quantize="4bit", on="cpu"), adapter_dir, profile).eval()
        with four.disable_adapter():
            measure("4-bit base (no adapter)", four)
        measure("4-bit base + adapter (not merged)", four)
        # merge a copy that has never run a forward: on the CPU, bitsandbytes changes a 4-bit weight's
        # storage at its first forward and peft's merge then dequantizes it wrongly (on smol: perplexity
        # about 5e4 after a forward, about 1e2 without; checked 2026-12-03)
        fresh = load_adapter(load_model(profile, quantize="4bit", on="cpu"), adapter_dir, profile).eval()
        measure("merged into a 4-bit base (peft)", fresh.merge_and_unload())

    stats = []
    for name, (base, w8, delta) in before.items():
        after = dequantize_bnb_weight(base.weight, state=base.state).float()
        step = w8.abs().amax(dim=1, keepdim=True) / 127  # int8 rows: absmax maps to ±127
        stats.append({"layer": name.removeprefix("base_model.model."),
                      "median |ΔW| / int8 step": (delta.abs() / step).median().item(),
                      "update lost to re-quantization": ((after - w8 - delta).norm() / delta.norm()).item()})
    models = pd.DataFrame(rows).set_index("model")
    models.attrs["peft_warnings"] = sorted({str(w.message) for w in caught if "bit" in str(w.message)})
    return models, pd.DataFrame(stats)
