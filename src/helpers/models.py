"""Base models and tokenizers for every profile, LoRA targets per architecture, perplexity and samples.

- `tiny` and `smol`: local checkpoints made once in the cache folder (helpers.checkpoints).
- Hub profiles: loaded by id (safetensors only, never remote code), optionally in 8-bit.
"""

from __future__ import annotations

import math
import os

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from .checkpoints import smollm2_checkpoint, tiny_checkpoint
from .machine import native_bf16
from .profiles import Profile

# LoRA on the attention projections, as in the original example (q and v; fused qkv for GPT-NeoX).
LORA_TARGETS = {
    "llama": ["q_proj", "v_proj"],
    "gpt_neox": ["query_key_value"],
    "gpt_neo": ["q_proj", "v_proj"],
}


def lora_target_modules(model_or_config) -> list[str]:
    config = getattr(model_or_config, "config", model_or_config)
    try:
        return LORA_TARGETS[config.model_type]
    except KeyError:
        raise ValueError(
            f"No LoRA target modules known for architecture {config.model_type!r}; "
            f"known: {', '.join(LORA_TARGETS)}. Add it to helpers.models.LORA_TARGETS."
        ) from None


def lora_config(profile: Profile, model, dropout: float | None = None):
    """The profile's LoRA settings on the architecture's target modules."""
    return LoraConfig(
        r=profile.lora.r,
        lora_alpha=profile.lora.alpha,
        lora_dropout=profile.lora.dropout if dropout is None else dropout,
        target_modules=profile.lora.targets or lora_target_modules(model),
        bias="none",
        task_type="CAUSAL_LM",
    )


PPO_ADAPTER = "ppo"


def ppo_lora_config(profile: Profile, model):
    """The new LoRA that PPO trains: the SFT settings without dropout, so PPO's probability ratio is
    1 at the first minibatch of a step. B starts at 0: the policy starts as the model under it."""
    return lora_config(profile, model, dropout=0.0)


def new_lora(model, profile: Profile, seed: int = 0, adapter_name: str = PPO_ADAPTER):
    """`model` wrapped with a fresh trainable LoRA (seeded: the same init in every run and arm)."""
    torch.manual_seed(seed)
    return get_peft_model(model, ppo_lora_config(profile, model), adapter_name=adapter_name)


# --- loading ----------------------------------------------------------------------------------------


def base_model_path(profile: Profile) -> str:
    """Where the profile's base model is loaded from: a local folder, or a Hub id."""
    if profile.model == "tiny":
        return str(tiny_checkpoint())
    if profile.model == "smollm2-gguf":
        return str(smollm2_checkpoint())
    return profile.model


def load_tokenizer(source: Profile | str | os.PathLike):
    """The tokenizer of a profile's base model (or of a saved folder), with a pad token and left padding
    (decoder-only models generate from the right end of the prompt)."""
    path = base_model_path(source) if isinstance(source, Profile) else str(source)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_said_auto: set = set()


def resolve_dtype(name: str, on: str | torch.device | None = None) -> torch.dtype:
    """The compute dtype a profile's `dtype` setting names, on device `on` (default: CUDA if present).

    "auto" picks bf16 only where the hardware runs it natively: a CUDA GPU with bf16, a CPU with AVX512-BF16 or
    AMX (helpers.machine.native_bf16); else fp16 on a CUDA GPU without bf16 (a T4) and fp32 on a CPU. It says
    once what it picked and why. (Native is not always faster: docs/site/performance.md.)"""
    target = torch.device(on or device())
    if name == "auto":
        if native_bf16(target):
            picked, why = "bfloat16", "native bf16 on " + ("this GPU" if target.type == "cuda" else "this CPU")
        elif target.type == "cuda":
            picked, why = "float16", "this GPU has no bf16"
        else:
            picked, why = "float32", "this CPU has no native bf16 (AVX512-BF16 or AMX)"
        if (target.type, picked) not in _said_auto:
            _said_auto.add((target.type, picked))
            print(f"dtype='auto' picked {picked} on {target.type}: {why}")
        return DTYPES[picked]
    if name not in DTYPES:
        raise ValueError(f"Unknown dtype {name!r}; valid: {', '.join(DTYPES)}, auto")
    if name == "float16" and target.type != "cuda":
        raise ValueError("dtype='float16' computes on a CUDA GPU only; on a CPU use 'bfloat16' or 'float32'")
    return DTYPES[name]


