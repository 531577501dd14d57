"""Verdicts from paired seeds: each claim against the arm that differs from it in one thing only.

A claim's per-seed values are arm minus control on the same seed (the same prompts, rollout seed and
held-out evaluation), or a quantity that needs both arms at once (their reward at the KL both reached, the
largest difference between their curves). The verdict is "as expected" when the 95% t-interval over seeds
lies on the expected side of zero, "differs" when it lies on the other side, and "inconclusive" otherwise,
with the bound the interval does give (|effect| < X) and the seeds that would settle it at the measured
spread. `over_beta` claims are dose-responses: per seed, the slope of the effect against log10 β.

Checks that hold by construction (step-0 KL, a copy equal to its twin, twice the weights) are claims of
kind "sanity", shown apart from the findings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

from ..evaluation import t_interval
from .results import Results


def seeds_needed(values, cap: int = 10_000) -> int | None:
    """Smallest number of seeds whose 95% interval, at the measured mean and spread, would exclude zero.
    None where the measured mean is zero or fewer than 2 seeds ran; `cap` means "more than cap"."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2 or np.mean(x) == 0:
        return None
    ratio = float(np.std(x, ddof=1)) / abs(float(np.mean(x)))
    for m in range(2, cap):
        if stats.t.ppf(0.975, m - 1) * ratio / math.sqrt(m) < 1:
            return m
    return cap


def verdict(diffs, expected: str, tolerance: float = 0.0, grows_with_steps: bool = False, target: float = 0.0) -> dict:
    """The verdict on per-seed differences (arm minus control).

    expected ">0" / "<0": "as expected" if the 95% interval lies on that side of zero, "differs" if it
    lies on the other side, else "inconclusive" with the seeds (or, for an effect that accumulates over
    training, the factor on steps) that would settle it at the measured spread. expected "=": an
    equality claim, "as expected" if every per-seed value is within `tolerance` of `target` (exact
    equality, or a ratio fixed by construction, has no seed-to-seed spread to put an interval on).
    """
    mean, low, high, n = t_interval(diffs)
    row = {"effect": mean, "ci_low": low, "ci_high": high, "n_seeds": n, "to_settle": ""}
    if expected == "=":
        x = np.asarray(diffs, dtype=float)
        if not n:
            return {**row, "verdict": "inconclusive", "to_settle": "no paired seeds"}
        worst = float(x[np.argmax(np.abs(x - target))])
        # the effect is the worst seed's value; no interval (the mean's would not be around it)
        row.update(effect=worst, ci_low=math.nan, ci_high=math.nan,
                   verdict="as expected" if abs(worst - target) <= tolerance else "differs",
                   to_settle=f"as expected when every paired seed is within {tolerance:g} of {target:g} ({n} ran)")
        return row
    if expected not in (">0", "<0"):
        raise ValueError(f"expected must be '>0', '<0' or '=', not {expected!r}")
    sign = 1 if expected == ">0" else -1
    if n >= 2 and sign * low > 0 and sign * high > 0:
        row["verdict"] = "as expected"
    elif n >= 2 and sign * low < 0 and sign * high < 0:
        row["verdict"] = "differs"
    else:
        row["verdict"] = "inconclusive"
        m = seeds_needed(diffs)
        bound = f"|effect| < {max(abs(low), abs(high)):.3g} (95%); " if n >= 2 else ""
        if m is None:
            row["to_settle"] = bound + ("needs at least 2 seeds" if n < 2 else "no effect measured")
        else:
            row["to_settle"] = bound + f"≈ {m}{'+' if m >= 10_000 else ''} seeds to settle"
            if grows_with_steps:
                row["to_settle"] += f", or ≈ {m / n:.1f}× the steps with {n} seeds (if the effect grows linearly)"
    return row


