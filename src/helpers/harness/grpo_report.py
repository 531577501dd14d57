"""Notebook 06's tables and sentences, computed from its runs (GRPO through TRL, helpers.grpo)."""

from __future__ import annotations

import pandas as pd

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
