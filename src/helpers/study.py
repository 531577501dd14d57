"""The full study (`make study`, rendered by notebook 05): the thread's questions with the reward on.

Notebook 04 fits the tutorial's 25 minutes; its seeds and steps are too few for the reward-on claims. The
study runs the arms that carry the thread's questions at fixed KL coefficients β (no adaptive controller):

  - the pitfall `adapter+disabled` and its control `adapter+ref-adapter` at every β (the dose-response);
  - the recipe `merged+disabled` and RL from the base `base+disabled` at the middle β;
  - `stacked` on the first seeds at the middle β (an equality with `merged+disabled` needs few seeds);
  - a second stage: more seeds of the recipe alone at the middle β, where the first stage's own spread says
    its gain over step 0 needs them (below).

How it is sized, written into the manifest:
  - β: a step-0 calibration measures the pitfall's starting drift, KL(SFT‖base) per response, and the
    reward's spread across responses; β_k = ratio_k · spread / drift, so the penalty on that drift is
    `study_beta_ratios` (0.1, 1, 10) times the reward's spread: negligible, comparable, dominant.
  - steps: a power calculation from the tutorial's committed 03 run (its paired held-out gain and its
    standard error over prompts), so that the recipe's gain over step 0 at the middle β is
    `study_target_z` standard errors from zero with `study_seeds` seeds.
  - the second stage: once every first-stage seed of the recipe has landed, its measured gain g and spread s
    over those seeds give the seeds n = ⌈((z_target + z_power)·s/g)²⌉ for z > z_target with probability
    `study_topup_power` (normal approximation); the recipe alone runs the seeds beyond the first stage's (a
    gain over step 0 is per arm, it needs no partner). Paired claims use only the seeds both arms ran.

Runs go seed by seed (every arm and β of seed 0, then seed 1, ...), so a study stopped part-way still has
complete paired seeds. Each run lands in `docs/study/<profile>/runs/` with its fingerprint; the study's SFT
adapter is committed beside them (`inputs/sft_adapter`) and merged again where it is missing, so a later
session, on another machine, resumes instead of starting over.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from statistics import NormalDist
from pathlib import Path

import numpy as np
import pandas as pd

from .arms import Sources, profile_quantization
from .artifacts import project_root, read_json, require, stage_dir, write_csv, write_json
from .evaluation import Evaluator, t_interval
from .ppo import LR_RATIOS, PPOConfig, config_from_profile
from .profiles import Profile, get_profile
from .reference import FrozenModel
from .runs import Inputs, Results, Run, check_count, content_hash, load_results, run_all, where_it_ran
from .verdicts import Claim, findings

STUDY = "fixed-beta"
RECIPE = "merged+disabled"  # merge, then a new LoRA; the reference is the merged model (adapters disabled)
EVERY_BETA = ("adapter+disabled", "adapter+ref-adapter")  # the pitfall and its control
AT_MIDDLE = (RECIPE, "base+disabled")  # the recipe, and RL straight from the base
SIDE = ("stacked",)  # equals merged+disabled up to float rounding: the first `study_side_seeds` seeds


def study_dir(profile_name: str, folder: str | Path | None = None, version: str | None = None) -> Path:
    """Where a profile's study lives in the project (committed), unless `folder` is given. Each setting of the
    study is a version (Profile.study_version): "v1" in `docs/study/<profile>/` itself (where it was committed
    before versions existed), a later one in `docs/study/<profile>/<version>/`, so that a new setting never
    replaces a committed study. `version=None`: the newest *complete* version, what notebook 05 and the
    README render (a version still running does not replace the one before it)."""
    if folder is not None:
        return Path(folder)
    root = (project_root() or Path.cwd()) / "docs" / "study" / profile_name
    if version is not None:
        return root if version == "v1" else root / version
    later = sorted((d for d in root.glob("v*") if d.name[1:].isdigit()), key=lambda d: int(d.name[1:]), reverse=True)
    return next((d for d in later if study_complete(d)), root)


def study_complete(folder: Path) -> bool:
    """Every run of the study's design has landed (its manifest says so)."""
    manifest = Path(folder) / "manifest.json"
    if not manifest.exists():
        return False
    m = read_json(manifest)
    return m.get("runs_done", 0) >= m.get("runs", 1) and not m.get("missing")