# the claims of the thread, each against the arm that differs from it in one thing only
@dataclass(frozen=True)
class Claim:
    claim: str
    arm: str
    control: str
    measure: str  # a key of MEASURES (one arm at a time) or of PAIRED (both arms of a seed at once)
    expected: str  # sign of (arm - control): ">0", "<0", or "=" (equal to `target`)
    study: str = "main"
    tolerance: float = 0.0  # "=" claims: every per-seed value within tolerance of `target`
    target: float = 0.0
    combine: str = "difference"  # per seed: arm - control, or arm / control ("ratio")
    beta: float | None = None  # the runs at this fixed KL coefficient only (None: the study's only setting)
    over_beta: bool = False  # a dose-response: per seed, the slope of (arm - control) against log10 β
    kind: str = "finding"  # or "sanity": true by construction, shown apart
    key: str = ""  # a short name the answers look a claim up by (its wording may change)


def _eval_at(results: Results, arm: str, column: str, where: str) -> pd.Series:
    e = results.evaluation[results.evaluation["arm"] == arm]
    if not len(e):
        return pd.Series(dtype=float)
    steps = e.groupby("seed")["step"].transform("min" if where == "first" else "max")
    return e[e["step"] == steps].set_index("seed")[column]


def _curve_difference(results: Results, arm: str, control: str, relative: bool = False,
                      same_tokens: bool = False) -> pd.Series:
    """Per seed: the largest |difference| in any reward, KL, loss or perplexity column at the steps both ran
    (`relative`: divided by max(1, |control|), so perplexities of ~60 and KLs of ~0.1 share one tolerance).

    `same_tokens`: only where both runs sampled the same tokens. Float rounding that differs between two
    equal computations is amplified by PPO's updates until, at a near-tie, the sampler draws another token;
    from then on the runs are two different random paths (on smol's study v2, a relative 1e-6 to 4e-3 for
    20 steps, then 0.1 within a step). The reward is a function of the sampled text, so a step whose mean
    reward is bit-equal in both runs sampled the same tokens. Compared: training steps before the first
    step whose rollout differs; evaluations up to that step whose sampled reward is bit-equal, and their
    perplexity (on fixed reviews, no sampling) at every evaluation up to that step. A seed whose runs diverge
    before the first evaluation after step 0 is NaN (left out): too soon for rounding, and no trained policy is
    left to compare. A real difference in the model (an adapter not applied, or trained when it should be
    frozen) shows in step 0's perplexity, beyond rounding on the same tokens, or as such an early divergence."""
    out = {}
    m, e = results.metrics, results.evaluation
    for seed in sorted(set(m[m.arm == arm].seed) & set(m[m.arm == control].seed)):
        tables = {}
        for name, table in (("metrics", m), ("evaluation", e)):
            a, b = (table[(table.arm == x) & (table.seed == seed)].set_index("step") for x in (arm, control))
            both = a.index.intersection(b.index)
            tables[name] = a.loc[both], b.loc[both]
        a, b = tables["metrics"]
        differs = a.index[a.reward_mean.to_numpy() != b.reward_mean.to_numpy()] if same_tokens else []
        first = min(differs) if len(differs) else math.inf
        trained = [s for s in tables["evaluation"][0].index if s > 0]
        if same_tokens and trained and first < min(trained):
            # diverged before the first evaluation of a trained policy: too soon for rounding, and nothing
            # after an update is left to compare (not evidence either way)
            out[seed] = math.nan
            continue
        worst = 0.0
        for name, (a, b) in tables.items():
            cols = [c for c in a.columns if c.startswith(("reward", "kl_", "policy_loss", "value_loss", "perplexity"))]
            if same_tokens:
                keep = a.index < first if name == "metrics" else a.index <= first
                a, b = a[keep], b[keep]
                if name == "evaluation":  # sampled columns where the sample is the same, perplexity always
                    sampled = a.reward_mean.to_numpy() != b.reward_mean.to_numpy()
                    a = a[cols].mask(pd.DataFrame({c: sampled & (c != "perplexity") for c in cols}, index=a.index))
                    b = b[cols]
            diff = (a[cols] - b[cols]).abs()
            if relative:
                diff = diff / b[cols].abs().clip(lower=1.0)
            if diff.notna().to_numpy().any():
                worst = max(worst, float(np.nanmax(diff.to_numpy(dtype=float))))
        out[seed] = worst
    return pd.Series(out, dtype=float)


