"""Notebook 06's tables and sentences, computed from its runs (GRPO through TRL, helpers.grpo)."""

from __future__ import annotations

import pandas as pd

MEASURES = {"reward_mean": "held-out reward", "kl_sft_exact": "KL to the SFT model", "kl_base_exact": "KL to the base",
            "perplexity": "perplexity"}


def run_ends(results) -> pd.DataFrame:
    """Per run (arm, β): each held-out measure at step 0 and after the last step (mean over the seeds it ran)."""
    e = results.evaluation
    last = e.groupby(["arm", "beta", "seed"]).step.transform("max")
    ends = e[(e.step == 0) | (e.step == last)].assign(when=lambda t: t.step.eq(0).map({True: "step 0", False: "end"}))
    table = ends.groupby(["arm", "beta", "when"], sort=False)[list(MEASURES)].mean().unstack("when")
    table.columns = [f"{MEASURES[m]}, {w}" for m, w in table.columns]
    return table


def exploratory_line(results, beta: float) -> str:
    """One sentence on the pitfall against TRL's copy at `beta`, from this run's numbers, saying n."""
    ends = run_ends(results)
    seeds = results.runs.seed.nunique()
    steps = int(results.evaluation.step.max())
    try:
        pit, copy = ends.loc[("pitfall", beta)], ends.loc[("ref-copy", beta)]
    except KeyError:
        return "The pitfall and TRL's copy did not both run at this β: nothing to compare."
    d_base = pit["KL to the base, end"] - copy["KL to the base, end"]
    d_reward = pit["held-out reward, end"] - copy["held-out reward, end"]
    d_ppl = pit["perplexity, end"] - copy["perplexity, end"]
    where = "closer to" if d_base < 0 else "farther from"
    return (f"After {steps} steps at β = {beta:g} ({seeds} seed{'s' if seeds > 1 else ''}, an exploratory look, not a "
            f"finding): the pitfall ends {abs(d_base):.3f} nats/token {where} the base than TRL's copy (KL to the "
            f"base {pit['KL to the base, end']:.3f} against {copy['KL to the base, end']:.3f}, both "
            f"{pit['KL to the base, step 0']:.3f} at step 0), with a held-out reward {d_reward:+.3f} and a "
            f"perplexity {d_ppl:+.2f} against the copy's.")
