"""Sampling responses from the policy's own distribution: temperature 1, top_k 0, top_p 1, no other logits
processor, stopping at any end-of-sequence id. Two paths draw the same tokens from the same distribution:

- `lean_generate` (the fast path): a plain loop over the backbone with a KV cache. Each step it runs the LM
  head on the last position only, samples with `torch.multinomial` on the softmax of the fp32 logits (the
  same draws, in the same order, as transformers' `generate`), and keeps what the PPO step needs next: the
  logits that predicted each token and the last hidden states there. So the rollout's old log-probs and
  values come from generation's own forwards, and the second full forward over the rollout is gone.
- `hf_generate` (the reference path, helpers.fastpath): transformers' `generate` with a blank generation
  config, so no setting of the checkpoint's own config (a temperature, a repetition penalty) applies.

Both return a `Generated`: the raw tokens before any cut to a drawn length, and optionally what predicted them.
`rollout` cuts them into a PPO step's `Rollout` (and the evaluation's held-out responses).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache, GenerationConfig

from .fastpath import lever_on
from .models import causal_lm_parts, position_ids, response_forward

# architectures whose backbone forward the lean loop is written against (transformers 5's `cache=` API);
# any other model samples through `generate`
LEAN_ARCHITECTURES = {"llama"}


@dataclass
class Generated:
    tokens: torch.Tensor  # [B, R] sampled ids; after a row's end-of-sequence, the pad id
    logits: torch.Tensor | None = None  # [B, R, V] fp32 logits each token was sampled from
    hidden: torch.Tensor | None = None  # [B, R, H] the last hidden states at those positions


def sampling_config(eos_ids: list[int], pad_token_id: int, max_new_tokens: int) -> GenerationConfig:
    """Plain sampling from the policy's distribution: temperature 1, no top-k/top-p, no penalties."""
    return GenerationConfig(do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                            eos_token_id=eos_ids, pad_token_id=pad_token_id)


def generate_own_distribution(model, generation_config: GenerationConfig, **inputs):
    """`model.generate` with `generation_config` alone. transformers fills every setting left unset from the
    checkpoint's own generation_config (a temperature, a repetition penalty, min_p, ...), which would sample
    off-policy; with a blank config in its place only our explicit settings and neutral defaults apply."""
    causal_lm = causal_lm_parts(model)[0]
    checkpoint_config = causal_lm.generation_config
    causal_lm.generation_config = GenerationConfig()
    try:
        return model.generate(**inputs, generation_config=generation_config)
    finally:
        causal_lm.generation_config = checkpoint_config


def hf_generate(model, query_ids, query_mask, max_new: int, eos_ids: list[int], pad: int,
                keep_logits: bool = False) -> Generated:
    """The reference path: transformers' `generate` (raw logits kept if asked; no hidden states)."""
    config = sampling_config(eos_ids, pad, max_new)
    if keep_logits:
        config.update(output_logits=True, return_dict_in_generate=True)
    out = generate_own_distribution(model, config, input_ids=query_ids, attention_mask=query_mask)
    if not keep_logits:
        return Generated(out[:, query_ids.shape[1]:])
    return Generated(out.sequences[:, query_ids.shape[1]:], torch.stack(out.logits, 1))


def lean_generate(model, query_ids, query_mask, max_new: int, eos_ids: list[int], pad: int,
                  keep: bool = False) -> Generated:
    """The fast path's sampling loop (module docstring); `keep`: also return logits and hidden states."""
    causal_lm, backbone, head = causal_lm_parts(model)
    B = query_ids.shape[0]
    cache = DynamicCache(config=causal_lm.config)
    mask = query_mask
    positions = position_ids(mask)
    hidden = backbone(input_ids=query_ids, attention_mask=mask, position_ids=positions, cache=cache,
                      use_cache=True).last_hidden_state[:, -1:]
    next_position = positions[:, -1:] + 1
    eos = torch.tensor(eos_ids, device=query_ids.device)
    unfinished = torch.ones(B, dtype=torch.long, device=query_ids.device)
    ones = torch.ones(B, 1, dtype=mask.dtype, device=mask.device)
    tokens, all_logits, all_hidden = [], [], []
    for t in range(max_new):
        logits = head(hidden)[:, -1].float()  # [B, V]: as `generate`, the head on the last position only
        if keep:
            all_logits.append(logits)
            all_hidden.append(hidden[:, -1])
        token = torch.multinomial(torch.softmax(logits, -1), num_samples=1).squeeze(1)
        token = token * unfinished + pad * (1 - unfinished)
        tokens.append(token)
        unfinished = unfinished & ~torch.isin(token, eos)
        if t == max_new - 1 or not bool(unfinished.any()):
            break
        mask = torch.cat([mask, ones], 1)
        hidden = backbone(input_ids=token[:, None], attention_mask=mask, position_ids=next_position, cache=cache,
                          use_cache=True).last_hidden_state
        next_position = next_position + 1
    return Generated(torch.stack(tokens, 1), torch.stack(all_logits, 1) if keep else None,
                     torch.stack(all_hidden, 1) if keep else None)


