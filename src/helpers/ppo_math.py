"""PPO's math for language models, each piece small enough to test by hand (tests/test_ppo_math.py checks
them against TRL 0.11.4's): the KL controllers, masked statistics and whitening, GAE, the clipped policy and
value losses, the KL estimators, and the per-token rewards. helpers.ppo puts them together, step by step."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class NonFiniteError(FloatingPointError):
    """A loss or KL became NaN or infinite; the message names the step and the quantity."""


class AdaptiveKLController:
    """Ziegler et al.: kl_coef *= 1 + clip(KL / target - 1, -0.2, 0.2) * n_steps / horizon."""

    def __init__(self, init: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = float(np.clip(current_kl / self.target - 1, -0.2, 0.2))
        self.value *= 1 + error * n_steps / self.horizon


class FixedKLController:
    def __init__(self, value: float):
        self.value = value

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    return (x * mask).sum(dim) / mask.sum(dim)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased variance over the masked entries (Bessel's n / (n - 1)), as TRL 0.11's `masked_var`."""
    n = mask.sum()
    if n < 2:
        raise ValueError("whitening needs at least two unmasked entries")
    return masked_mean((x - masked_mean(x, mask)) ** 2, mask) * n / (n - 1)


def whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """TRL 0.11's `masked_whiten`: (x - mean) / sqrt(var + 1e-8) over the masked entries, unbiased variance;
    `shift_mean=False` adds the mean back. Padding is set to 0 (TRL left it; every loss masks it out)."""
    mean = masked_mean(x, mask)
    out = (x - mean) * torch.rsqrt(masked_var(x, mask) + 1e-8)
    if not shift_mean:
        out = out + mean
    return out * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation over right-padded responses; returns (advantages, returns)."""
    T = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        not_done = mask[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        next_value = values[:, t + 1] * not_done if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = delta + gamma * lam * not_done * last
        advantages[:, t] = last
    advantages = advantages * mask
    return advantages, (advantages + values) * mask


def policy_loss(logprobs, old_logprobs, advantages, mask, cliprange):
    """Clipped surrogate: max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)); also clip fraction, approx KL."""
    logratio = logprobs - old_logprobs
    ratio = torch.exp(logratio)
    pg_loss1 = -advantages * ratio
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    pg_loss = masked_mean(torch.max(pg_loss1, pg_loss2), mask)
    with torch.no_grad():
        clipfrac = masked_mean((pg_loss2 > pg_loss1).float(), mask)
        approx_kl = masked_mean((ratio - 1) - logratio, mask)  # k3 estimator of KL(old || new)
    return pg_loss, clipfrac, approx_kl


def value_loss(values, old_values, returns, mask, cliprange_value):
    """0.5 * max((V - R)^2, (V_clipped - R)^2), V_clipped within cliprange_value of the rollout's V."""
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (values_clipped - returns) ** 2), mask)


def kl_sampled(logprobs, ref_logprobs, mask) -> torch.Tensor:
    """Per sequence: sum over the response of log pi - log pi_ref at the sampled tokens (unbiased for
    the sequence KL; what the per-token penalty adds up to)."""
    return ((logprobs - ref_logprobs) * mask).sum(-1)


def over_rows(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """`fn` applied to one batch row at a time, the results concatenated: a sum over the vocabulary then
    makes [R, vocab] temporaries instead of [B, R, vocab] ones (25 MiB each on smol at batch 8). The same
    values, bit for bit: each row is reduced exactly as in the whole batch."""
    return torch.cat([fn(*rows) for rows in zip(*(t.split(1) for t in tensors))])


def kl_exact(logp, ref_logp, mask) -> torch.Tensor:
    """Per sequence: the exact KL(pi || pi_ref) over the whole vocabulary, averaged over response tokens.
    Takes log-probabilities (`log_softmax` of the logits)."""
    per_token = over_rows(lambda p, q: (p.exp() * (p - q)).sum(-1), logp, ref_logp)
    return masked_mean(per_token, mask, dim=-1)


def entropy(logp, mask) -> torch.Tensor:
    """Mean entropy per response token, from log-probabilities."""
    return masked_mean(over_rows(lambda p: -(p.exp() * p).sum(-1), logp), mask)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return F.log_softmax(logits.float(), -1)


def gather_logprobs(logp: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log pi(token) at each position, from log-probabilities [B, R, V] and tokens [B, R]."""
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


def check_finite(step: int, **quantities) -> None:
    for name, value in quantities.items():
        value = torch.as_tensor(value)
        if not torch.isfinite(value).all():
            raise NonFiniteError(f"PPO step {step}: {name} is not finite ({value.flatten()[:4].tolist()}). "
                                 f"Lower the learning rate or the KL coefficient.")


def per_token_rewards(scores, logprobs, ref_logprobs, mask, kl_coef: float) -> torch.Tensor:
    """-kl_coef * (log pi - log pi_ref) at every response token, plus the score at the last one."""
    rewards = -kl_coef * (logprobs - ref_logprobs) * mask
    last = mask.sum(1).long() - 1
    rewards[torch.arange(len(last)), last] += scores
    return rewards