def at_kl(kl, reward, target: float) -> float:
    """The reward where a run's path of evaluations (in step order) first reaches KL `target`, linearly
    interpolated between the two evaluations around it."""
    kl, reward = np.asarray(kl, dtype=float), np.asarray(reward, dtype=float)
    if target <= kl[0]:
        return float(reward[0])
    for i in range(1, len(kl)):
        if kl[i] >= target:
            frac = (target - kl[i - 1]) / (kl[i] - kl[i - 1]) if kl[i] > kl[i - 1] else 1.0
            return float(reward[i - 1] + frac * (reward[i] - reward[i - 1]))
    return float("nan")  # never reached


def reward_at_matched_kl(results: Results, arm: str, control: str, kl: str) -> pd.Series:
    """Per seed: held-out reward of arm minus control at the largest KL (column `kl`) both runs reached,
    read from each run's reward–KL path: a fresh LoRA (B = 0) and a continued adapter move at different
    speeds, so matched steps would compare different amounts of drift."""
    e = results.evaluation.sort_values("step")
    out = {}
    for seed in sorted(set(e[e.arm == arm].seed) & set(e[e.arm == control].seed)):
        a, b = (e[(e.arm == name) & (e.seed == seed)] for name in (arm, control))
        target = min(a[kl].max(), b[kl].max())
        out[seed] = at_kl(a[kl], a["reward_mean"], target) - at_kl(b[kl], b["reward_mean"], target)
    return pd.Series(out, dtype=float)


def _last_step(r: Results, a: str) -> pd.Series:
    return r.evaluation[r.evaluation["arm"] == a].groupby("seed")["step"].max()


def _gain(r: Results, a: str, per_step: bool = False) -> pd.Series:
    gain = _eval_at(r, a, "reward_mean", "last") - _eval_at(r, a, "reward_mean", "first")
    return gain / _last_step(r, a) if per_step else gain


MEASURES: dict[str, tuple[str, Callable[[Results, str], pd.Series]]] = {
    "kl_ref_start": ("held-out KL to its reference at step 0 (nats/token)",
                     lambda r, a: _eval_at(r, a, "kl_ref_exact", "first")),
    "kl_base_change": ("change in held-out KL to the base, end minus step 0 (nats/token)",
                       lambda r, a: _eval_at(r, a, "kl_base_exact", "last") - _eval_at(r, a, "kl_base_exact", "first")),
    "kl_sft_end": ("held-out KL to the SFT model at the end (nats/token)",
                   lambda r, a: _eval_at(r, a, "kl_sft_exact", "last")),
    "perplexity_end": ("held-out IMDB perplexity at the end",
                       lambda r, a: _eval_at(r, a, "perplexity", "last")),
    "reward_end": ("held-out reward at the end", lambda r, a: _eval_at(r, a, "reward_mean", "last")),
    "reward_gain": ("held-out reward gain, end minus step 0", _gain),
    "reward_gain_per_step": ("held-out reward gain per PPO step", lambda r, a: _gain(r, a, per_step=True)),
    "kl_sft_per_step": ("held-out KL to the SFT model at the end per PPO step (nats/token)",
                        lambda r, a: _eval_at(r, a, "kl_sft_exact", "last") / _last_step(r, a)),
    "step_time": ("seconds per PPO step (median, warm-up excluded)",
                  lambda r, a: r.runs[r.runs["arm"] == a].set_index("seed")["step_time_median_s"]),
    "model_bytes": ("MiB of weights held",
                    lambda r, a: r.runs[r.runs["arm"] == a].set_index("seed")["model_bytes"] / 2**20),
}

