"""The figures of notebook 04 and the study (05): every arm in its one style from the arm registry; each
returns a matplotlib Figure (saved with helpers.artifacts.save_figure)."""

from __future__ import annotations

import textwrap

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..evaluation import t_interval
from ..grpo import GRPO_ARMS
from .arms import ARMS
from .verdicts import paired_values


def arm_style(arm: str) -> dict:
    """The arm's line style from the one arm registry (helpers.harness.arms.ARMS); a GRPO arm (helpers.grpo) has
    its PPO twin's colour; unknown arms get matplotlib's."""
    if arm in GRPO_ARMS:
        return {**ARMS[GRPO_ARMS[arm].ppo_twin].style, "linewidth": 2.5, "alpha": 0.9}
    return dict(ARMS[arm].style) if arm in ARMS else {}


def seed_band(table: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per arm and step: mean over seeds and its 95% t-interval (low = high = mean for one seed)."""
    rows = []
    for (arm, step), group in table.dropna(subset=[column]).groupby(["arm", "step"], sort=False):
        mean, low, high, n = t_interval(group[column])
        rows.append({"arm": arm, "step": step, "mean": mean, "low": mean if n < 2 else low,
                     "high": mean if n < 2 else high, "n": n})
    return pd.DataFrame(rows)


def _band_plot(ax, table: pd.DataFrame, column: str):
    """Mean over seeds (n in the legend; n=1 is that seed's own curve), its 95% band, and each seed's value as a
    small dot: with 3 seeds the t-band (t = 4.3) is wide, the dots show the spread it is made of."""
    for arm, band in seed_band(table, column).groupby("arm", sort=False):
        style = arm_style(arm)
        n = band["n"].max()
        seeds = sorted(table[table["arm"] == arm]["seed"].unique())
        label = f"{arm} (n={n})" if n > 1 else f"{arm} (seed {seeds[0]} only)"
        ax.plot(band["step"], band["mean"], label=label, markersize=5, **style)
        if n > 1:
            ax.fill_between(band["step"], band["low"], band["high"], color=style.get("color"), alpha=0.12, linewidth=0)
            points = table[table["arm"] == arm].dropna(subset=[column])
            ax.scatter(points["step"], points[column], s=9, color=style.get("color"), alpha=0.5, linewidths=0)
    ax.xaxis.get_major_locator().set_params(integer=True)


def comparison_curves(results):
    """Every arm over training, mean over paired seeds with its 95% confidence band. Top: the held-out
    evaluations (the same prompts for every arm): reward, and KL to the two yardsticks. Bottom: held-out
    perplexity, then per training step on that step's rollouts: KL to the arm's own reference (what PPO
    penalises) and the training batch's reward."""
    fig, axes = plt.subplots(2, 3, figsize=(16, 8), sharex=True)  # one step axis for the held-out and training panels
    panels = [
        (results.evaluation, "reward_mean", "held-out reward", "reward (reward-model score)"),
        (results.evaluation, "kl_sft_exact", "held-out KL to the SFT model (yardstick)", "KL per token (nats)"),
        (results.evaluation, "kl_base_exact", "held-out KL to the base model (yardstick)", "KL per token (nats)"),
        (results.evaluation, "perplexity", "held-out IMDB perplexity", "perplexity"),
        (results.metrics, "kl_ref_exact", "KL to the arm's own reference (penalised; training rollouts)",
         "KL per token (nats)"),
        (results.metrics, "reward_mean", "training-batch reward (new prompts each step)",
         "reward (reward-model score)"),
    ]
    for ax, (table, column, title, ylabel) in zip(axes.flat, panels):
        if column in table:
            _band_plot(ax, table, column)
        ax.set(xlabel="PPO steps done", ylabel=ylabel, title=title)
    axes[0, 0].legend(fontsize=9, loc="best")
    fig.suptitle("Which reference model? Mean over paired seeds, shaded: 95% confidence interval")
    fig.tight_layout()
    return fig


def penalty_alone(results):
    """The reward switched off: only the KL penalty trains. Per evaluation: KL to the base, KL to the SFT
    model, and perplexity (mean over seeds with its 95% band, and each seed)."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2), sharex=True)
    for ax, column, title, ylabel in [(axes[0], "kl_base_exact", "KL to the base model", "KL per token (nats)"),
                                      (axes[1], "kl_sft_exact", "KL to the SFT model", "KL per token (nats)"),
                                      (axes[2], "perplexity", "held-out IMDB perplexity", "perplexity")]:
        _band_plot(ax, results.evaluation, column)
        ax.set(xlabel="PPO steps done (reward off)", ylabel=ylabel, title=title)
    axes[0].legend(fontsize=9)
    fig.suptitle("The penalty alone, reward off: where each reference takes the policy (held-out prompts)")
    fig.tight_layout()
    return fig


def frontier(results):
    """Held-out reward against KL per token to the SFT model at each evaluation (mean over paired seeds, with
    95% intervals on both): what each arm pays, in drift from the SFT model, for its reward."""
    fig, ax = plt.subplots(figsize=(8, 5.2))
    x, y = seed_band(results.evaluation, "kl_sft_exact"), seed_band(results.evaluation, "reward_mean")
    both = x.merge(y, on=["arm", "step"], suffixes=("_x", "_y"))
    for arm, rows in both.groupby("arm", sort=False):
        style = arm_style(arm)
        n = int(rows["n_x"].max())
        ax.errorbar(rows["mean_x"], rows["mean_y"], xerr=[rows["mean_x"] - rows["low_x"], rows["high_x"] - rows["mean_x"]],
                    yerr=[rows["mean_y"] - rows["low_y"], rows["high_y"] - rows["mean_y"]], label=f"{arm} (n={n})",
                    color=style.get("color"), marker=style.get("marker") or "o", linestyle=style.get("linestyle", "-"),
                    alpha=0.8, markersize=5, elinewidth=0.8, capsize=2)
        last = rows.iloc[-1]
        ax.annotate(f"step {int(last['step'])}", (last["mean_x"], last["mean_y"]), fontsize=9,
                    textcoords="offset points", xytext=(4, 4), color=style.get("color"))
    ax.set(xlabel="KL per token to the SFT model (nats, held-out prompts)",
           ylabel="held-out reward (reward-model score)",
           title="Reward–KL frontier: each arm from step 0 (left) to its last evaluation;\n"
                 "bars: 95% intervals over its seeds (n in the legend; n=1: that seed's values)")
    ax.legend(fontsize=9)
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
    split = not cuda and summary.get("rss_file_growth_bytes", pd.Series(dtype=float)).notna().all()
    if cuda or not split:
        grown = summary["peak_cuda_bytes"] if cuda else summary["rss_growth_bytes"]
        axes[1].barh(summary["arm"], grown / 2**20, color=colors)
    else:  # the weights' memory-mapped file pages, paged in by the first forward, and what training made
        file, anon = summary["rss_file_growth_bytes"] / 2**20, summary["rss_anon_growth_bytes"] / 2**20
        axes[1].barh(summary["arm"], file, color=colors, alpha=0.45, label="file pages (the mapped weights)")
        axes[1].barh(summary["arm"], anon, left=file, color=colors,
                     label="anonymous (activations, gradients, Adam, allocator)")
        # below the axis: inside it, the legend would hide the bottom arm's bar
        axes[1].legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, frameon=False)
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


# --- the full study (notebook 05) ----------------------------------------------------------------------------


def dose_response(results, claims, slopes: pd.DataFrame | None = None, arm: str = "adapter+disabled",
                  title: str = "Dose-response: the pitfall (reference = base) against its control (reference = SFT adapter)"):
    """Each of the pitfall's effects (arm minus control, per paired seed) against β: per-seed points, the mean
    with its 95% interval, and the fitted slope per ×10 of β with its interval (from the findings table).
    `arm`: the pitfall's name in the study (the PPO study's by default)."""
    by_measure = {}
    for c in claims:
        if c.beta is not None and not c.over_beta and c.kind == "finding" and c.arm == arm:
            by_measure.setdefault(c.measure, []).append(c)
    rows, cols = (2, 2) if len(by_measure) == 4 else (1, len(by_measure))  # four panels as a square, not a strip
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 4.6 * rows), squeeze=False)
    first = axes.flat[0]
    for ax, (measure, cs) in zip(axes.flat, by_measure.items()):
        points = []  # each β's per-seed values, for the points and for the fitted line's centre
        for i, c in enumerate(sorted(cs, key=lambda c: c.beta)):
            unit, values = paired_values(results.select(c.study, c.beta), c)
            points.append(values)
            if not len(values):
                continue
            jitter = c.beta * 10 ** (0.04 * (np.arange(len(values)) - (len(values) - 1) / 2) / max(len(values), 1))
            ax.scatter(jitter, values, s=14, color="#d62728", alpha=0.45, linewidths=0,
                       label="one paired seed" if i == 0 else None)
            mean, low, high, n = t_interval(values)
            if n > 1:
                ax.errorbar([c.beta], [mean], yerr=[[mean - low], [high - mean]], color="black", marker="o",
                            capsize=4, label="mean, 95% CI" if i == 0 else None)
        ax.axhline(0, color="0.5", linewidth=0.8)
        ax.set_xscale("log")
        betas = sorted(c.beta for c in cs)
        ax.set_xticks(betas, [f"{b:g}" for b in betas])
        ax.xaxis.set_minor_locator(plt.NullLocator())
        panel = cs[0].claim
        if slopes is not None:
            row = slopes[slopes["key"] == cs[0].key]
            if len(row):
                r = row.iloc[0]
                panel += f"\nslope {r.effect:+.3g} per ×10 β [{r.ci_low:+.3g}, {r.ci_high:+.3g}]: {r.verdict}"
                # the fitted line: the mean slope through the mean of every seed's values at the mean log β
                centre = np.mean([v.mean() for v in points if len(v)]) if any(len(v) for v in points) else 0.0
                logs = np.log10(betas)
                ax.plot(betas, centre + r.effect * (logs - logs.mean()), color="#d62728", linewidth=1.2,
                        linestyle="--", label="fitted slope" if ax is first else None)
        ax.set(xlabel="KL coefficient β (fixed, log scale)", title=panel,
               ylabel="pitfall − control:\n" + "\n".join(textwrap.wrap(unit, 34)))
        ax.title.set_fontsize(10)
        ax.yaxis.label.set_fontsize(9)
    if first.get_legend_handles_labels()[0]:
        first.legend(fontsize=9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def study_frontier(results, study: str = "fixed-beta", leave_out: tuple[str, ...] = ("stacked",)):
    """Held-out reward against KL per token to the SFT model, one line per (arm, β), a point per evaluation
    (mean over the seeds every line ran, so that all lines are means over the same paired seeds: the recipe's
    second-stage seeds are left out here; n in the legend). `stacked` ran fewer seeds than its twin, so its
    mean would sit beside a mean of other seeds: its equality is a claim of the findings instead."""
    fig, ax = plt.subplots(figsize=(10, 6.2))
    e = results.select(study).evaluation
    e = e[~e["arm"].isin(leave_out)]
    if len(e):
        common = set.intersection(*(set(g.seed) for _, g in e.groupby(["arm", "beta"])))
        e = e[e.seed.isin(common)]
    betas = sorted(e["beta"].dropna().unique())
    widths = {b: 0.8 + 1.2 * i for i, b in enumerate(betas)}
    for (arm, beta), g in e.groupby(["arm", "beta"], sort=False):
        x, y = seed_band(g, "kl_sft_exact"), seed_band(g, "reward_mean")
        style = arm_style(arm)
        ax.errorbar(x["mean"], y["mean"], xerr=[x["mean"] - x["low"], x["high"] - x["mean"]],
                    yerr=[y["mean"] - y["low"], y["high"] - y["mean"]], color=style.get("color"),
                    marker=style.get("marker") or "o", linestyle=style.get("linestyle", "-"),
                    linewidth=widths[beta], markersize=4 + widths[beta], alpha=0.85, elinewidth=0.8, capsize=2,
                    label=f"{arm}, β={beta:g} (n={g.seed.nunique()})")
    ax.set(xlabel="KL per token to the SFT model (nats, held-out prompts)",
           ylabel="held-out reward (reward-model score)",
           title="Reward–KL frontier: each line from step 0 (left) to the end; thicker = larger β;\n"
                 "bars: 95% intervals over the paired seeds")
    if len(e):
        ax.legend(fontsize=9, ncol=2)
    fig.tight_layout()
    return fig


def pull_by_algorithm(table: pd.DataFrame, kl_sft_base: float, frameworks: tuple[float, float]):
    """The pitfall's pull (its change in KL to the base minus its control's) against β, one line per algorithm
    (`grpo_report.beside_ppo`'s table: mean and 95% interval over each study's paired seeds, n in the legend),
    with the pull that would undo SFT entirely (−KL(SFT‖base)) and the span of the frameworks' default βs."""
    fig, ax = plt.subplots(figsize=(9, 5.2))
    ax.axvspan(*frameworks, color="#1f77b4", alpha=0.08, label="the frameworks' default βs")
    ax.axhline(0, color="0.5", linewidth=0.8)
    ax.axhline(-kl_sft_base, color="0.3", linestyle=":", linewidth=1.2,
               label=f"−KL(SFT‖base) = {-kl_sft_base:.3f}: SFT undone")
    for (name, g), marker in zip(table.groupby("algorithm", sort=False), ("o", "s")):
        ax.errorbar(g["beta"], g["pull"], yerr=[g["pull"] - g["ci_low"], g["ci_high"] - g["pull"]], marker=marker,
                    capsize=4, label=f"{name} (n={int(g['n_seeds'].min())}–{int(g['n_seeds'].max())} seeds per β)"
                    if g["n_seeds"].nunique() > 1 else f"{name} (n={int(g['n_seeds'].iloc[0])} seeds per β)")
    ax.set_xscale("log")
    ax.xaxis.set_minor_locator(plt.NullLocator())
    # each algorithm's βs on its own axis (bottom: the first, top: the second), so that near βs do not overlap
    names = list(dict.fromkeys(table["algorithm"]))
    for axis, name in zip((ax, ax.secondary_xaxis("top")), names):
        betas = sorted(set(table.loc[table["algorithm"] == name, "beta"]))
        axis.set_xticks(betas, [f"{b:g}" for b in betas])
        axis.xaxis.set_minor_locator(plt.NullLocator())
        axis.set_xlabel(f"{name}'s KL coefficients β (log scale)")
    ax.set(ylabel="pitfall − control: change in held-out\nKL to the base (nats/token)",
           title="The pitfall's pull towards the base, PPO and GRPO (mean, 95% interval over paired seeds)")
    ax.title.set_fontsize(11)
    ax.legend(fontsize=9)
    fig.tight_layout()
    return fig


