"""The figures of notebooks 01-03 (the comparison's and the study's are helpers.harness.figures); each returns a matplotlib Figure (saved with artifacts.save_figure)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import LogFormatter
from scipy import stats


def sft_perplexity(curve: pd.DataFrame, base_ppl: float):
    """Held-out perplexity of base + adapter during SFT (`helpers.sft.train_sft`'s curve), against the base's."""
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.axhline(base_ppl, color="#7f7f7f", linestyle="--", label=f"base model: {base_ppl:.1f}")
    ax.plot(curve["step"], curve["perplexity"], marker="o", color="#1f77b4", label="base + SFT adapter")
    # log scale: perplexity is exp(loss), so equal heights are equal changes in loss (early spikes stay on the plot)
    ax.set(xlabel="optimizer step", ylabel="held-out perplexity (log scale)", title="SFT on IMDB reviews", yscale="log")
    for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis_formatter(LogFormatter())  # plain numbers (60, not 6×10¹)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend()
    fig.tight_layout()
    return fig


def t_band(mean, se, n):
    """A 95% t-interval: mean -/+ t(0.975, n - 1) * se."""
    half = stats.t.ppf(0.975, max(n - 1, 1)) * se
    return mean - half, mean + half


def ppo_curves(metrics: pd.DataFrame, evaluation: pd.DataFrame, prompts: int, title: str = "PPO"):
    """Evaluation reward on fixed held-out prompts (95% band) with the per-batch reward faint behind it, and
    the exact KL per token to the reference; KL to the base and perplexity where the evaluation measured them
    (does the policy stay in the domain?); the KL coefficient gets a panel only if it moved (> 5%)."""
    beta_moved = metrics["kl_coef"].max() / metrics["kl_coef"].min() - 1 > 0.05
    extra = [c for c in ("kl_base_exact", "perplexity") if c in evaluation]
    n = 2 + len(extra) + beta_moved
    rows = -(-n // 2)  # a grid two panels wide: a strip of four is unreadable at a notebook's width
    fig, grid = plt.subplots(rows, 2, figsize=(11, 3.8 * rows), sharex=True, squeeze=False)
    axes = list(grid.flat)
    for spare in axes[n:]:
        spare.set_visible(False)
    axes = axes[:n]
    ax = axes[0]
    ax.plot(metrics["step"], metrics["reward_mean"], color="0.6", alpha=0.6, linewidth=1, marker=".",
            label="this step's batch (new prompts each step)")
    low, high = t_band(evaluation["reward_mean"], evaluation["reward_se"], prompts)
    ax.fill_between(evaluation["step"], low, high, alpha=0.25, color="C0")
    ax.plot(evaluation["step"], evaluation["reward_mean"], marker="o", color="C0",
            label=f"{prompts} fixed held-out prompts (95% CI)")
    ax.set(xlabel="PPO steps done", ylabel="reward (reward-model logit)", title="reward")
    ax.legend(fontsize=9)
    ax = axes[1]
    ax.plot(metrics["step"], metrics["kl_ref_exact"], color="0.6", alpha=0.6, linewidth=1, marker=".",
            label="this step's batch")
    ax.plot(evaluation["step"], evaluation["kl_ref_exact"], marker="o", color="C3", label="held-out prompts")
    ax.set(xlabel="PPO steps done", ylabel="KL(policy ‖ reference), nats per token", title="KL to the reference")
    ax.legend(fontsize=9)
    labels = {"kl_base_exact": ("KL(policy ‖ base model), nats per token", "KL to the base (yardstick)"),
              "perplexity": ("perplexity", "held-out IMDB perplexity")}
    for ax, column in zip(axes[2:], extra):
        ax.plot(evaluation["step"], evaluation[column], marker="o", color="C2", label="held-out")
        ax.set(xlabel="PPO steps done", ylabel=labels[column][0], title=labels[column][1])
    if beta_moved:
        axes[-1].plot(metrics["step"], metrics["kl_coef"], marker="o")
        axes[-1].set(xlabel="PPO steps done", ylabel="β (penalty per nat)", title="KL coefficient")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    beta = "" if beta_moved else f"; β = {metrics['kl_coef'].iloc[0]:.3g} throughout (moved < 5%)"
    fig.suptitle(title + beta)
    fig.tight_layout()
    return fig
