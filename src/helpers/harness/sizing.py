"""How the PPO study is sized, before it runs: β from a step-0 calibration, steps from a power calculation on
a measured pilot, and the second stage's seeds from the first stage's own spread (helpers.harness.study's
docstring says how they fit together)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from ..artifacts import read_json
from ..evaluation import Evaluator
from ..ppo import PPOConfig
from ..profiles import Profile
from .results import Results
from .run import Inputs
from .verdicts import Claim, beta_label, claim_values, findings, seeds_needed


def round_1sf(x: float) -> float:
    """One significant figure: grid values that do not move with the last digits of a measurement."""
    return float(f"{x:.0e}")


def calibrate(inputs: Inputs, sticks: dict, response_len: tuple[int, int], seed: int = 0) -> dict:
    """At step 0, on the study's held-out prompts: the SFT model's responses, their reward spread, and their
    KL to the base, per token and per response (per token × the mean drawn response length)."""
    evaluator = Evaluator(inputs.tokenizer, inputs.eval_queries, inputs.reward(inputs.eval_reward), response_len,
                          seed=seed, samples_per_prompt=inputs.eval_samples, yardsticks={})
    row = evaluator(0, sticks["sft"].model, sticks["base"])  # the SFT model, measured against the base
    tokens = float(evaluator.lengths.mean())
    return {"kl_sft_base_per_token": row["kl_ref_exact"], "response_tokens": tokens,
            "kl_sft_base_per_response": row["kl_ref_exact"] * tokens,
            "reward_sd": float(evaluator.samples()["reward"].std(ddof=1)),
            "responses": int(evaluator.lengths.size)}


def beta_grid(calibration: dict, ratios) -> tuple[float, ...]:
    """β_k = ratio_k · reward spread / drift per response, to one significant figure."""
    unit = calibration["reward_sd"] / calibration["kl_sft_base_per_response"]
    return tuple(sorted({round_1sf(r * unit) for r in ratios}))


def pilot_from_tutorial(folder: str | Path) -> dict:
    """The paired held-out gain of a published notebook 03 run (`docs/tutorial/<profile>/03_ppo_evaluation.json`,
    written by 03 and copied by `make publish`) and the PPO settings it ran with: the measured spread the power
    calculation starts from where the tuning did not run the study's setting."""
    file = Path(folder) / "03_ppo_evaluation.json"
    keys = ("gain", "se", "prompts", "steps", "batch_size", "mini_batch_size", "ppo_epochs")
    pilot = read_json(file) if file.exists() else {}
    if any(k not in pilot for k in keys):
        raise ValueError(f"{file} is missing or has no PPO settings ({', '.join(keys)}): run notebook 03 "
                         f"(`make tutorial`) and `make publish`, or fix the study's steps (Profile.study.steps)")
    return {"source": f"{Path(folder).name}/{file.name}", **{k: pilot[k] for k in keys}}


def pilot_from_tuning(folder: str | Path, ppo: PPOConfig, prompts: int) -> dict | None:
    """The tuning study's confirmation trials (`docs/tuning/<profile>/trials.csv`) of exactly the setting `ppo`
    is, at their last evaluation: the paired held-out gain, its standard error over `prompts` prompts, and its
    spread over seeds, measured. None where the tuning has no such trials on 3 seeds or more."""
    file = Path(folder) / "trials.csv"
    if not file.exists():
        return None
    t = pd.read_csv(file)
    t = t[(t.prompts == "confirm") & np.isclose(t.lr, ppo.learning_rate)
          & np.isclose(t.lora_b_lr_ratio, ppo.lora_b_lr_ratio) & np.isclose(t.value_lr_ratio, ppo.value_lr_ratio)
          & np.isclose(t.beta0, ppo.init_kl_coef) & (t.batch == ppo.batch_size)
          & (t.minibatch == ppo.mini_batch_size) & (t.epochs == ppo.ppo_epochs)
          & (t.response_len == f"{ppo.response_len[0]}-{ppo.response_len[1]}")]
    if t.empty:
        return None
    t = t[t.step == t.step.max()]
    if t.seed.nunique() < 3:
        return None
    return {"source": f"{Path(folder).name}/trials.csv (the tuning's confirmation, setting {t.setting.iloc[0]!r})",
            "gain": float(t.gain.mean()), "se": float(t.gain_se.mean()), "prompts": prompts,
            "steps": int(t.step.iloc[0]), "batch_size": ppo.batch_size, "mini_batch_size": ppo.mini_batch_size,
            "ppo_epochs": ppo.ppo_epochs, "seeds": int(t.seed.nunique()), "seed_sd": float(t.gain.std(ddof=1))}


