"""The GRPO study (`make study-grpo`, rendered by notebook 06): TRL's own GRPOTrainer at the frameworks' default βs.

The pitfall (the SFT adapter trained on, TRL's "ref" copy removed: the reference is the raw base) against
its control (TRL's "ref" copy: the reference is the SFT model), which differs from it in the reference only,
at the βs 2026's frameworks default to (helpers.harness.frameworks: verl and Unsloth 0.001, OpenRLHF 0.01,
ms-swift 0.04) and at one calibrated β where the penalty clearly matters; the recipe (merged model + a new
LoRA) beside TRL's copy at ms-swift's 0.04; and β = 0, TRL's default, where no reference exists (the pitfall
and the copy are then the same run: tests/test_grpo.py).

The calibrated β: TRL scales each group's rewards by their spread, so the advantage has a spread of about 1
per completion, on every token; the penalty is β times the per-token KL. At β = ratio / KL(SFT‖base) per
token, the penalty on the pitfall's starting drift is `ratio` times the advantage's spread (ratio 1: as large
as the reward's signal). KL(SFT‖base) per token is the PPO study's calibration (the same SFT adapter and
held-out prompts), so both studies are sized from one measurement.

The inputs are the PPO study's (its committed SFT adapter, prompts, held-out prompts, yardsticks), so the
two algorithms answer the same question on the same model and reward. Runs land in
`docs/study/<profile>/grpo/runs/` with their fingerprints and resume like the PPO study's.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..artifacts import read_json, save_figure, write_csv
from ..profiles import Profile, configure
from ..settings import GRPOSettings
from .figures import dose_response, grpo_curves
from .results import Results
from .run import Run
from .schedule import run_all
from .sizing import round_1sf
from .study import read_committed, study_dir, study_inputs, write_manifest
from .verdicts import MEASURES, SAYS, Claim, dose_claims, findings, verdict

STUDY = "grpo"
FRAMEWORK_BETAS = (0.001, 0.01, 0.04)  # verl and Unsloth, OpenRLHF, ms-swift (helpers.harness.frameworks)
MIDDLE = 0.04  # the recipe runs here, beside TRL's copy
PIT, COPY, RECIPE = "pitfall", "ref-copy", "recipe"
REPORT_FILES = ("findings.csv", "figures/dose_response.png", "figures/curves.png")
PILOT = (0, 1)  # the first two seeds: the power calculation's pilot (pilot_power)


@dataclass(frozen=True)
class GRPODesign:
    betas: tuple[float, ...]  # β > 0: the pitfall and its control at each
    seeds: tuple[int, ...]
    grpo: GRPOSettings
    eval_every: int
    reward: str

    def run(self, arm: str, seed: int, beta: float) -> Run:
        return Run(STUDY, arm, seed, replace(self.grpo, beta=beta), self.reward, self.eval_every, trainer="grpo")

    def runs(self) -> list[Run]:
        """Seed by seed (a study stopped part-way has whole paired seeds): β = 0 once, then the pitfall and its
        control at every β, then the recipe at the middle β."""
        return [r for seed in self.seeds for r in [
            self.run(PIT, seed, 0.0), *[self.run(arm, seed, b) for b in self.betas for arm in (PIT, COPY)],
            self.run(RECIPE, seed, MIDDLE)]]


def grpo_study_dir(profile_name: str) -> Path:
    """docs/study/<profile>/grpo/: one GRPO study per profile, beside the PPO study's first version."""
    return study_dir(profile_name, version="v1") / STUDY


def calibrated_beta(kl_sft_base_per_token: float, ratio: float = 1.0) -> float:
    """β at which the penalty on the pitfall's starting drift is `ratio` times the advantage's spread (1)."""
    return round_1sf(ratio / kl_sft_base_per_token)


def design_for(profile: Profile, seeds: int, calibration: dict | None = None) -> tuple[GRPODesign, dict]:
    """The design; `calibration` (KL(SFT‖base) per token) is the PPO study's of the profile's version unless given."""
    calibration = calibration or read_json(study_dir(profile.name, version=profile.study.version) / "calibration.json")
    top = calibrated_beta(calibration["kl_sft_base_per_token"])
    grpo = profile.grpo
    design = GRPODesign(tuple(sorted({*FRAMEWORK_BETAS, top})), tuple(range(seeds)), grpo,
                        profile.study.eval_every(grpo.steps), profile.reward)
    sizing = {"calibration": calibration, "calibrated_beta": top,
              "beta_rule": "β = 1 / KL(SFT‖base) per token, to 1 significant figure (the advantage's spread is 1)"}
    return design, sizing