# --- sizing: β from a calibration, steps from a power calculation ------------------------------------------


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


def pilot_from_notebook(path: str | Path) -> dict:
    """The paired held-out gain of an executed notebook 03 (its 'PPO − SFT' table) and the PPO settings it
    ran with: the measured spread the power calculation starts from."""
    nb = json.loads(Path(path).read_text())
    texts = ["".join(o.get("data", {}).get("text/plain", o.get("text", ""))) for c in nb["cells"]
             if c["cell_type"] == "code" for o in c.get("outputs", [])]
    table = next((t for t in texts if "PPO − SFT, held-out reward" in t), None)
    config = next((t for t in texts if t.startswith("PPOConfig(")), None)
    if table is None or config is None:
        raise ValueError(f"{path} has no executed paired-gain table and PPOConfig: run `make publish` after "
                         f"`make tutorial`, or give the study's steps (Profile.study_steps)")
    values = {m[1]: float(m[2]) for m in re.finditer(r"^(\w+)\s+(-?[\d.]+)$", table, re.M)}
    settings = {m[1]: int(m[2]) for m in re.finditer(r"(steps|batch_size|mini_batch_size|ppo_epochs)=(\d+)", config)}
    return {"source": str(Path(path).name), **{k: values[k] for k in ("gain", "se", "prompts")}, **settings}


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


def updates_per_step(batch_size: int, mini_batch_size: int, ppo_epochs: int) -> int:
    return math.ceil(batch_size / mini_batch_size) * ppo_epochs