@torch.no_grad()
def generate_tokens(model, query_ids, query_mask, max_new: int, eos_ids: list[int], pad: int,
                    keep_logits: bool = False) -> Generated:
    """Sample up to `max_new` tokens per left-padded query: the lean loop, or `generate` on the reference
    path (or for an architecture the loop does not know). With `keep_logits`, the logits are returned, and
    on the lean loop the hidden states too."""
    if not lever_on("lean_loop") or causal_lm_parts(model)[0].config.model_type not in LEAN_ARCHITECTURES:
        return hf_generate(model, query_ids, query_mask, max_new, eos_ids, pad, keep_logits)
    return lean_generate(model, query_ids, query_mask, max_new, eos_ids, pad, keep=keep_logits)


@torch.no_grad()
def teacher_forced(model, query_ids, query_mask, tokens: torch.Tensor, keep_logits: bool = False) -> Generated:
    """`tokens` [B, R] given instead of sampled (a recorded rollout replayed), with what generation would have
    kept: the logits and last hidden states at the positions that predict them, from one forward pass."""
    if not keep_logits:
        return Generated(tokens)
    ids = torch.cat([query_ids, tokens], 1)
    mask = torch.cat([query_mask, torch.ones_like(tokens, dtype=query_mask.dtype)], 1)
    logits, hidden = response_forward(model, ids, mask, query_ids.shape[1])
    return Generated(tokens, logits.float(), hidden)


# --- a PPO rollout: one sampled response per query, cut to its drawn length --------------------------------


@dataclass
class Rollout:
    input_ids: torch.Tensor  # [B, Q + R]: left-padded query, then right-padded response
    attention_mask: torch.Tensor
    response_mask: torch.Tensor  # [B, R]
    query_len: int  # Q: every response starts at this column
    texts: list[str]  # query + response, decoded
    responses: list[str]
    logits: torch.Tensor | None = None  # [B, R, V] the sampling policy's logits, kept only if asked for
    hidden: torch.Tensor | None = None  # [B, R, H] its last hidden states there (fast path, if asked for)

    @property
    def response_tokens(self) -> torch.Tensor:
        return self.input_ids[:, self.query_len :]

    def rows(self, index) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(input_ids, attention_mask, query_len) of some rows: the arguments of a forward pass."""
        return self.input_ids[index], self.attention_mask[index], self.query_len


def eos_token_ids(model, tokenizer) -> list[int]:
    """Every token id generation stops on: the checkpoint's generation_config (an int or a list) and the
    tokenizer's. The response mask must cut at the same tokens that stop generation."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    return sorted(set(ids))


@torch.no_grad()
def rollout(policy, tokenizer, queries: list[list[int]], lengths: list[int], keep_logits: bool = False) -> Rollout:
    """Sample one response per query from the policy's own distribution, each cut to its drawn length.

    `keep_logits`: also keep the logits generation sampled from, at the positions that predict the response
    tokens: what `response_forward` would compute again (up to float rounding, as generation reuses a KV
    cache); on the fast path (helpers.sampling) the last hidden states there too, for the value head."""
    device = policy.device
    pad = tokenizer.pad_token_id
    Q = max(len(q) for q in queries)
    query_ids = torch.tensor([[pad] * (Q - len(q)) + q for q in queries], device=device)
    query_mask = torch.tensor([[0] * (Q - len(q)) + [1] * len(q) for q in queries], device=device)
    eos_ids = eos_token_ids(policy, tokenizer)
    generated = generate_tokens(policy, query_ids, query_mask, max(lengths), eos_ids, pad, keep_logits)
    response = generated.tokens  # may be shorter than max(lengths) when every row ended early
    R = response.shape[1]
    # cut each response to its drawn length, and after the first end-of-sequence token (kept)
    columns = torch.arange(R, device=device)
    keep = columns[None, :] < torch.tensor(lengths, device=device)[:, None]
    eos = torch.isin(response, torch.tensor(eos_ids, device=device)) & keep
    after_eos = (eos.long().cumsum(-1) - eos.long()) > 0
    response_mask = (keep & ~after_eos).long()
    response = torch.where(response_mask.bool(), response, torch.full_like(response, pad))
    input_ids = torch.cat([query_ids, response], 1)
    attention_mask = torch.cat([query_mask, response_mask], 1)
    responses = [tokenizer.decode(r[m.bool()], skip_special_tokens=True) for r, m in zip(response, response_mask)]
    texts = [tokenizer.decode(q, skip_special_tokens=True) + r for q, r in zip(queries, responses)]
    return Rollout(input_ids, attention_mask, response_mask, Q, texts, responses, generated.logits, generated.hidden)