# measures that need both arms of a seed at once: (unit, per-seed values from (results, arm, control))
PAIRED: dict[str, tuple[str, Callable[[Results, str, str], pd.Series]]] = {
    "curves": ("largest |difference| in any curve", _curve_difference),
    "curves_relative": ("largest |difference| in any curve, relative to max(1, |control|)",
                        lambda r, a, c: _curve_difference(r, a, c, relative=True)),
    "curves_same_tokens": ("largest |difference| in any curve while both sample the same tokens, relative to "
                           "max(1, |control|)", lambda r, a, c: _curve_difference(r, a, c, True, same_tokens=True)),
    "reward_at_kl_sft": ("held-out reward at the KL to the SFT model both reached",
                         lambda r, a, c: reward_at_matched_kl(r, a, c, "kl_sft_exact")),
    "reward_at_kl_ref": ("held-out reward at the KL to its own reference both reached",
                         lambda r, a, c: reward_at_matched_kl(r, a, c, "kl_ref_exact")),
}

# what each claim says, by key: one wording for notebook 04's claims (CLAIMS) and the study's (design.study_claims)
SAYS = {
    "kl_ref_start": "the pitfall: KL to the reference starts at KL(SFT‖base) > 0",
    "pull": "the pitfall pulls the policy towards the base",
    "drift": "the pitfall drifts further from the SFT model",
    "perplexity": "the pitfall raises held-out IMDB perplexity",
    "penalty_pull": "the penalty alone pulls the pitfall towards the base",
    "penalty_perplexity": "the penalty alone raises the pitfall's perplexity",
    "sft_first_end": "SFT first ends with a higher held-out reward than RL from the base",
    "copy_equals": "after merging, an explicit reference equals None",
    "copy_bytes": "an explicit copy holds twice the weights",
    "kept_step_time": "keeping the SFT adapter unmerged is slower per step",
}

CLAIMS = [
    Claim(SAYS["kl_ref_start"], "adapter+disabled", "adapter+ref-adapter", "kl_ref_start", ">0", kind="sanity",
          key="kl_ref_start"),
    Claim(SAYS["pull"], "adapter+disabled", "adapter+ref-adapter", "kl_base_change", "<0", key="pull"),
    Claim(SAYS["drift"], "adapter+disabled", "adapter+ref-adapter", "kl_sft_end", ">0", key="drift"),
    Claim(SAYS["perplexity"], "adapter+disabled", "adapter+ref-adapter", "perplexity_end", ">0", key="perplexity"),
    Claim(SAYS["penalty_pull"], "adapter+disabled", "adapter+ref-adapter", "kl_base_change", "<0", study="penalty",
          key="penalty_pull"),
    Claim(SAYS["penalty_perplexity"], "adapter+disabled", "adapter+ref-adapter", "perplexity_end", ">0",
          study="penalty", key="penalty_perplexity"),
    Claim(SAYS["sft_first_end"], "merged+disabled", "base+disabled", "reward_end", ">0", key="sft_first_end"),
    Claim(SAYS["copy_equals"], "merged+copy", "merged+disabled", "curves", "=", tolerance=1e-4, kind="sanity",
          key="copy_equals"),
    Claim(SAYS["copy_bytes"], "merged+copy", "merged+disabled", "model_bytes", "=", tolerance=0.2, target=2.0,
          combine="ratio", kind="sanity", key="copy_bytes"),
    Claim(SAYS["kept_step_time"], "adapter+ref-adapter", "merged+disabled", "step_time", ">0", key="kept_step_time"),
]


def dose_claims(arm: str, control: str, study: str, betas, measures, says: dict) -> list[Claim]:
    """Each (key, measure, expected sign) of `measures` at every β, then its slope over β (the dose-response)."""
    claims = [Claim(says[key], arm, control, measure, sign, study=study, beta=b, key=key) for b in betas
              for key, measure, sign in measures]
    return claims + [Claim(f"{says[key]}, more so at larger β", arm, control, measure, sign, study=study,
                           over_beta=True, key=key) for key, measure, sign in measures]


FINDING_COLUMNS = ["kind", "key", "claim", "study", "beta", "arm", "control", "measure", "expected", "effect", "ci_low",
                   "ci_high", "n_seeds", "verdict", "to_settle"]
GROWS_WITH_STEPS = {"kl_base_change", "kl_sft_end", "perplexity_end", "reward_end", "reward_gain"}


