"""The figures the notebooks show; each returns a matplotlib Figure (saved with artifacts.save_figure)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd


def arm_style(arm: str) -> dict:
    """The arm's line style from the one arm registry (helpers.compare.ARMS); unknown arms get matplotlib's."""
    from .compare import ARMS

    return dict(ARMS[arm].style) if arm in ARMS else {}


def sft_loss(losses: list[float]):
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot(range(1, len(losses) + 1), losses, marker="o")
    ax.set(xlabel="logging step", ylabel="training loss", title="SFT: causal-LM loss on IMDB reviews")
    fig.tight_layout()
    return fig


def ppo_curves(metrics: pd.DataFrame, title: str = "PPO"):
    """Reward, KL to the reference, and KL coefficient per step of one run."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    axes[0].plot(metrics["step"], metrics["reward_mean"], marker="o")
    axes[0].fill_between(metrics["step"], metrics["reward_mean"] - metrics["reward_std"],
                         metrics["reward_mean"] + metrics["reward_std"], alpha=0.2)
    axes[0].set(xlabel="step", ylabel="reward", title="mean reward (± std)")
    axes[1].plot(metrics["step"], metrics["kl_ref"], marker="o", label="sampled, summed over response")
    axes[1].plot(metrics["step"], metrics["kl_ref_exact"], marker=".", label="exact, per token")
    axes[1].set(xlabel="step", ylabel="KL(policy ‖ reference)", title="KL to the reference")
    axes[1].legend(fontsize=8)
    axes[2].plot(metrics["step"], metrics["kl_coef"], marker="o")
    axes[2].set(xlabel="step", ylabel="β", title="KL coefficient")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def seed_band(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per arm and step: mean over seeds and its 95% t-interval (low = high = mean for one seed)."""
    from .compare import t_interval

    rows = []
    for (arm, step), group in table.dropna(subset=[column]).groupby(["arm", "step"], sort=False):
        mean, low, high, n = t_interval(group[column])
        rows.append({"arm": arm, "step": step, "mean": mean, "low": mean if n < 2 else low,
                     "high": mean if n < 2 else high, "n": n})
    return pd.DataFrame(rows)


def _band_plot(ax, table: pd.DataFrame, column: str):
    for arm, band in seed_band(table, column).groupby("arm", sort=False):
        style = arm_style(arm)
        ax.plot(band["step"], band["mean"], label=f"{arm} (n={band['n'].max()})", markersize=5, **style)
        if band["n"].max() > 1:
            ax.fill_between(band["step"], band["low"], band["high"], color=style.get("color"), alpha=0.15, linewidth=0)
    ax.xaxis.get_major_locator().set_params(integer=True)


def comparison_curves(results):
    """Every arm over training, mean over paired seeds with its 95% confidence band. Top: held-out
    evaluations (the same prompts for every arm). Bottom: per training step, on the training rollouts."""
    fig, axes = plt.subplots(2, 3, figsize=(16, 8))
    panels = [
        (results.evaluation, "reward_mean", "held-out reward", "reward (VADER compound)"),
        (results.evaluation, "perplexity", "held-out IMDB perplexity", "perplexity"),
        (results.metrics, "kl_ref_exact", "KL to the arm's own reference (penalised)", "KL per token (nats)"),
        (results.metrics, "kl_sft_exact", "KL to the SFT model (yardstick)", "KL per token (nats)"),
        (results.metrics, "kl_base_exact", "KL to the base model (yardstick)", "KL per token (nats)"),
        (results.metrics, "reward_mean", "training-batch reward (new prompts each step)", "reward (VADER compound)"),
    ]
    for ax, (table, column, title, ylabel) in zip(axes.flat, panels):
        if column in table:
            _band_plot(ax, table, column)
        ax.set(xlabel="PPO step", ylabel=ylabel, title=title)
    axes[0, 0].legend(fontsize=8, loc="best")
    fig.suptitle("Which reference model? Mean over paired seeds, shaded: 95% confidence interval")
    fig.tight_layout()
    return fig


def penalty_alone(results):
    """The reward switched off: only the KL penalty trains. Per step, KL to the base and perplexity."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, column, title, ylabel in [(axes[0], "kl_base_exact", "KL to the base model", "KL per token (nats)"),
                                      (axes[1], "perplexity", "held-out IMDB perplexity", "perplexity")]:
        _band_plot(ax, results.evaluation, column)
        ax.set(xlabel="PPO step (reward off)", ylabel=ylabel, title=title)
    axes[0].legend(fontsize=8)
    fig.suptitle("The penalty alone pulls the policy towards its reference (mean, 95% band over seeds)")
    fig.tight_layout()
    return fig


def frontier(results):
    """Held-out reward against KL per token to the SFT model at each evaluation (mean over paired seeds;
    the intervals are in `comparison_curves`): what each arm pays, in drift from the SFT model, for its reward."""
    fig, ax = plt.subplots(figsize=(7, 4.6))
    x, y = seed_band(results.evaluation, "kl_sft_exact"), seed_band(results.evaluation, "reward_mean")
    both = x.merge(y, on=["arm", "step"], suffixes=("_x", "_y"))
    for arm, rows in both.groupby("arm", sort=False):
        style = arm_style(arm)
        ax.plot(rows["mean_x"], rows["mean_y"], label=arm, color=style.get("color"), marker=style.get("marker") or "o",
                linestyle=style.get("linestyle", "-"), alpha=0.8, markersize=5)
        last = rows.iloc[-1]
        ax.annotate(f"step {int(last['step'])}", (last["mean_x"], last["mean_y"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4), color=style.get("color"))
    ax.set(xlabel="KL per token to the SFT model (nats, held-out prompts)", ylabel="held-out reward (VADER compound)",
           title="Reward–KL frontier: each arm from step 0 (left) to its last evaluation")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def memory_and_time(summary: pd.DataFrame):
    """Per arm: weights held, memory grown while training (CPU RSS, or CUDA peak above the yardsticks),
    and seconds per step (median, whiskers min-max over every seed's steps after the warm-up)."""
    cuda = bool(summary["peak_cuda_bytes"].gt(0).any())
    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
    colors = [arm_style(a).get("color") for a in summary["arm"]]
    axes[0].barh(summary["arm"], summary["model_bytes"] / 2**20, color=colors)
    axes[0].set(xlabel="MiB", title="weights held: backbones + adapters + value head")
    grown = summary["peak_cuda_bytes"] if cuda else summary["rss_growth_bytes"]
    axes[1].barh(summary["arm"], grown / 2**20, color=colors)
    axes[1].set(xlabel="MiB", title="peak CUDA memory above the yardsticks" if cuda
                else "resident memory grown while training (CPU RSS)")
    t = summary["step_time_s"]
    axes[2].barh(summary["arm"], t, color=colors,
                 xerr=[t - summary["step_time_min_s"], summary["step_time_max_s"] - t], capsize=3)
    axes[2].set(xlabel="seconds per PPO step", title="time: median, whiskers min–max (warm-up step excluded)")
    for ax in axes:
        ax.invert_yaxis()
    for ax in axes[1:]:
        ax.set_yticklabels([])
    fig.tight_layout()
    return fig