def power_steps(profile: Profile, pilot: dict, seeds: int, ppo: PPOConfig) -> dict:
    """Steps for the recipe's gain at the middle β to reach `study_target_z` with `seeds` seeds.

    Assumptions, stated in the manifest: the gain grows linearly with steps at the pilot's rate per optimizer
    update; one run's measured gain has the pilot's per-prompt spread over the study's prompts; and seeds
    differ in training as much again (a factor √2 on that spread)."""
    piloted = replace(ppo, batch_size=pilot["batch_size"], mini_batch_size=pilot["mini_batch_size"],
                      ppo_epochs=pilot["ppo_epochs"])
    per_update = pilot["gain"] / (pilot["steps"] * piloted.updates_per_step)
    gain_per_step = per_update * ppo.updates_per_step
    prompt_sd = pilot["se"] * math.sqrt(pilot["prompts"])  # per-prompt sd of the paired difference
    run_sd = prompt_sd * math.sqrt(profile.evaluation.samples / profile.study.eval_samples) / math.sqrt(
        profile.study.eval_prompts)
    if "seed_sd" in pilot:  # measured over seeds (the tuning): its training part, plus the study's evaluation noise
        seed_sd = math.sqrt(max(pilot["seed_sd"] ** 2 - pilot["se"] ** 2, 0.0) + run_sd ** 2)
    else:  # one run (notebook 03): seeds assumed to differ in training as much again as in evaluation
        seed_sd = math.sqrt(2) * run_sd
    steps = math.ceil(profile.study.target_z * seed_sd / (gain_per_step * math.sqrt(seeds)))
    steps = profile.study.eval_every(steps) * (profile.study.eval_points - 1)  # evaluations at 0, every, ..., steps
    return {"pilot": pilot, "gain_per_step": gain_per_step, "run_sd": run_sd, "seed_sd": seed_sd, "seeds": seeds,
            "target_z": profile.study.target_z, "steps": steps, "expected_gain": gain_per_step * steps,
            "expected_z": gain_per_step * steps * math.sqrt(seeds) / seed_sd}


def second_stage(gains, target_z: float, power: float, first_seeds: int, max_seeds: int) -> dict:
    """The recipe's seeds for its gain to pass z > target_z with probability `power`, from the first stage's
    measured per-seed gains (normal approximation: z ≈ g·√n / s)."""
    gains = np.asarray(gains, dtype=float)
    g, s = float(gains.mean()), float(gains.std(ddof=1))
    out = {"first_stage_seeds": int(gains.size), "gain": g, "seed_sd": s, "target_z": target_z, "power": power,
           "rule": "n = ceil(((target_z + z_power) * seed_sd / gain)^2), at most max_seeds", "max_seeds": max_seeds}
    if g <= 0:  # RL did not move on average: more seeds would not make it
        return {**out, "seeds": first_seeds, "why": "the first stage's mean gain is not positive"}
    n = math.ceil(((target_z + NormalDist().inv_cdf(power)) * s / g) ** 2)
    seeds = min(max(n, first_seeds), max_seeds)
    expected = g * math.sqrt(seeds) / s
    return {**out, "seeds_for_power": n, "seeds": seeds, "capped": n > max_seeds, "expected_z": expected,
            "probability_z_above_target": 1 - NormalDist().cdf(target_z - expected)}


def pilot_power(results: Results, claims: list[Claim], pilot) -> pd.DataFrame:
    """The power calculation from a pilot: each finding's effect and spread over the `pilot` seeds alone, the
    seeds that would settle it at that spread (`seeds_needed`), beside the seeds the study ran and its verdict
    on all of them. A pilot's spread over 2 seeds is itself uncertain: the seeds needed are an estimate."""
    full = findings(results, claims).set_index(["study", "key", "beta"])
    small = results.seeds(pilot)
    rows = []
    for c in claims:
        if c.kind != "finding" or (got := claim_values(small, c)) is None:
            continue
        _, values = got
        beta = beta_label(c)
        after = full.loc[(c.study, c.key, beta)]
        needed = seeds_needed(values)
        rows.append({"key": c.key, "beta": beta, "claim": c.claim, "pilot_seeds": len(values),
                     "pilot_effect": float(values.mean()) if len(values) else math.nan,
                     "pilot_sd": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
                     "seeds_needed": "–" if needed is None else (f"{needed}+" if needed >= 10_000 else str(needed)),
                     "within_reach": needed is not None and needed <= int(after["n_seeds"]),
                     "seeds_run": int(after["n_seeds"]), "verdict": after["verdict"]})
    return pd.DataFrame(rows)