def paired_values(results: Results, c: Claim) -> tuple[str, pd.Series]:
    """(unit, per-seed values) of claim `c` on `results` (already narrowed to its study and β)."""
    if c.measure in PAIRED:
        unit, measure = PAIRED[c.measure]
        return unit, measure(results, c.arm, c.control).dropna()
    unit, measure = MEASURES[c.measure]
    a, b = measure(results, c.arm), measure(results, c.control)
    values = (a / b if c.combine == "ratio" else a - b).dropna()  # paired by seed
    return (f"{unit}, arm / control" if c.combine == "ratio" else unit), values


def beta_slopes(results: Results, c: Claim) -> tuple[str, pd.Series]:
    """Per seed: the least-squares slope of (arm - control) against log10 β over the β values it ran."""
    runs = results.select(c.study).runs
    per_beta = {}
    for beta in sorted(set(runs["beta"].dropna())):
        _, per_beta[beta] = paired_values(results.select(c.study, beta), replace(c, beta=beta, over_beta=False))
    frame = pd.DataFrame(per_beta)  # seeds x β
    slopes = {}
    for seed, row in frame.iterrows():
        row = row.dropna()
        if len(row) >= 2:
            slopes[seed] = float(np.polyfit(np.log10(row.index.to_numpy(dtype=float)), row.to_numpy(), 1)[0])
    unit = MEASURES[c.measure][0] if c.measure in MEASURES else PAIRED[c.measure][0]
    return f"slope of Δ {unit} per ×10 of β", pd.Series(slopes, dtype=float)


def claim_values(results: Results, c: Claim) -> tuple[str, pd.Series] | None:
    """(unit, per-seed values) of claim `c` on `results` (every study), or None where its arm or its control did
    not run: the per-seed slopes of a dose-response claim, else the paired values at its β."""
    r = results.select(c.study) if c.over_beta else results.select(c.study, c.beta)
    if not len(r.runs) or not {c.arm, c.control} <= set(r.runs["arm"]):
        return None
    return beta_slopes(results, c) if c.over_beta else paired_values(r, c)


def beta_label(c: Claim) -> str:
    """The `beta` column of a finding: "slope" for a dose-response, else its β ("" where the study has one)."""
    return "slope" if c.over_beta else ("" if c.beta is None else f"{c.beta:g}")


def findings(results: Results, claims: list[Claim] = CLAIMS) -> pd.DataFrame:
    """One row per claim whose arm and control both ran: the control, the effect (arm minus control, per
    paired seed), its 95% interval, the number of seeds and the verdict."""
    rows = []
    for c in claims:
        if (got := claim_values(results, c)) is None:
            continue
        unit, values = got
        rows.append({"kind": c.kind, "key": c.key, "claim": c.claim, "study": c.study, "beta": beta_label(c),
                     "arm": c.arm, "control": c.control, "measure": unit, "expected": c.expected,
                     **verdict(values.to_numpy(), c.expected, c.tolerance,
                               c.measure in GROWS_WITH_STEPS and not c.over_beta, c.target)})
    return pd.DataFrame(rows, columns=FINDING_COLUMNS)


SIGNED = {"effect", "ci_low", "ci_high", "gain", "z", "difference", "pull", "grpo", "ppo"}  # differences: their sign is the finding


def readable(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """A table as plain strings: the same in a notebook's HTML, in plain text and in nbval. Differences carry
    their sign (never -0.000); other numbers are plain, as is an equality claim's effect (a value, its worst
    seed's, not a difference with a direction); a missing value is a dash."""
    def number(x, signed):
        if isinstance(x, (float, np.floating)):
            if math.isnan(x):
                return "–"
            if not signed:
                return f"{x:.{digits}g}"
            text = f"{x:+.{digits}f}" if abs(x) >= 10 ** -digits or x == 0 else f"{x:+.1e}"
            return "+" + text[1:] if text.strip("+-0.") == "" else text
        return x
    equality = table["expected"].eq("=").tolist() if "expected" in table else [False] * len(table)
    return pd.DataFrame({c: [number(x, c in SIGNED and not (c == "effect" and eq)) for x, eq in zip(table[c], equality)]
                         for c in table.columns}, index=table.index).astype(str)
