"""The PPO study's design: a frozen value that yields its runs, the claims that answer the thread, and the
recipe's gain over step 0 with the power calculation's promise checked against it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import pandas as pd

from ..evaluation import t_interval
from ..ppo import LR_RATIOS, PPOConfig
from ..provenance import check_count
from .results import Results
from .run import Run
from .verdicts import SAYS, Claim, dose_claims

STUDY = "fixed-beta"
RECIPE = "merged+disabled"  # merge, then a new LoRA; the reference is the merged model (adapters disabled)
EVERY_BETA = ("adapter+disabled", "adapter+ref-adapter")  # the pitfall and its control
AT_MIDDLE = (RECIPE, "base+disabled")  # the recipe, and RL straight from the base
SIDE = ("stacked",)  # equals merged+disabled up to float rounding: the first `study_side_seeds` seeds


@dataclass(frozen=True)
class Design:
    betas: tuple[float, ...]
    seeds: tuple[int, ...]
    side_seeds: tuple[int, ...]
    ppo: PPOConfig  # steps included; the β of each run replaces init_kl_coef, the controller is off
    eval_every: int
    reward: str
    recipe_seeds: tuple[int, ...] = ()  # the second stage: the recipe alone at the middle β

    def __post_init__(self):
        if len(self.betas) < 3 or min(self.betas) <= 0:
            raise ValueError(f"a dose-response needs at least 3 values of β > 0, not {self.betas}")
        check_count("seeds", len(self.seeds))
        check_count("steps", self.ppo.steps)

    @property
    def middle(self) -> float:
        return self.betas[len(self.betas) // 2]

    def run(self, arm: str, seed: int, beta: float) -> Run:
        return Run(STUDY, arm, seed, replace(self.ppo, init_kl_coef=beta, adaptive_kl=False), self.reward,
                   self.eval_every)

    def runs(self) -> list[Run]:
        """Seed by seed; within a seed the middle β first (every claim arm), then the others."""
        out = []
        for seed in self.seeds:
            for beta in [self.middle] + [b for b in self.betas if b != self.middle]:
                arms = EVERY_BETA + (AT_MIDDLE if beta == self.middle else ())
                arms += SIDE if beta == self.middle and seed in self.side_seeds else ()
                out += [self.run(arm, seed, beta) for arm in arms]
        return out + [self.run(RECIPE, seed, self.middle) for seed in self.recipe_seeds]


def study_claims(design: Design) -> list[Claim]:
    """Every question of the thread as a claim, each against the arm that differs from it in one thing; the
    answers (helpers.harness.answers) look them up by key."""
    pit, ctl, mid = "adapter+disabled", "adapter+ref-adapter", design.middle
    pitfall = [("pull", "kl_base_change", "<0"), ("drift", "kl_sft_end", ">0"), ("perplexity", "perplexity_end", ">0")]
    claims = dose_claims(pit, ctl, STUDY, design.betas, pitfall, SAYS)
    kept = "keeping the SFT adapter (right reference)"
    claims += [
        Claim(f"{kept} reaches less reward at matched KL to SFT than merging", ctl, RECIPE, "reward_at_kl_sft", "<0",
              study=STUDY, beta=mid, key="kept_at_kl"),
        Claim(f"{kept} gains less reward per step than merging", ctl, RECIPE, "reward_gain_per_step", "<0",
              study=STUDY, beta=mid, key="kept_gain_per_step"),
        # the thread's "possible, but it converges slowly", read as distance moved: a fresh LoRA starts at
        # B = 0, the kept adapter does not
        Claim(f"{kept} moves away from the SFT model more slowly per step than merging", ctl, RECIPE,
              "kl_sft_per_step", "<0", study=STUDY, beta=mid, key="kept_kl_per_step"),
        Claim("SFT first gains more held-out reward than RL from the base", RECIPE, "base+disabled",
              "reward_gain", ">0", study=STUDY, beta=mid, key="sft_first_gain"),
        Claim("SFT first reaches more reward at matched KL to its reference than RL from the base",
              RECIPE, "base+disabled", "reward_at_kl_ref", ">0", study=STUDY, beta=mid, key="sft_first_at_kl"),
        Claim(SAYS["sft_first_end"], RECIPE, "base+disabled", "reward_end", ">0", study=STUDY, beta=mid,
              key="sft_first_end"),
        # equal up to float rounding while both runs sample the same tokens (verdicts._curve_difference). On
        # that window the largest relative difference was 1.6e-4 after 3 steps on tiny (reference path),
        # 1.35e-3 on the fast path (helpers.fastpath), 3.8e-4 in smol's v1 (15 steps), 3.9e-3 in v2 (20 steps).
        # A stacking error moves KL to the base by KL(SFT || base), > 0.1 on every profile, and perplexity
        # at step 0 by the SFT's own change (94 -> 58 on smol): far outside 1e-2
        Claim("stacking the SFT adapter under a new LoRA equals merging it", "stacked", RECIPE,
              "curves_same_tokens", "=", study=STUDY, beta=mid, tolerance=1e-2, key="stacked"),
        Claim(SAYS["kl_ref_start"], pit, ctl, "kl_ref_start", ">0", study=STUDY, beta=mid, kind="sanity",
              key="kl_ref_start"),
    ]
    return claims


def reward_gains(results: Results) -> pd.DataFrame:
    """Does RL move? Per (arm, β): the held-out reward gain over step 0, mean over seeds, 95% interval, z."""
    e = results.select(STUDY).evaluation
    rows = []
    for (arm, beta), g in e.groupby(["arm", "beta"], sort=False):
        first = g[g.step == g.groupby("seed").step.transform("min")].set_index("seed").reward_mean
        last = g[g.step == g.groupby("seed").step.transform("max")].set_index("seed").reward_mean
        gain = (last - first).dropna()
        mean, low, high, n = t_interval(gain)
        se = gain.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
        rows.append({"arm": arm, "beta": beta, "steps": int(g.step.max()), "n_seeds": n, "gain": mean,
                     "ci_low": low, "ci_high": high, "z": mean / se if se and se > 0 else math.nan})
    return pd.DataFrame(rows)


def power_check(results: Results, design: Design, manifest: dict) -> str:
    """The power calculation's promise against what the recipe did: its gain and z at the middle β."""
    power = manifest["sizing"]["power"]
    gains = reward_gains(results)
    row = gains[(gains.arm == RECIPE) & (gains.beta == design.middle)]
    if row.empty:
        return "The recipe has not run yet: no check of the power calculation."
    got = row.iloc[0]
    share = got.gain / power["expected_gain"]  # the planned gain reached, and the target z (two separate checks)
    verdict = (f"{share:.0%} of the planned gain, and z {'above' if got.z > power['target_z'] else 'below'} its "
               f"target of {power['target_z']:g}")
    stage = manifest["sizing"].get("second_stage")
    second = "" if not stage else (
        f" The first stage ({stage['first_stage_seeds']} seeds) measured a gain of {stage['gain']:+.3g} with a "
        f"seed-to-seed sd of {stage['seed_sd']:.3g}, so a second stage ran the recipe alone on more seeds, "
        + (f"{stage['seeds']} in all (the rule asked for {stage['seeds_for_power']}; capped at study_max_seeds, "
           f"z > {stage['target_z']:g} with probability {stage['probability_z_above_target']:.0%} instead of "
           f"{stage['power']:.0%})." if stage.get("capped") else
           f"{stage['seeds']} in all, for z > {stage['target_z']:g} with probability {stage['power']:.0%}."))
    return (f"Sized for the recipe's held-out reward gain at β = {design.middle:g} to reach z {power['target_z']:g} "
            f"(expected gain {power['expected_gain']:+.3g}, z {power['expected_z']:.2f}).{second} Measured "
            f"{got.gain:+.3g} [{got.ci_low:+.3g}, {got.ci_high:+.3g}], z {got.z:.2f} over {got.n_seeds} seeds: "
            f"{verdict}.")


def _jsonable_ppo(ppo: PPOConfig) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(ppo).items()
            if k not in ("seed", "init_kl_coef", "adaptive_kl") and not (k in LR_RATIOS and v == 1)}


def _jsonable(design: Design) -> dict:
    d = asdict(design)
    d["ppo"] = _jsonable_ppo(design.ppo)  # the LR_RATIOS absent at TRL's 1, as in Run.fingerprint
    d["middle_beta"] = design.middle
    return d


def design_from_manifest(manifest: dict) -> Design:
    d = dict(manifest["design"])
    d.pop("middle_beta", None)
    ppo = PPOConfig(**{**d.pop("ppo"), "adaptive_kl": False})
    return Design(betas=tuple(d["betas"]), seeds=tuple(d["seeds"]), side_seeds=tuple(d["side_seeds"]),
                  ppo=replace(ppo, response_len=tuple(ppo.response_len)), eval_every=d["eval_every"],
                  reward=d["reward"], recipe_seeds=tuple(d.get("recipe_seeds", ())))
