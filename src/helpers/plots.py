"""The figures the notebooks show; each returns a matplotlib Figure (saved with artifacts.save_figure)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.ticker import LogFormatter

# one fixed style per arm, the same in every figure. Arms whose curves coincide (a copy and its
# one-backbone twin; stacked and merged+disabled) get a wide line under a narrow one, so both stay visible.
ARM_STYLES = {
    "merged+disabled": dict(color="#1f77b4", linestyle="-", linewidth=5, marker="o", alpha=0.6),
    "merged+copy": dict(color="#0b2f55", linestyle="--", linewidth=1.5, marker=None, alpha=1.0),
    "adapter+disabled": dict(color="#d62728", linestyle="-", linewidth=5, marker="o", alpha=0.6),
    "adapter+copy": dict(color="#5c0a0b", linestyle="--", linewidth=1.5, marker=None, alpha=1.0),
    "adapter+ref-adapter": dict(color="#2ca02c", linestyle=":", linewidth=2.5, marker="^", alpha=1.0),
    "stacked": dict(color="#9467bd", linestyle="-.", linewidth=1.5, marker="x", alpha=1.0),
    "base+disabled": dict(color="#7f7f7f", linestyle="-", linewidth=2.5, marker="s", alpha=0.9),
}
ARM_COLORS = {arm: style["color"] for arm, style in ARM_STYLES.items()}


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
    from scipy import stats

    half = stats.t.ppf(0.975, max(n - 1, 1)) * se
    return mean - half, mean + half


def ppo_curves(metrics: pd.DataFrame, evaluation: pd.DataFrame, prompts: int, title: str = "PPO"):
    """Evaluation reward on fixed held-out prompts (95% band) with the per-batch reward faint behind it, and
    the exact KL per token to the reference; the KL coefficient gets a panel only if it moved (> 5%)."""
    beta_moved = metrics["kl_coef"].max() / metrics["kl_coef"].min() - 1 > 0.05
    fig, axes = plt.subplots(1, 3 if beta_moved else 2, figsize=(14 if beta_moved else 10.5, 3.6))
    ax = axes[0]
    ax.plot(metrics["step"], metrics["reward_mean"], color="0.6", alpha=0.6, linewidth=1, marker=".",
            label="this step's batch (new prompts each step)")
    low, high = t_band(evaluation["reward_mean"], evaluation["reward_se"], prompts)
    ax.fill_between(evaluation["step"], low, high, alpha=0.25, color="C0")
    ax.plot(evaluation["step"], evaluation["reward_mean"], marker="o", color="C0",
            label=f"{prompts} fixed held-out prompts (95% CI)")
    ax.set(xlabel="PPO updates", ylabel="reward (reward-model logit)", title="reward")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(metrics["step"], metrics["kl_ref_exact"], color="0.6", alpha=0.6, linewidth=1, marker=".",
            label="this step's batch")
    ax.plot(evaluation["step"], evaluation["kl_ref_exact"], marker="o", color="C3", label="held-out prompts")
    ax.set(xlabel="PPO updates", ylabel="KL(policy ‖ reference), nats per token", title="KL to the reference")
    ax.legend(fontsize=8)
    if beta_moved:
        axes[2].plot(metrics["step"], metrics["kl_coef"], marker="o")
        axes[2].set(xlabel="PPO updates", ylabel="β (penalty per nat)", title="KL coefficient")
    for ax in axes:
        ax.xaxis.get_major_locator().set_params(integer=True)
    beta = "" if beta_moved else f"; β = {metrics['kl_coef'].iloc[0]:.3g} throughout (moved < 5%)"
    fig.suptitle(title + beta)
    fig.tight_layout()
    return fig


def comparison_curves(metrics: pd.DataFrame):
    """The two plots the tutorial exists for (reward and KL to the arm's own reference per step), plus the
    common yardstick: KL to the SFT model."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    panels = [("reward_mean", "mean reward"), ("kl_ref_exact", "KL to the arm's own reference (penalised)"),
              ("kl_sft_exact", "KL to the SFT model (yardstick)")]
    for ax, (column, title) in zip(axes, panels):
        for arm, rows in metrics.groupby("arm", sort=False):
            ax.plot(rows["step"], rows[column], label=arm, markersize=5, **ARM_STYLES.get(arm, {}))
        ax.set(xlabel="PPO step", title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
    axes[1].set_ylabel("exact KL per token (nats)")
    axes[2].set_ylabel("exact KL per token (nats)")
    axes[0].set_ylabel("reward")
    axes[2].legend(fontsize=8, loc="best")
    fig.suptitle("Which reference model? Same seed, prompts, reward and hyperparameters in every arm")
    fig.tight_layout()
    return fig


def memory_and_time(summary: pd.DataFrame):
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6))
    colors = [ARM_COLORS.get(a) for a in summary["arm"]]
    axes[0].barh(summary["arm"], summary["model_bytes"] / 2**20, color=colors)
    axes[0].set(xlabel="MiB of weights the arm holds", title="memory: backbones + adapters + value head")
    axes[1].barh(summary["arm"], summary["step_time_s"], color=colors)
    axes[1].set(xlabel="seconds per PPO step", title="time")
    for ax in axes:
        ax.invert_yaxis()
    fig.tight_layout()
    return fig