def grpo_claims(design: GRPODesign) -> list[Claim]:
    pitfall = [("pull", "kl_base_change", "<0"), ("drift", "kl_sft_end", ">0"), ("perplexity", "perplexity_end", ">0"),
               ("pull_cost", "reward_end", "<0")]
    says = {**SAYS, "pull_cost": "the pitfall ends with less held-out reward"}
    claims = dose_claims(PIT, COPY, STUDY, design.betas, pitfall, says)
    kept = "continuing the SFT adapter with TRL's copy"
    claims += [
        Claim(f"{kept} reaches less reward at matched KL to SFT than merging", COPY, RECIPE, "reward_at_kl_sft", "<0",
              study=STUDY, beta=MIDDLE, key="kept_at_kl"),
        Claim(f"{kept} moves away from the SFT model more slowly per step than merging", COPY, RECIPE,
              "kl_sft_per_step", "<0", study=STUDY, beta=MIDDLE, key="kept_kl_per_step"),
        Claim(SAYS["kl_ref_start"], PIT, COPY, "kl_ref_start", ">0", study=STUDY, beta=MIDDLE, kind="sanity",
              key="kl_ref_start"),
    ]
    return claims


def small_beta_against_none(results: Results, beta: float) -> dict:
    """Does a penalty of `beta` on the base do anything measurable? Per seed: the pitfall's change in KL to the
    base at `beta` minus at β = 0 (no reference at all), with the same prompts and samples until they differ."""
    unit, change = MEASURES["kl_base_change"]  # the pull's own measure, here one arm at two βs
    diffs = (change(results.select(STUDY, beta), PIT) - change(results.select(STUDY, 0.0), PIT)).dropna()
    return {"kind": "finding", "key": "small_beta", "claim": f"a penalty of β = {beta:g} on the base pulls the pitfall "
            f"towards the base, against no reference (β = 0)", "study": STUDY, "beta": f"{beta:g}", "arm": PIT,
            "control": f"{PIT} at β = 0", "measure": unit, "expected": "<0",
            **verdict(diffs.to_numpy(), "<0", grows_with_steps=True)}


def write_report(results: Results, design: GRPODesign, folder: Path) -> pd.DataFrame:
    table = findings(results, grpo_claims(design))
    if len(results.runs) and {0.0, min(design.betas)} <= set(results.runs.beta):
        table = pd.concat([table, pd.DataFrame([small_beta_against_none(results, min(design.betas))])], ignore_index=True)
    write_csv(folder / "findings.csv", table)
    if len(results.runs):
        save_figure(dose_response(results, grpo_claims(design), slopes=table[table.beta == "slope"], arm=PIT,
                                  title="GRPO dose-response: the pitfall (reference = base) against TRL's copy "
                                        "(reference = SFT adapter)"), folder / "figures" / "dose_response.png")
        save_figure(grpo_curves(results), folder / "figures" / "curves.png")
        plt.close("all")
    return table


def design_from_manifest(manifest: dict) -> GRPODesign:
    d = manifest["design"]
    grpo = {**d["grpo"], "response_len": tuple(d["grpo"]["response_len"])}
    return GRPODesign(tuple(d["betas"]), tuple(d["seeds"]), GRPOSettings(**grpo), d["eval_every"], d["reward"])


def load_grpo_study(folder: str | Path) -> tuple[Results, GRPODesign, dict]:
    """The committed GRPO study: its runs' tables, design and manifest (what notebook 06 renders)."""
    results, manifest = read_committed(folder, "make study-grpo", "06", "helpers.harness.grpo_study")
    return results, design_from_manifest(manifest), manifest


def run_grpo_study(profile: Profile, seeds: int, folder: Path | None = None, out=None, execute: bool = True,
                   workers=None, command: str = "make study-grpo", calibration: dict | None = None) -> Results:
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    folder = Path(folder or grpo_study_dir(profile.name))
    design, sizing = design_for(profile, seeds, calibration)
    inputs = study_inputs(profile, folder, out)
    runs = design.runs()
    print(f"GRPO study on {profile.name}: {len(runs)} runs, β {list(design.betas)} and 0, {seeds} seeds, "
          f"{design.grpo.steps} steps, held-out evaluation every {design.eval_every}", flush=True)
    results = run_all(runs, inputs, folder, combined=("metrics", "evaluation", "runs"), run_missing=execute,
                      workers=workers, keep_changed=True)
    if not len(results.runs):
        return results
    write_report(results, design, folder)
    write_manifest(folder, runs, results, {
        "command": command, "profile": profile.name, "trainer": "TRL GRPOTrainer",
        "design": {"betas": list(design.betas), "seeds": list(design.seeds), "grpo": asdict(design.grpo),
                   "eval_every": design.eval_every, "reward": design.reward}, "sizing": sizing},
        started, clock, execute, REPORT_FILES)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--seeds", type=int, default=3, help="paired seeds (default 3)")
    parser.add_argument("--study-dir", default=None, help="default: docs/study/<profile>/grpo/")
    parser.add_argument("--out", default=None, help="the output folder (the merged study model; default outputs/)")
    parser.add_argument("--workers", default=None, type=lambda v: v if v == "auto" else int(v))
    parser.add_argument("--report-only", action="store_true", help="run nothing: rewrite the report from the runs")
    args = parser.parse_args(argv)
    run_grpo_study(configure(args.profile), args.seeds, args.study_dir, args.out, execute=not args.report_only,
                   workers=args.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