def _shade(colour, weight: float):
    """`colour` mixed with white: weight 1 is the colour itself, 0 is white."""
    rgb = np.array(matplotlib.colors.to_rgb(colour))
    return tuple(1 - (1 - rgb) * weight)


def grpo_curves(results):
    """GRPO (notebook 06): each arm's held-out evaluations over training, a line per (arm, β): the arm's colour
    (its PPO twin's), darker and thicker for a larger β, dashed for β = 0; the mean over the seeds it ran with its
    95% interval as bars where there are several (n in the legend). The lines are nudged apart along the step
    axis (by at most a fifth of the evaluation interval) so that bars at one step do not hide each other."""
    fig, axes = plt.subplots(2, 2, figsize=(13, 9), sharex=True)
    panels = [("reward_mean", "held-out reward", "reward (reward-model score)"),
              ("kl_sft_exact", "held-out KL to the SFT model", "KL per token (nats)"),
              ("kl_base_exact", "held-out KL to the base model", "KL per token (nats)"),
              ("perplexity", "held-out IMDB perplexity", "perplexity")]
    e = results.evaluation
    betas = sorted(e["beta"].unique())
    rank = {b: i / max(len(betas) - 1, 1) for i, b in enumerate(betas)}  # 0: the smallest β, 1: the largest
    arms = list(dict.fromkeys(e["arm"]))
    groups = dict(list(e.groupby(["arm", "beta"])))  # each line's rows, split once for the four panels
    lines = sorted(groups, key=lambda key: (arms.index(key[0]), key[1]))
    gap = np.diff(np.sort(e["step"].unique())).min() if e["step"].nunique() > 1 else 1
    nudge = {key: 0.2 * gap * (i / max(len(lines) - 1, 1) - 0.5) for i, key in enumerate(lines)}
    for ax, (column, title, ylabel) in zip(axes.flat, panels):
        for arm, beta in lines:  # by arm, then β: the legend reads in columns
            band, base = seed_band(groups[(arm, beta)], column), arm_style(arm)
            n = band["n"].max()
            style = dict(color=_shade(base.get("color", "0.3"), 0.35 + 0.65 * rank[beta]),
                         linestyle="--" if beta == 0 else base.get("linestyle", "-"),
                         marker=base.get("marker") or "o", markersize=4 + 2 * rank[beta],
                         linewidth=0.9 + 2.2 * rank[beta], label=f"{arm}, β={beta:g} (n={n})")
            x = band["step"] + nudge[(arm, beta)]
            if n > 1:
                ax.errorbar(x, band["mean"], yerr=[band["mean"] - band["low"], band["high"] - band["mean"]],
                            elinewidth=0.8, capsize=2, **style)
            else:
                ax.plot(x, band["mean"], **style)
        ax.set(ylabel=ylabel, title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.tick_params(labelbottom=True)  # step labels under every panel, not only the bottom row
    for ax in axes[-1]:
        ax.set_xlabel("GRPO steps done")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=9, frameon=False)
    bars = ("bars: 95% intervals over the paired seeds" if e.groupby(["arm", "beta"]).seed.nunique().max() > 1
            else "one seed per line: no interval")
    fig.suptitle(f"GRPO with TRL's GRPOTrainer: what each way of handing it the SFT model does\n"
                 f"darker and thicker = larger β; {bars}")
    fig.tight_layout(rect=(0, 0.03 * (1 + (len(labels) - 1) // 4), 1, 1))
    return fig
