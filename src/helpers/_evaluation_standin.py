"""TEMPORARY stand-in for helpers.evaluation (coming from main); deleted once main is merged."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from .models import perplexity
from .ppo import gather_logprobs, kl_exact, rollout


class Evaluator:
    def __init__(self, tokenizer, queries, reward_fn, response_len, every=1, seed=0, samples_per_prompt=1,
                 yardsticks=None, perplexity_texts=None, perplexity_seq_len=64):
        self.tokenizer, self.queries, self.reward_fn = tokenizer, list(queries), reward_fn
        self.response_len, self.every, self.seed = response_len, every, seed
        self.yardsticks = yardsticks or {}
        self.perplexity_texts, self.perplexity_seq_len = perplexity_texts, perplexity_seq_len
        self.rows, self.sample_rows = [], []

    @torch.no_grad()
    def __call__(self, step, policy, reference) -> dict:
        start = time.perf_counter()
        rng = np.random.default_rng(self.seed)
        lengths = rng.integers(self.response_len[0], self.response_len[1] + 1, size=len(self.queries)).tolist()
        torch.manual_seed(self.seed)
        policy.eval()
        ro = rollout(policy, self.tokenizer, self.queries, lengths)
        scores = self.reward_fn(ro.texts).float()
        mask = ro.response_mask.float()
        logits = ro.response_logits(policy(input_ids=ro.input_ids, attention_mask=ro.attention_mask).logits)
        row = {"step": step, "reward_mean": scores.mean().item(),
               "reward_se": (scores.std() / len(scores) ** 0.5).item()}
        ref_logits = ro.response_logits(reference.logits(ro.input_ids, ro.attention_mask))
        row["kl_ref_exact"] = kl_exact(logits, ref_logits, mask).mean().item()
        for name, stick in self.yardsticks.items():
            y = ro.response_logits(stick.logits(ro.input_ids, ro.attention_mask))
            row[f"kl_{name}_exact"] = kl_exact(logits, y, mask).mean().item()
        if self.perplexity_texts:
            row["perplexity"] = perplexity(policy, self.tokenizer, self.perplexity_texts, self.perplexity_seq_len)
        row["eval_s"] = time.perf_counter() - start
        self.rows.append(row)
        for i, (q, r, s) in enumerate(zip(self.queries, ro.responses, scores.tolist())):
            self.sample_rows.append({"step": step, "prompt": i, "sample": 0,
                                     "query": self.tokenizer.decode(q, skip_special_tokens=True),
                                     "response": r, "reward": s})
        return row

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def samples(self) -> pd.DataFrame:
        return pd.DataFrame(self.sample_rows)
