"""Evaluation during training: the curve a learner reads.

The per-step reward of a PPO run is measured on that step's batch: new prompts every step, so it swings
with which prompts came up. An `Evaluator` instead samples responses to the same held-out prompts, with
the same lengths and the same sampling seed, every time it is called, and reports

- the mean reward and its standard error over prompts,
- the exact KL per token (whole vocabulary) to the reference and to any yardstick models,
- optionally the policy's held-out IMDB perplexity.

Because prompts, lengths and seed never change, per-prompt rewards pair across evaluations (before and
after training) and across runs that share a seed (the arms of notebook 04). Sampling runs inside
`torch.random.fork_rng`, so evaluating never changes the training run's random stream.
"""

from __future__ import annotations

import math
import time
from contextlib import ExitStack

import numpy as np
import pandas as pd
import torch
from scipy import stats

from .models import perplexity
from .ppo_math import kl_exact, log_softmax
from .reference import Reference
from .sampling import rollout
from .settings import evaluation_steps


class Evaluator:
    def __init__(self, tokenizer, queries: list[list[int]], reward_fn, response_len: tuple[int, int], every: int = 5,
                 seed: int = 1234, samples_per_prompt: int = 1, yardsticks: dict[str, Reference] | None = None,
                 perplexity_texts: list[str] | None = None, perplexity_seq_len: int = 64):
        if every < 1:
            raise ValueError(f"every must be >= 1, not {every}")
        self.tokenizer, self.queries, self.reward_fn = tokenizer, list(queries), reward_fn
        self.every, self.seed, self.yardsticks = every, seed, dict(yardsticks or {})
        self.perplexity_texts, self.perplexity_seq_len = perplexity_texts, perplexity_seq_len
        rng = np.random.default_rng(seed)  # one length per (sample, prompt), fixed for every evaluation
        self.lengths = rng.integers(response_len[0], response_len[1] + 1, size=(samples_per_prompt, len(queries)))
        self.query_texts = [tokenizer.decode(q, skip_special_tokens=True) for q in self.queries]
        self._rows: list[dict] = []
        self._samples: list[pd.DataFrame] = []

    def due(self, updates: int, total: int) -> bool:
        """Evaluate before the first update, after every `every` updates, and after the last."""
        return updates in evaluation_steps(total, self.every)

    @torch.no_grad()
    def __call__(self, step: int, policy, reference: Reference) -> dict:
        """Evaluate `policy` after `step` updates; returns (and keeps) one row of the table."""
        start = time.perf_counter()
        policy.eval()
        rewards, kls = [], {"ref": [], **{name: [] for name in self.yardsticks}}
        with ExitStack() as stack:
            cuda = [torch.cuda.current_device()] if torch.cuda.is_available() else []
            stack.enter_context(torch.random.fork_rng(devices=cuda))
            torch.manual_seed(self.seed)
            for sample, lengths in enumerate(self.lengths):
                ro = rollout(policy, self.tokenizer, self.queries, lengths.tolist(), keep_logits=True)
                scores = self.reward_fn(ro.texts).float().cpu()
                rewards.append(scores)
                mask = ro.response_mask.float()
                logp = log_softmax(ro.logits)  # the policy's own, from generation: no second forward
                for name, model in [("ref", reference), *self.yardsticks.items()]:
                    kls[name].append(kl_exact(logp, log_softmax(model.logits(*ro.rows(slice(None)))), mask).cpu())
                self._samples.append(pd.DataFrame({
                    "step": step, "prompt": range(len(self.queries)), "sample": sample, "query": self.query_texts,
                    "response": ro.responses, "reward": scores.tolist()}))
        per_prompt = torch.stack(rewards).mean(0)  # average the samples of a prompt: prompts are the units
        n = len(per_prompt)
        row = {"step": step, "reward_mean": per_prompt.mean().item(),
               "reward_se": per_prompt.std().item() / math.sqrt(n) if n > 1 else float("nan"),
               **{f"kl_{name}_exact": torch.cat(values).mean().item() for name, values in kls.items()}}
        if self.perplexity_texts:
            row["perplexity"] = perplexity(policy, self.tokenizer, self.perplexity_texts, self.perplexity_seq_len)
        row["eval_s"] = time.perf_counter() - start
        self._rows.append(row)
        return row

    def table(self) -> pd.DataFrame:
        """One row per evaluation: step (updates done), reward_mean, reward_se, kl_ref_exact,
        kl_<yardstick>_exact, perplexity (if asked for), eval_s."""
        return pd.DataFrame(self._rows)

    def samples(self) -> pd.DataFrame:
        """Every sampled response: step, prompt (index), sample, query, response, reward."""
        return pd.concat(self._samples, ignore_index=True) if self._samples else pd.DataFrame(
            columns=["step", "prompt", "sample", "query", "response", "reward"])


def paired_gain(samples: pd.DataFrame, before: int, after: int) -> dict:
    """Mean per-prompt reward difference between two evaluations of the same prompts, its standard error
    and 95% interval (t over prompts), and how many standard errors it is from zero."""
    per_prompt = samples.groupby(["step", "prompt"])["reward"].mean().unstack("step")
    diff = (per_prompt[after] - per_prompt[before]).to_numpy()
    mean, low, high, n = t_interval(diff)
    se = diff.std(ddof=1) / math.sqrt(n)
    return {"prompts": n, "before": per_prompt[before].mean(), "after": per_prompt[after].mean(), "gain": mean,
            "se": se, "ci_low": low, "ci_high": high, "z": mean / se if se > 0 else float("inf")}


def t_interval(values) -> tuple[float, float, float, int]:
    """(mean, low, high, n): the 95% t-interval of the mean; low = high = NaN for fewer than 2 values."""
    x = np.asarray(values, dtype=float)
    n, mean = len(x), float(np.mean(x)) if len(x) else math.nan
    if n < 2:
        return mean, math.nan, math.nan, n
    half = stats.t.ppf(0.975, n - 1) * float(np.std(x, ddof=1)) / math.sqrt(n)
    return mean, mean - half, mean + half, n
