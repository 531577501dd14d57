"""Classic PPO for language models (Ziegler et al. 2019, as TRL <= 0.11 implemented it), top to bottom;
its math, each piece small enough to test by hand, is helpers.ppo_math, and the rollout helpers.sampling.

One step, top to bottom:
  1. rollout   sample a response to each query from the policy's own distribution (temperature 1,
               top_k=0, top_p=1, no other logits processor, whatever the checkpoint's generation_config
               says), each cut to a length drawn from `response_len` and after the first end-of-sequence;
  2. score     reward the query+response text; the score sits on the last response token;
  3. reference log-probs of the same tokens under the reference model: THE place the reference enters;
  4. rewards   per token: -kl_coef * (log pi - log pi_ref), plus the score at the last token;
  5. GAE       advantages (gamma=1, lambda=0.95) from the value head's estimates, then whitened;
  6. update    `ppo_epochs` passes over shuffled minibatches: clipped policy loss + vf_coef * clipped
               value loss, Adam on the LoRA and value-head parameters only;
  7. KL coef   adaptive controller towards `kl_target`, or fixed.

The value head is a linear layer on the policy's last hidden state: policy, value function and (with
adapters disabled) reference share one backbone. Every forward pass runs the LM head only on the
positions that predict response tokens, and takes the log-softmax once.

Two paths compute the same step (helpers.fastpath). The fast one (default) keeps the logits and last hidden
states of generation's own forwards as the rollout's old log-probs and values (step 3 then needs only the
reference's forward), and runs every frozen base weight through a layout packed once per run. The reference
path (TUTORIAL_REFERENCE_PATH=1) forwards the rollout a second time with plain kernels. They agree up to
float rounding (tests/test_equivalence.py): on the fast path the KL at step 0 and the ratio at the first
minibatch are 0 and 1 to ~1e-7, not bit for bit, since generation's KV-cached forwards add in another order.

Numerically this is TRL 0.11.4's PPOTrainer (rewards, GAE, `masked_whiten` with the unbiased variance,
losses, KL controllers), except for these deliberate differences:
  - the policy runs in eval mode: no dropout, so the probability ratio is 1 (up to float rounding on the
    fast path) at the first minibatch of every step (TRL trained in train mode; the PPO LoRA here has no
    dropout anyway);
  - no `ratio_threshold` skip: TRL dropped minibatches whose mean ratio exceeded 10; the clip bounds the
    update here, and a non-finite loss stops the run with `NonFiniteError` instead;
  - `approx_kl` (reported, never optimised) is the k3 estimator (ratio - 1) - log ratio, not TRL's
    0.5 * (log ratio)^2;
  - the KL to the reference is also reported exactly, over the whole vocabulary (`kl_ref_exact`);
  - two optional learning-rate multipliers, both 1 (TRL's one learning rate) unless a profile sets them:
    `lora_b_lr_ratio` for the LoRA B matrices (as LoRA+ does) and `value_lr_ratio` for the value head
    (`param_groups`; the tuning study in docs/tuning/<profile>/ measured what each buys).

Measurement kept apart from the algorithm: an `evaluator` (fixed held-out prompts, and KL to any
yardstick models, see helpers.evaluation) runs between steps, timed out of `step_time_s`.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file

from .artifacts import atomic_dir
from .fastpath import lever_on, pack_frozen_linears
from .machine import peak_memory, progress_bar, release_free_memory
from .models import response_forward
from .ppo_math import (
    AdaptiveKLController,
    FixedKLController,
    check_finite,
    entropy,
    gae,
    gather_logprobs,
    kl_exact,
    kl_sampled,
    log_softmax,
    per_token_rewards,
    policy_loss,
    value_loss,
    whiten,
)
from .reference import Reference
from .sampling import Rollout, rollout
from .settings import PPOConfig  # noqa: F401  (the profile's ppo section; imported from here too)


# the metrics columns that measure the machine, not the run: they differ between identical runs
TIMING_COLUMNS = ("gen_s", "score_s", "fwd_s", "ref_s", "update_s", "step_time_s", "peak_rss_bytes", "peak_cuda_bytes",
                  "eval_s")


class ValueHead(torch.nn.Module):
    """V(s) = w . h_last + b on the policy's last hidden state."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.summary = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.normal_(self.summary.weight, std=1.0 / math.sqrt(hidden_size + 1))
        torch.nn.init.zeros_(self.summary.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.summary(hidden.to(self.summary.weight.dtype)).squeeze(-1)


def policy_forward(policy, value_head, input_ids, attention_mask, query_len):
    """Logits and values at the positions that predict response tokens, in one pass over the shared backbone."""
    logits, hidden = response_forward(policy, input_ids, attention_mask, query_len)
    return logits, value_head(hidden)


def trainable_parameters(policy, value_head) -> list[torch.nn.Parameter]:
    return [p for p in policy.parameters() if p.requires_grad] + list(value_head.parameters())


# the additions to TRL 0.11's PPO, each 1.0 (TRL's one learning rate) unless a profile sets it
LR_RATIOS = ("lora_b_lr_ratio", "value_lr_ratio")


def param_groups(policy, value_head, cfg: PPOConfig) -> list[dict]:
    """Adam's parameter groups: one at `learning_rate` (TRL's), or, where `lora_b_lr_ratio` or `value_lr_ratio`
    is not 1, the LoRA B matrices and the value head in groups of their own at that multiple of it."""
    if cfg.lora_b_lr_ratio == 1 and cfg.value_lr_ratio == 1:
        return [{"params": trainable_parameters(policy, value_head), "lr": cfg.learning_rate}]
    named = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
    lora_b = [p for n, p in named if "lora_B" in n]
    if cfg.lora_b_lr_ratio != 1 and not lora_b:
        raise ValueError("lora_b_lr_ratio != 1 needs trainable LoRA B matrices; the policy has none")
    groups = [([p for n, p in named if "lora_B" not in n], 1.0), (lora_b, cfg.lora_b_lr_ratio),
              (list(value_head.parameters()), cfg.value_lr_ratio)]
    return [{"params": params, "lr": cfg.learning_rate * ratio} for params, ratio in groups if params]


# --- the loop --------------------------------------------------------------------------------------


def step_batch(queries: list[list[int]], step: int, cfg: PPOConfig, rng: np.random.Generator):
    """Step `step`'s prompts (the next `batch_size`, cycling) and a response length drawn for each."""
    batch = [queries[(step * cfg.batch_size + i) % len(queries)] for i in range(cfg.batch_size)]
    lengths = rng.integers(cfg.response_len[0], cfg.response_len[1] + 1, size=cfg.batch_size).tolist()
    return batch, lengths


def ppo_epochs(policy, value_head, optimizer, ro: Rollout, old_logprobs, values, advantages, returns,
               cfg: PPOConfig, rng: np.random.Generator, step: int = 0) -> list[list[float]]:
    """`ppo_epochs` passes of Adam over shuffled minibatches of the clipped losses; per minibatch, the policy
    loss, value loss, clip fraction and approximate KL."""
    mask, tokens = ro.response_mask.float(), ro.response_tokens
    params = [p for group in optimizer.param_groups for p in group["params"]]
    stats = []
    for epoch in range(cfg.ppo_epochs):
        order = rng.permutation(cfg.batch_size)
        for i in range(0, cfg.batch_size, cfg.mini_batch_size):
            mb = torch.as_tensor(order[i : i + cfg.mini_batch_size], device=mask.device)
            new_logits, new_values = policy_forward(policy, value_head, *ro.rows(mb))
            new_logprobs = gather_logprobs(log_softmax(new_logits), tokens[mb])
            pg_loss, clipfrac, approx_kl = policy_loss(new_logprobs, old_logprobs[mb], advantages[mb], mask[mb],
                                                       cfg.cliprange)
            vf_loss = value_loss(new_values, values[mb], returns[mb], mask[mb], cfg.cliprange_value)
            loss = pg_loss + cfg.vf_coef * vf_loss
            check_finite(step, policy_loss=pg_loss, value_loss=vf_loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            stats.append([pg_loss.item(), vf_loss.item(), clipfrac.item(), approx_kl.item()])
    return stats


def train(policy, value_head: ValueHead, reference: Reference, tokenizer, queries: list[list[int]], reward_fn,
          config: PPOConfig, evaluator=None, progress: bool = True) -> pd.DataFrame:
    """Run `config.steps` PPO steps; return one row of metrics per step.

    `queries` are token-id lists, taken `batch_size` at a time in order (cycling). `evaluator`
    (helpers.evaluation.Evaluator) is called before the first update and every `evaluator.every` updates.
    """
    cfg = config
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    optimizer = torch.optim.Adam(param_groups(policy, value_head, cfg), lr=cfg.learning_rate)
    kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon) if cfg.adaptive_kl
              else FixedKLController(cfg.init_kl_coef))
    policy.eval()  # no dropout: the ratio is 1 at the first minibatch of every step
    from_generation = lever_on("from_generation")
    if lever_on("pack_forward"):  # the frozen base weights, laid out once for the whole run (helpers.fastpath);
        # a separate reference model too, so that it computes as the policy's own network would (not the
        # evaluation's yardsticks: one forward per evaluation does not pay for a second copy of their weights)
        for model in {id(m): m for m in (policy, getattr(reference, "model", None)) if m is not None}.values():
            pack_frozen_linears(model)
    release_free_memory()  # what setting up freed (the reviews read for the reward's cache) leaves the heap
    if evaluator is not None:
        evaluator(0, policy, reference)
    rows = []
    for step in progress_bar(range(cfg.steps), "PPO", disable=not progress):
        start = time.perf_counter()
        batch, lengths = step_batch(queries, step, cfg, rng)

        # 1. rollout (the fast path keeps generation's logits and hidden states: they are step 3's forward)
        t = time.perf_counter()
        ro = rollout(policy, tokenizer, batch, lengths, keep_logits=from_generation)
        mask, tokens = ro.response_mask.float(), ro.response_tokens
        gen_s = time.perf_counter() - t

        # 2. score: one number per text, placed at the last response token
        t = time.perf_counter()
        scores = reward_fn(ro.texts).to(mask.device).float()
        score_s = time.perf_counter() - t

        with torch.no_grad():
            t = time.perf_counter()
            if ro.hidden is not None:  # the fast path: generation's own forwards, the same weights
                logits, values = ro.logits, value_head(ro.hidden)
                ro.logits = ro.hidden = None
            else:
                logits, values = policy_forward(policy, value_head, *ro.rows(slice(None)))
                ro.logits = None
            logp = log_softmax(logits)
            del logits  # [B, R, vocab]: not needed past here, and it would stay alive through the update
            old_logprobs = gather_logprobs(logp, tokens)
            fwd_s = time.perf_counter() - t
            # 3. the reference: the only line where it enters the computation
            t = time.perf_counter()
            ref_logp = log_softmax(reference.logits(*ro.rows(slice(None))))
            ref_s = time.perf_counter() - t
            ref_logprobs = gather_logprobs(ref_logp, tokens)

            # 4. per-token rewards: KL penalty everywhere, the score at the last token
            kl_coef = kl_ctl.value
            rewards = per_token_rewards(scores, old_logprobs, ref_logprobs, mask, kl_coef)

            # 5. advantages
            advantages, returns = gae(rewards, values * mask, mask, cfg.gamma, cfg.lam)
            advantages = whiten(advantages, mask)

            row = {
                "step": step,
                "reward_mean": scores.mean().item(),
                "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
                "kl_ref": kl_sampled(old_logprobs, ref_logprobs, mask).mean().item(),
                "kl_ref_exact": kl_exact(logp, ref_logp, mask).mean().item(),
                "kl_coef": kl_coef,
                "entropy": entropy(logp, mask).item(),
            }
            del ref_logp, logp
            check_finite(step, kl_ref=row["kl_ref"], rewards=rewards)

        # 6. PPO epochs over shuffled minibatches
        t = time.perf_counter()
        stats = ppo_epochs(policy, value_head, optimizer, ro, old_logprobs, values, advantages, returns, cfg, rng, step)
        update_s = time.perf_counter() - t

        # 7. KL coefficient for the next step
        kl_ctl.update(row["kl_ref"], cfg.batch_size)
        pg, vf, cf, ak = np.mean(stats, axis=0)
        row.update(policy_loss=pg, value_loss=vf, clipfrac=cf, approx_kl=ak,
                   response_len=mask.sum(1).mean().item(), gen_s=gen_s, score_s=score_s, fwd_s=fwd_s, ref_s=ref_s,
                   update_s=update_s, step_time_s=time.perf_counter() - start, **peak_memory())
        rows.append(row)
        if evaluator is not None and evaluator.due(step + 1, cfg.steps):
            evaluator(step + 1, policy, reference)  # after step+1 updates; outside the timed step
    return pd.DataFrame(rows)


def save_ppo(policy, value_head: ValueHead, destination, adapter_name: str = "ppo"):
    """The PPO adapter (safetensors, loadable with peft onto the merged model) and the value head, in one
    atomic step."""


    with atomic_dir(destination) as tmp:
        policy.save_pretrained(tmp, selected_adapters=[adapter_name], safe_serialization=True)
        for f in (Path(tmp) / adapter_name).iterdir():  # peft puts a non-default adapter in a subfolder
            f.rename(Path(tmp) / f.name)
        (Path(tmp) / adapter_name).rmdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()},
                  str(Path(tmp) / "value_head.safetensors"))
    return Path(destination)


def config_from_profile(profile, **overrides) -> PPOConfig:
    """The profile's PPO section (a PPOConfig), with the overrides that are not None."""
    return replace(profile.ppo, **{k: v for k, v in overrides.items() if v is not None})