def power_steps(profile: Profile, pilot: dict, seeds: int, ppo: PPOConfig) -> dict:
    """Steps for the recipe's gain at the middle β to reach `study_target_z` with `seeds` seeds.

    Assumptions, stated in the manifest: the gain grows linearly with steps at the pilot's rate per optimizer
    update; one run's measured gain has the pilot's per-prompt spread over the study's prompts; and seeds
    differ in training as much again (a factor √2 on that spread)."""
    per_update = pilot["gain"] / (pilot["steps"] * updates_per_step(pilot["batch_size"], pilot["mini_batch_size"],
                                                                     pilot["ppo_epochs"]))
    gain_per_step = per_update * updates_per_step(ppo.batch_size, ppo.mini_batch_size, ppo.ppo_epochs)
    prompt_sd = pilot["se"] * math.sqrt(pilot["prompts"])  # per-prompt sd of the paired difference
    run_sd = prompt_sd * math.sqrt(profile.eval_samples / profile.study_eval_samples) / math.sqrt(
        profile.study_eval_prompts)
    if "seed_sd" in pilot:  # measured over seeds (the tuning): its training part, plus the study's evaluation noise
        seed_sd = math.sqrt(max(pilot["seed_sd"] ** 2 - pilot["se"] ** 2, 0.0) + run_sd ** 2)
    else:  # one run (notebook 03): seeds assumed to differ in training as much again as in evaluation
        seed_sd = math.sqrt(2) * run_sd
    steps = math.ceil(profile.study_target_z * seed_sd / (gain_per_step * math.sqrt(seeds)))
    every = max(1, math.ceil(steps / (profile.study_eval_points - 1)))
    steps = every * (profile.study_eval_points - 1)  # evaluations at 0, every, 2·every, ... = steps
    return {"pilot": pilot, "gain_per_step": gain_per_step, "run_sd": run_sd, "seed_sd": seed_sd, "seeds": seeds,
            "target_z": profile.study_target_z, "steps": steps, "expected_gain": gain_per_step * steps,
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


# --- the design: a frozen value that yields the runs -------------------------------------------------------


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
    """Every question of the thread as a claim, each against the arm that differs from it in one thing."""
    pit, ctl, mid = "adapter+disabled", "adapter+ref-adapter", design.middle
    pitfall = [("the pitfall pulls the policy towards the base", "kl_base_change", "<0"),
               ("the pitfall drifts further from the SFT model", "kl_sft_end", ">0"),
               ("the pitfall raises held-out IMDB perplexity", "perplexity_end", ">0")]
    claims = [Claim(text, pit, ctl, measure, sign, study=STUDY, beta=b) for b in design.betas
              for text, measure, sign in pitfall]
    claims += [Claim(f"{text}, more so at larger β", pit, ctl, measure, sign, study=STUDY, over_beta=True)
               for text, measure, sign in pitfall]
    claims += [
        Claim("keeping the SFT adapter (right reference) reaches less reward at matched KL to SFT than merging",
              ctl, RECIPE, "reward_at_kl_sft", "<0", study=STUDY, beta=mid),
        Claim("keeping the SFT adapter (right reference) gains less reward per step than merging", ctl,
              RECIPE, "reward_gain_per_step", "<0", study=STUDY, beta=mid),
        Claim("SFT first gains more held-out reward than RL from the base", RECIPE, "base+disabled",
              "reward_gain", ">0", study=STUDY, beta=mid),
        Claim("SFT first reaches more reward at matched KL to its reference than RL from the base",
              RECIPE, "base+disabled", "reward_at_kl_ref", ">0", study=STUDY, beta=mid),
        Claim("SFT first ends with a higher held-out reward than RL from the base", RECIPE,
              "base+disabled", "reward_end", ">0", study=STUDY, beta=mid),
        # equal up to float rounding, which PPO's steps amplify: after 3 steps on tiny the largest relative
        # difference was 1.6e-4 on the reference path and 1.35e-3 on the fast path (helpers.fastpath; smol's
        # study, 15 steps on the reference path: 3.8e-4). A stacking error moves KL to the base by
        # KL(SFT || base), > 0.1 on every profile: far outside 1e-2
        Claim("stacking the SFT adapter under a new LoRA equals merging it", "stacked", RECIPE,
              "curves_relative", "=", study=STUDY, beta=mid, tolerance=1e-2),
        Claim("the pitfall: KL to the reference starts at KL(SFT‖base) > 0", pit, ctl, "kl_ref_start", ">0",
              study=STUDY, beta=mid, kind="sanity"),
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
    verdict = "RL moved as planned" if got.z > power["target_z"] else "RL moved less than the power calculation planned"
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


# --- running it ------------------------------------------------------------------------------------------


def study_inputs(profile: Profile, folder: Path, out=None) -> Inputs:
    """The study's inputs: its committed SFT adapter (copied from 01's output the first time), merged into
    the base in `outputs/<profile>/05_study/` where that merge is missing or was made from another adapter."""
    from .data import load_imdb, perplexity_reviews, ppo_queries
    from .merge import merge_adapter, save_merged
    from .models import load_tokenizer
    from .rewards import load_reward

    adapter = folder / "inputs" / "sft_adapter"
    if not adapter.exists():
        # a later version of the study keeps the first version's SFT model (the same SFT adapter), else 01's
        first = study_dir(profile.name, version="v1") / "inputs" / "sft_adapter"
        made = first if first.exists() and first != adapter else require(
            stage_dir(out, profile.name, "01_sft") / "adapter", "01_sft", profile.name)
        tmp = adapter.parent / ".sft_adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(made, tmp)
        tmp.rename(adapter)
    merged = stage_dir(out, profile.name, "05_study") / "merged"
    made_from = merged.parent / "made_from.json"
    if not merged.exists() or not made_from.exists() or read_json(made_from) != {"sft_adapter": content_hash(adapter)}:
        tokenizer = load_tokenizer(profile)
        model, check = merge_adapter(profile, adapter, tokenizer, load_imdb(profile)["heldout"]["text"][:4])
        save_merged(model, tokenizer, merged, check)
        write_json(made_from, {"sft_adapter": content_hash(adapter)})
        del model
    tokenizer = load_tokenizer(merged)
    data = load_imdb(profile)
    steps = profile.study_steps or 64  # enough prompts for any steps the power calculation gives (cycled)
    batch = profile.ppo_batch_size
    queries = ppo_queries(data["train"]["text"], tokenizer, n=steps * batch, seed=0)
    eval_queries = ppo_queries(data["heldout"]["text"], tokenizer, n=profile.study_eval_prompts, seed=1)
    perplexity_texts = perplexity_reviews(profile, data)
    sources = Sources(profile, adapter, merged, profile_quantization(profile))
    return Inputs(profile, sources, tokenizer, queries, eval_queries, {profile.reward: load_reward(profile)},
                  profile.reward, perplexity_texts, profile.study_eval_samples,
                  merged_from=f"merge of the study's sft_adapter {content_hash(adapter)}")


def design_for(profile: Profile, inputs: Inputs, folder: Path, sticks_loader) -> tuple[Design, dict]:
    """The design and how it was sized; the calibration is measured once per inputs and kept in the folder."""
    # notebook 03's PPO settings, the controller off: the power calculation's pilot ran exactly these (04's
    # cheaper batch of 8 in minibatches of 4 moved the recipe's KL about half as fast per optimizer update,
    # measured on a first smol seed, so its gain per update cannot be taken from 03's)
    ppo = config_from_profile(profile, adaptive_kl=False)
    kept = folder / "calibration.json"
    key = content_hash(inputs.fingerprint(), ppo.response_len)
    calibration = read_json(kept) if kept.exists() else {}
    if calibration.get("inputs") != key:
        calibration = {"inputs": key, **calibrate(inputs, sticks_loader(), ppo.response_len)}
        write_json(kept, calibration)
    betas = beta_grid(calibration, profile.study_beta_ratios)
    seeds = tuple(range(check_count("study_seeds", profile.study_seeds)))
    sized = folder / "power.json"  # made once: re-publishing 03 later must not move a study's steps
    if profile.study_steps:
        power = {"steps": profile.study_steps, "fixed_by": "Profile.study_steps"}
    elif sized.exists():
        power = read_json(sized)
    else:  # the tuning study's measured spread over seeds where it ran this setting, else notebook 03's run
        root = project_root() or Path.cwd()
        pilot = (pilot_from_tuning(root / "docs" / "tuning" / profile.name, ppo, profile.eval_prompts)
                 or pilot_from_notebook(root / "docs" / "notebooks" / "03_ppo_lora.ipynb"))
        power = power_steps(profile, pilot, len(seeds), ppo)
        write_json(sized, power)
    steps = power["steps"]
    every = max(1, math.ceil(steps / (profile.study_eval_points - 1)))
    design = Design(betas, seeds, seeds[: profile.study_side_seeds], replace(ppo, steps=steps), every, profile.reward)
    sizing = {"calibration": calibration, "beta_ratios": list(profile.study_beta_ratios),
              "beta_rule": "β = ratio · reward_sd / kl_sft_base_per_response, to 1 significant figure",
              "power": power}
    first = [folder / "runs" / design.run(RECIPE, seed, design.middle).path / "evaluation.csv" for seed in seeds]
    if profile.study_topup_power and all(f.exists() for f in first):
        gains = [e.reward_mean.iloc[-1] - e.reward_mean.iloc[0] for e in (pd.read_csv(f).sort_values("step")
                                                                         for f in first)]
        stage = second_stage(gains, profile.study_target_z, profile.study_topup_power, len(seeds),
                             profile.study_max_seeds)
        design = replace(design, recipe_seeds=tuple(range(len(seeds), stage["seeds"])))
        sizing["second_stage"] = stage
    return design, sizing


def run_study(profile: Profile, folder: str | Path | None = None, out=None, force: bool = False,
              command: str = "make study", execute: bool = True, workers: int | str = 1) -> Results:
    """Run (or resume) the profile's study into `folder`; write its findings, gains, figures and manifest
    there. `execute=False` runs nothing and reports on the runs that have landed (a study stopped part-way).
    `workers` > 1: that many Ray workers on this machine (or $RAY_ADDRESS's cluster), see helpers.workers."""
    from .arms import yardsticks

    folder = study_dir(profile.name, folder, version=profile.study_version)
    check_same_setting(profile, folder)
    folder.mkdir(parents=True, exist_ok=True)
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    inputs = study_inputs(profile, folder, out)
    sticks = lambda: yardsticks(profile, inputs.sources.merged_dir, inputs.sources.quantize)  # noqa: E731
    design, sizing = design_for(profile, inputs, folder, sticks)
    for stage in (1, 2):  # the second stage is sized from the first's runs, once they have landed
        runs = design.runs()
        print(f"study on {profile.name}: {len(runs)} runs, β {list(design.betas)}, {len(design.seeds)} seeds "
              f"(+{len(design.recipe_seeds)} of the recipe), {design.ppo.steps} steps, held-out evaluation "
              f"every {design.eval_every}", flush=True)
        results = run_all(runs, inputs, folder, force=force, combined=("metrics", "evaluation", "runs"),
                          run_missing=execute, workers=workers)
        if stage == 1:
            planned = design
            design, sizing = design_for(profile, inputs, folder, sticks)
            if design == planned:
                break
    write_verdicts(results, design, folder)
    manifest_file = folder / "manifest.json"
    manifest = read_json(manifest_file) if manifest_file.exists() else {"sessions": []}
    ran = results.runs
    manifest.update({
        "command": command, "profile": profile.name, "design": _jsonable(design), "sizing": sizing,
        "runs": len(runs), "runs_done": int(len(ran)),
        "compute_s": float(ran["total_time_s"].sum()) if len(ran) else 0.0,
        "commits": sorted(set(ran["commit"].astype(str))) if len(ran) else [],
        "machines": sorted(set(ran["cpu"].astype(str))) if len(ran) else [],
        "missing": [r.label for r in runs if not (folder / "runs" / r.path / "fingerprint.json").exists()],
    })
    done_before = manifest["sessions"][-1]["runs_done"] if manifest["sessions"] else 0
    manifest["sessions"].append({"started": started.isoformat(timespec="seconds"), "wall_s": time.perf_counter() - clock,
                                 "executed": execute, "runs_done": int(len(ran)),
                                 "runs_landed": max(0, int(len(ran)) - done_before), **where_it_ran()})
    write_json(manifest_file, manifest)
    return results


def check_same_setting(profile: Profile, folder: Path) -> None:
    """A study folder holds one PPO setting: a profile whose settings differ from the committed manifest's
    is refused (with what differs), instead of replacing its runs one by one."""
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return
    committed = {k: v for k, v in read_json(manifest)["design"]["ppo"].items() if k != "steps"}
    current = {k: v for k, v in _jsonable_ppo(config_from_profile(profile, adaptive_kl=False)).items() if k != "steps"}
    changed = {k: (committed.get(k), current.get(k)) for k in set(committed) | set(current)
               if json.dumps(committed.get(k)) != json.dumps(current.get(k))}
    if changed:
        raise ValueError(f"The study in {folder} was made with other PPO settings ("
                         + "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in sorted(changed.items()))
                         + f"). A new setting is a new version: set Profile.study_version of {profile.name!r} to a "
                         f"new name (now {profile.study_version!r}); the committed study stays as it is.")


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


def write_verdicts(results: Results, design: Design, folder: Path) -> None:
    """findings.csv, gains.csv and the two figures, from the runs that have landed."""
    import matplotlib.pyplot as plt

    from .artifacts import save_figure
    from .plots import dose_response, study_frontier

    claims = study_claims(design)
    table = findings(results, claims)
    write_csv(folder / "findings.csv", table)
    write_csv(folder / "gains.csv", reward_gains(results))
    if len(results.runs):
        save_figure(dose_response(results, claims, slopes=table[table.beta == "slope"]), folder / "figures" / "dose_response.png")
        save_figure(study_frontier(results), folder / "figures" / "frontier.png")
        plt.close("all")


def load_study(folder: str | Path) -> tuple[Results, Design, dict]:
    """A committed study: its tables, design and manifest (what notebook 05 renders)."""
    folder = Path(folder)
    if not (folder / "manifest.json").exists():
        raise FileNotFoundError(f"No study in {folder} (manifest.json missing): run `make study` first, or set "
                                f"RUN_STUDY = True in notebook 05.")
    manifest = read_json(folder / "manifest.json")
    return load_results(folder), design_from_manifest(manifest), manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="a profile name (default: $TUTORIAL_PROFILE or smol)")
    parser.add_argument("--study-dir", default=None, help="default: docs/study/<profile>/")
    parser.add_argument("--out", default=None, help="the output folder with 01's adapter (default: outputs/)")
    parser.add_argument("--force", action="store_true", help="re-run finished runs")
    parser.add_argument("--workers", default="auto", type=lambda v: v if v == "auto" else int(v),
                        help='runs in parallel on Ray: this many local workers, each on its share of the cores; '
                             '"auto" (default): 2 on a CPU machine with Ray installed, else 1')
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rewrite findings, figures and manifest from the runs that landed")
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    run_study(profile, args.study_dir, args.out, force=args.force, execute=not args.report_only,
              command="make study" + (f" PROFILE={profile.name}" if args.profile else ""), workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())


# --- the thread's questions, each answered from the verdicts -------------------------------------------------


def _summary(row) -> str:
    """effect [95% interval] (verdict, n seeds); an equality claim's effect is its worst seed, no interval."""
    no_interval = row["expected"] == "=" or row["ci_low"] in ("", None) or pd.isna(row["ci_low"])
    ci = "" if no_interval else f" [{float(row['ci_low']):+.3g}, {float(row['ci_high']):+.3g}]"
    return f"{float(row['effect']):+.3g}{ci} ({row['verdict']}, {int(row['n_seeds'])} seeds)"


def thread_answers(table: pd.DataFrame, design: Design) -> pd.DataFrame:
    """The thread's four questions, each with a one-line answer composed from the findings table (`findings` of
    `study_claims`): the effect, its 95% interval, the verdict and the number of paired seeds."""
    t = table.set_index(["claim", "beta"])
    mid = f"{design.middle:g}"

    def row(claim, beta=mid):
        return t.loc[(claim, beta)] if (claim, beta) in t.index else None

    def say(claim, beta=mid, what=""):
        r = row(claim, beta)
        return f"{what}{_summary(r)}" if r is not None else f"{what}not run yet"

    pull = "the pitfall pulls the policy towards the base"
    answers = [
        ("Why merge? (keep the SFT adapter, reference = adapters disabled = the base)",
         say(pull, what=f"at β = {mid}, Δ KL to the base (nats/token), pitfall − control: ") + "; " +
         say("the pitfall raises held-out IMDB perplexity", what="Δ perplexity: ") + "; " +
         say(f"{pull}, more so at larger β", "slope", "slope of the pull per ×10 of β: ")),
        ("Why not keep training the SFT adapter, with the SFT adapter as the reference?",
         say("keeping the SFT adapter (right reference) reaches less reward at matched KL to SFT than merging",
             what="held-out reward at matched KL to SFT, kept − merged: ") + "; " +
         say("keeping the SFT adapter (right reference) gains less reward per step than merging",
             what="gain per step: ")),
        ("Does SFT first make RL converge faster than RL from the base?",
         say("SFT first gains more held-out reward than RL from the base", what="reward gain, SFT first − base: ")
         + "; " + say("SFT first reaches more reward at matched KL to its reference than RL from the base",
                      what="at matched KL to each one's reference: ")),
        ("Can I stack a new LoRA on the frozen SFT adapter instead of merging?",
         say("stacking the SFT adapter under a new LoRA equals merging it",
             what="largest relative difference from merged+disabled in any curve, worst seed: ")),
    ]
    return pd.DataFrame(answers, columns=["question", "answer from the study"])


def readme_block(folder: str | Path) -> str:
    """The README's study section, generated from a committed study (`make publish` writes it)."""
    results, design, manifest = load_study(folder)
    table = findings(results, study_claims(design))
    answers = thread_answers(table, design)
    when = manifest["sessions"][-1]["started"][:10] if manifest.get("sessions") else "?"
    where = Path(folder).resolve().relative_to(project_root()) if project_root() else Path(folder)
    lines = [f"From the committed study in `{where.as_posix()}/` (`{manifest['command']}`; "
             f"{manifest['runs_done']} of {manifest['runs']} runs done, last session {when}, machines: "
             f"{', '.join(manifest['machines'])}); rendered by "
             f"[notebook 05](docs/notebooks/05_study.ipynb). Effects are 95% intervals over paired seeds.", "",
             "| question | answer from the study |", "| --- | --- |"]
    lines += [f"| {q} | {a} |" for q, a in answers.itertuples(index=False)]
    lines += ["", power_check(results, design, manifest)]
    return "\n".join(lines)
