"""Notebook 06's tables and sentences, computed from its runs (GRPO through TRL, helpers.grpo) and from the two
committed studies (GRPO beside PPO: the same SFT adapter, reward, held-out prompts and yardsticks)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from ..evaluation import t_interval
from .verdicts import MEASURES as CLAIM_MEASURES

MEASURES = {"reward_mean": "held-out reward", "kl_sft_exact": "KL to the SFT model", "kl_base_exact": "KL to the base",
            "perplexity": "perplexity"}


def run_ends(results) -> pd.DataFrame:
    """Per run (arm, β): each held-out measure at step 0 and after the last step (mean over the seeds it ran),
    with the seeds and steps behind it."""
    e = results.evaluation
    last = e.groupby(["arm", "beta", "seed"]).step.transform("max")
    ends = e[(e.step == 0) | (e.step == last)].assign(when=lambda t: t.step.eq(0).map({True: "step 0", False: "end"}))
    table = ends.groupby(["arm", "beta", "when"], sort=False)[list(MEASURES)].mean().unstack("when")
    table.columns = [f"{MEASURES[m]}, {w}" for m, w in table.columns]
    runs = e.groupby(["arm", "beta"], sort=False).agg(seeds=("seed", "nunique"), steps=("step", "max"))
    return table.join(runs)


def exploratory_line(ends: pd.DataFrame, beta: float) -> str:
    """One sentence on the pitfall against TRL's copy at `beta`, from `run_ends`'s table, saying n."""
    ends = ends.set_index(["arm", "beta"]) if "arm" in ends.columns else ends  # as written to CSV, or as made
    at = {arm: ends.loc[(arm, b)] for arm, b in ends.index if abs(b - beta) < 1e-12}
    if not {"pitfall", "ref-copy"} <= set(at):
        return f"The pitfall and TRL's copy did not both run at β = {beta:g}: nothing to compare."
    pit, copy = at["pitfall"], at["ref-copy"]
    d_base = pit["KL to the base, end"] - copy["KL to the base, end"]
    seeds = int(min(pit["seeds"], copy["seeds"]))
    where = "closer to" if d_base < 0 else "farther from"
    return (f"After {int(pit['steps'])} steps at β = {beta:g} ({seeds} seed{'s' if seeds > 1 else ''}: an exploratory "
            f"look, not a finding), the pitfall ends {abs(d_base):.3f} nats/token {where} the base than TRL's copy (KL "
            f"to the base {pit['KL to the base, end']:.3f} against {copy['KL to the base, end']:.3f}, from "
            f"{pit['KL to the base, step 0']:.3f} at step 0), with a held-out reward "
            f"{pit['held-out reward, end'] - copy['held-out reward, end']:+.3f} and a perplexity "
            f"{pit['perplexity, end'] - copy['perplexity, end']:+.2f} against the copy's.")


def precision_line(ends: pd.DataFrame, sft_perplexity: float, mixed: str | None) -> str:
    """The step-0 perplexity of the GRPO runs beside notebook 01's of the same SFT model, and why they differ:
    with `mixed` ("bf16": GRPOConfig's default, or "fp16"), accelerate wraps the trained model's forward in
    autocast for the whole run, so the held-out evaluations, called from a callback inside it, run in it too."""
    start = ends["perplexity, step 0"]
    here = f"{start.min():.3f}" if f"{start.min():.3f}" == f"{start.max():.3f}" else f"{start.min():.3f}–{start.max():.3f}"
    line = f"Step-0 perplexity {here} here against {sft_perplexity:.3f} in notebook 01, the same SFT model"
    if not mixed:
        return line + " (both in full precision)."
    return (line + f": GRPOConfig has {mixed}=True, so accelerate runs every forward of the model TRL trains under "
            f"{mixed} autocast, these evaluations included, while notebooks 01–05 evaluate in full precision. The "
            "arms of this notebook (and of its study) share that precision, so they compare with each other.")


# each study's pitfall (reference = the base) and its control (reference = the SFT adapter)
PITFALLS = {"PPO": ("fixed-beta", "adapter+disabled", "adapter+ref-adapter"), "GRPO": ("grpo", "pitfall", "ref-copy")}


def pulls(results, algorithm: str) -> pd.DataFrame:
    """Per β > 0 and seed: the pitfall's pull (its change in held-out KL to the base minus its control's, the
    studies' `pull` claim) and how far the control moved from the SFT model (its KL to SFT at the end)."""
    study, arm, control = PITFALLS[algorithm]
    (_, change), (_, moved) = CLAIM_MEASURES["kl_base_change"], CLAIM_MEASURES["kl_sft_end"]
    rows = []
    for beta in sorted(b for b in set(results.select(study).runs["beta"].dropna()) if b > 0):
        r = results.select(study, beta)
        frame = pd.DataFrame({"pull": change(r, arm) - change(r, control), "control_kl_sft": moved(r, control)})
        rows.append(frame.dropna().rename_axis("seed").reset_index().assign(algorithm=algorithm, beta=beta))
    return pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(
        columns=["algorithm", "beta", "seed", "pull", "control_kl_sft"])


def beside_ppo(ppo, grpo) -> pd.DataFrame:
    """The pull at each β of each study: mean and 95% interval over its paired seeds, and the control's KL to the
    SFT model at the end (how far RL moved with the right reference)."""
    per_seed = pd.concat([pulls(ppo, "PPO"), pulls(grpo, "GRPO")], ignore_index=True)
    rows = []
    for (algorithm, beta), g in per_seed.groupby(["algorithm", "beta"], sort=False):
        mean, low, high, n = t_interval(g["pull"])
        rows.append({"algorithm": algorithm, "beta": beta, "pull": mean, "ci_low": low, "ci_high": high,
                     "n_seeds": n, "control_kl_sft": float(g["control_kl_sft"].mean())})
    return pd.DataFrame(rows)


def _welch(a, b) -> tuple[float, float, float]:
    """mean(a) - mean(b) with its 95% Welch interval (two independent samples)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1)) if se > 0 else 1.0
    d, half = float(a.mean() - b.mean()), float(stats.t.ppf(0.975, df)) * se
    return d, d - half, d + half


COMPARED = {"pull": "pull (nats/token)",
            "pull_per_moved": "pull per nat/token the control moved from the SFT model"}


def compare_pulls(ppo, grpo) -> pd.DataFrame:
    """GRPO's pull minus PPO's at each β GRPO ran inside PPO's grid: GRPO's seeds at that β against PPO's seeds
    with their pull read off a line in log β between the two βs of PPO's grid around it. The studies share
    inputs but not their training's randomness, so the interval is Welch's (unpaired). Twice: the pull itself,
    and the pull per unit of the control's KL to the SFT model at the end, because the two algorithms move at
    different speeds (the pull grows with how far RL moves). A difference > 0: GRPO's pitfall moves less
    towards the base ("weaker"); < 0: more ("stronger")."""
    p, g = pulls(ppo, "PPO"), pulls(grpo, "GRPO")
    p["pull_per_moved"], g["pull_per_moved"] = p["pull"] / p["control_kl_sft"], g["pull"] / g["control_kl_sft"]
    rows = []
    for measure, name in COMPARED.items():
        grid = p.pivot(index="seed", columns="beta", values=measure).dropna()
        for beta, runs in g.groupby("beta"):
            row = {"measure": name, "beta": beta, "grpo": float(runs[measure].mean()), "grpo_seeds": len(runs)}
            lower, upper = [b for b in grid.columns if b <= beta], [b for b in grid.columns if b >= beta]
            if not lower or not upper or len(runs) < 2 or len(grid) < 2:
                rows.append({**row, "grpo_is": "not compared: " + (
                    f"outside PPO's grid ({', '.join(f'{b:g}' for b in grid.columns)})" if not lower or not upper
                    else "fewer than 2 seeds")})
                continue
            lo, hi = max(lower), min(upper)
            w = 0.0 if hi == lo else (math.log10(beta) - math.log10(lo)) / (math.log10(hi) - math.log10(lo))
            ppo_at = (1 - w) * grid[lo] + w * grid[hi]
            d, low, high = _welch(runs[measure], ppo_at)
            rows.append({**row, "ppo": float(ppo_at.mean()), "ppo_seeds": len(ppo_at),
                         "ppo_from": f"β {lo:g} and {hi:g}" if hi != lo else f"β {lo:g}", "difference": d,
                         "ci_low": low, "ci_high": high, "grpo_is": "weaker" if low > 0 else "stronger" if high < 0
                         else f"inconclusive: |difference| < {max(abs(low), abs(high)):.3g}"})
    return pd.DataFrame(rows)


def comparison_line(table: pd.DataFrame) -> str:
    """A sentence per measure of `compare_pulls`'s table: is the pitfall's pull weaker, the same or stronger in
    GRPO, at each β both studies cover?"""
    lines = []
    for measure, t in table.groupby("measure", sort=False):
        done = t[~t["grpo_is"].str.startswith("not compared")]
        parts = [f"at β = {r.beta:g}, GRPO {r.grpo:+.3f} against PPO {r.ppo:+.3f}, GRPO − PPO {r.difference:+.3f} "
                 f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}] ({r.grpo_seeds} and {r.ppo_seeds:.0f} seeds): "
                 + (r.grpo_is if r.grpo_is.startswith("inconclusive") else f"GRPO's pull is {r.grpo_is}")
                 for r in done.itertuples()]
        left = t[t["grpo_is"].str.startswith("not compared")]
        lines.append(f"The {measure}: " + ("; ".join(parts) if parts else "no β compared")
                     + "".join(f"; β {r.beta:g} {r.grpo_is}" for r in left.itertuples()) + ".")
    return "\n".join(lines) if lines else "Nothing to compare."


def training_line(ppo_design: dict, grpo_design: dict) -> str:
    """What each study trained, from the two manifests: the comparison is at equal β, not equal training."""
    def tokens(span):
        return f"{span[0]} tokens" if span[0] == span[1] else f"{span[0]}–{span[1]} tokens"
    ppo, grpo = ppo_design["ppo"], grpo_design["grpo"]
    return (f"PPO: {ppo['steps']} steps of {ppo['batch_size']} rollouts ({tokens(ppo['response_len'])}), learning "
            f"rate {ppo['learning_rate']:g}; GRPO: {grpo['steps']} steps of {grpo['prompts_per_step']} prompts × "
            f"{grpo['group']} completions ({tokens(grpo['response_len'])}), learning rate {grpo['learning_rate']:g}.")


def power_line(power: pd.DataFrame, pilot) -> str:
    """The power calculation in words: how many findings the pilot put within reach of the seeds that ran, and how
    many have a verdict now (`sizing.pilot_power`'s table)."""
    seeds = int(power["seeds_run"].max()) if len(power) else 0
    reach, settled = int(power["within_reach"].sum()), int(power["verdict"].ne("inconclusive").sum())
    return (f"The pilot (seeds {', '.join(map(str, pilot))}) put {reach} of {len(power)} findings within reach of "
            f"{seeds} paired seeds (at the pilot's mean and spread, a 95% interval over that many excludes 0); with "
            f"{seeds} seeds, {settled} of {len(power)} have a verdict, the others a bound.")