def compute_dtype(profile: Profile) -> torch.dtype:
    """The profile's `dtype` (float32 for tiny and smol, on any device; "auto" for the Hub profiles)."""
    return resolve_dtype(profile.dtype)


def compute_dtype_name(profile: Profile) -> str:
    """`compute_dtype` as recorded in fingerprints and manifests: "float32", "bfloat16", ..."""
    return str(compute_dtype(profile)).removeprefix("torch.")


def load_model(profile: Profile, path: str | os.PathLike | None = None, quantize: str | None = None,
               dtype: torch.dtype | None = None, on: str | torch.device | None = None):
    """A causal LM: the profile's base model, or a saved folder (e.g. the merged model from notebook 02).

    `quantize` is None, "8bit" or "4bit" (bitsandbytes; LoRA then trains on top of the frozen
    quantized backbone). `on` is the device (default: CUDA if present). Weights are read from
    safetensors only and no remote code is run.
    """
    profile.require_device()  # a 20B profile on a CPU fails here, before any download
    source = str(path) if path is not None else base_model_path(profile)
    kwargs = dict(dtype=dtype or compute_dtype(profile), use_safetensors=True)
    if quantize is not None:
        if quantize not in ("8bit", "4bit"):
            raise ValueError(f"quantize must be None, '8bit' or '4bit', not {quantize!r}")
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_8bit=quantize == "8bit",
            load_in_4bit=quantize == "4bit",
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
        kwargs["device_map"] = {"": on or device()}
    model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    if quantize is None:
        model.to(on or device())
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = model.generation_config.eos_token_id
    return model


def is_quantized(model) -> bool:
    """True for a bitsandbytes 8-bit or 4-bit model (or one with LoRA on top of it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return bool(getattr(base, "is_loaded_in_8bit", False) or getattr(base, "is_loaded_in_4bit", False)
                or getattr(base, "hf_quantizer", None) is not None)


def model_bytes(*modules) -> int:
    """Bytes of the parameters and buffers of `modules`, each tensor counted once (shared ones too)."""
    seen, total = set(), 0
    for module in modules:
        for t in [*module.parameters(), *module.buffers()]:
            if t.data_ptr() in seen:
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as `generate` uses: a padded forward then matches an unpadded one."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def causal_lm_parts(model):
    """(the causal LM under any adapter wrapper, its backbone, its LM head)."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal_lm, getattr(causal_lm, causal_lm.base_model_prefix), causal_lm.get_output_embeddings()


def response_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, query_len: int):
    """(logits, last hidden state) at the positions that predict the response tokens: position Q-1+j predicts
    response token j, so columns Q-1 ... end-1.

    One pass over the backbone (the model's own layers, adapters and all), then the LM head on those
    positions only: the head is a [hidden x vocab] matmul, and on the query positions it is wasted work.
    Only the last hidden state is kept (the value head needs nothing else). No KV cache is built.
    """
    _, backbone, head = causal_lm_parts(model)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                      use_cache=False).last_hidden_state[:, query_len - 1 : -1]
    # contiguous: on a strided slice F.linear falls back to a batched matmul with the [vocab x hidden] weight
    # broadcast over the batch, ~1.5x slower forward and backward on a CPU (same values, bit for bit)
    hidden = hidden.contiguous()
    return head(hidden), hidden


# --- evaluation --------------------------------------------------------------------------------------


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], seq_len: int, batch_size: int = 8) -> float:
    """Token-level perplexity of `texts`, each truncated to `seq_len` tokens (padding not counted)."""
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(texts[i : i + batch_size], return_tensors="pt", padding=True, truncation=True,
                          max_length=seq_len).to(model.device)
        logits = model(**batch, position_ids=position_ids(batch.attention_mask)).logits[:, :-1].float()
        targets = batch.input_ids[:, 1:]
        mask = batch.attention_mask[:, 1:].bool() & batch.attention_mask[:, :-1].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
        total_nll += nll[mask].sum().item()
        total_tokens += mask.sum().item()
    return math.exp(total_nll / total_tokens)


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = 24, greedy: bool = True,
             seed: int = 0) -> list[str]:
    """Continuations of `prompts` (only the new text): greedy, or sampled with a fixed seed."""
    model.eval()
    torch.manual_seed(seed)
    batch = tokenizer(prompts, return_tensors="pt", padding=True).to(model.device)
    out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=not greedy,
                         top_k=0 if not greedy else None, top_p=1.0 if not greedy else None,
                         pad_token_id=tokenizer.pad_token_id)
    return tokenizer.batch_decode(out[:, batch.input_ids.shape[1]:], skip_special_tokens=True)
