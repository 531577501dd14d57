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
    `study_beta_ratios` times the reward's spread (v1: 0.1, 1, 10; v2: 0.01, 0.1, 1).
  - steps: a power calculation from a measured pilot: the tuning's confirmation of the study's setting
    (docs/tuning/<profile>/), else the tutorial's published 03 run (its paired held-out gain and its standard
    error over prompts, docs/tutorial/<profile>/03_ppo_evaluation.json), so that the recipe's gain over step 0 at the middle β is
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
import shutil
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..artifacts import (MissingArtifactError, StaleArtifactError, locked, project_root, read_json, require, save_figure,
                         stage_dir, write_csv, write_json)
from ..data import load_imdb, perplexity_reviews, ppo_queries
from ..merge import merge_adapter, save_merged
from ..models import compute_dtype_name, load_tokenizer
from ..ppo import config_from_profile
from ..profiles import Profile, configure
from ..provenance import content_hash, where_it_ran
from ..rewards import load_reward
from ..run_notebooks import run as run_notebooks
from .arms import Sources, yardsticks
from .design import RECIPE, Design, _jsonable, _jsonable_ppo, design_from_manifest, reward_gains, study_claims
from .figures import dose_response, study_frontier
from .results import Results, load_results
from .run import Inputs
from .schedule import run_all
from .sizing import beta_grid, calibrate, pilot_from_tuning, pilot_from_tutorial, power_steps, second_stage
from .verdicts import findings
from .workers import resolve_workers


def study_dir(profile_name: str, folder: str | Path | None = None, version: str | None = None) -> Path:
    """Where a profile's study lives in the project (committed), unless `folder` is given. Each setting of the
    study is a version (Profile.study.version): "v1" in `docs/study/<profile>/` itself (where it was committed
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


def study_inputs(profile: Profile, folder: Path, out=None) -> Inputs:
    """The study's inputs: its committed SFT adapter (copied from 01's output the first time), merged into
    the base in `outputs/<profile>/05_study/` where that merge is missing or was made from another adapter."""
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
    steps = profile.study.steps or 64  # enough prompts for any steps the power calculation gives (cycled)
    batch = profile.ppo.batch_size
    queries = ppo_queries(data["train"]["text"], tokenizer, n=steps * batch, seed=0)
    eval_queries = ppo_queries(data["heldout"]["text"], tokenizer, n=profile.study.eval_prompts, seed=1)
    perplexity_texts = perplexity_reviews(profile, data)
    sources = Sources(profile, adapter, merged, profile.quantize)
    return Inputs(profile, sources, tokenizer, queries, eval_queries, {profile.reward: load_reward(profile)},
                  profile.reward, perplexity_texts, profile.study.eval_samples,
                  merged_from=f"merge of the study's sft_adapter {content_hash(adapter)}")


def design_for(profile: Profile, inputs: Inputs, folder: Path, sticks_loader, force: bool = False) -> tuple[Design, dict]:
    """The design and how it was sized; the calibration is measured once per inputs and kept in the folder."""
    # notebook 03's PPO settings, the controller off: the power calculation's pilot ran exactly these (04's
    # cheaper batch of 8 in minibatches of 4 moved the recipe's KL about half as fast per optimizer update,
    # measured on a first smol seed, so its gain per update cannot be taken from 03's)
    ppo = config_from_profile(profile, adaptive_kl=False)
    kept = folder / "calibration.json"
    key = content_hash(inputs.fingerprint(), ppo.response_len)
    calibration = read_json(kept) if kept.exists() else {}
    if calibration and calibration.get("inputs") != key and not force:  # a new β grid would move every run's folder
        raise ValueError(f"{kept} was measured on other inputs ({calibration.get('inputs')} -> {key}: the SFT adapter, "
                         f"prompts or response lengths changed). Nothing was changed: a new setting is a new study "
                         f"version (Profile.study.version), or --force recalibrates this one.")
    if calibration.get("inputs") != key:
        calibration = {"inputs": key, **calibrate(inputs, sticks_loader(), ppo.response_len)}
        write_json(kept, calibration)
    betas = beta_grid(calibration, profile.study.beta_ratios)
    seeds = tuple(range(profile.study.seeds))  # an integer >= 1: StudySettings checks it where it is set
    sized = folder / "power.json"  # made once: re-publishing 03 later must not move a study's steps
    if profile.study.steps:
        power = {"steps": profile.study.steps, "fixed_by": "Profile.study.steps"}
    elif sized.exists():
        power = read_json(sized)
    else:  # the tuning study's measured spread over seeds where it ran this setting, else notebook 03's run
        root = project_root() or Path.cwd()
        pilot = (pilot_from_tuning(root / "docs" / "tuning" / profile.name, ppo, profile.evaluation.prompts)
                 or pilot_from_tutorial(root / "docs" / "tutorial" / profile.name))
        power = power_steps(profile, pilot, len(seeds), ppo)
        write_json(sized, power)
    steps = power["steps"]
    design = Design(betas, seeds, seeds[: profile.study.side_seeds], replace(ppo, steps=steps),
                    profile.study.eval_every(steps), profile.reward)
    sizing = {"calibration": calibration, "beta_ratios": list(profile.study.beta_ratios),
              "beta_rule": "β = ratio · reward_sd / kl_sft_base_per_response, to 1 significant figure",
              "power": power}
    first = [folder / "runs" / design.run(RECIPE, seed, design.middle).path / "evaluation.csv" for seed in seeds]
    if profile.study.topup_power and all(f.exists() for f in first):
        gains = [e.reward_mean.iloc[-1] - e.reward_mean.iloc[0] for e in (pd.read_csv(f).sort_values("step")
                                                                         for f in first)]
        stage = second_stage(gains, profile.study.target_z, profile.study.topup_power, len(seeds),
                             profile.study.max_seeds)
        design = replace(design, recipe_seeds=tuple(range(len(seeds), stage["seeds"])))
        sizing["second_stage"] = stage
    return design, sizing


def run_study(profile: Profile, folder: str | Path | None = None, out=None, force: bool = False,
              command: str = "make study", execute: bool = True, workers: int | str | None = None) -> Results:
    """Run (or resume) the profile's study into `folder`; write its findings, gains, figures and manifest
    there. `execute=False` runs nothing and reports on the runs that have landed (a study stopped part-way).
    `workers` > 1: that many Ray workers on this machine (or $RAY_ADDRESS's cluster), see helpers.harness.workers."""
    resolve_workers(workers)  # a bad count fails here, before the adapter is copied or anything is measured
    folder = study_dir(profile.name, folder, version=profile.study.version)
    check_same_setting(profile, folder)
    with locked(folder, "the study"):  # notebook 05 with RUN_STUDY = True during `make study` waits for nothing
        return _run_study(profile, folder, out, force, command, execute, workers)


def _run_study(profile, folder, out, force, command, execute, workers) -> Results:
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    inputs = study_inputs(profile, folder, out)
    sticks = lambda: yardsticks(profile, inputs.sources.merged_dir, inputs.sources.quantize)  # noqa: E731
    design, sizing = design_for(profile, inputs, folder, sticks, force)
    for stage in (1, 2):  # the second stage is sized from the first's runs, once they have landed
        runs = design.runs()
        print(f"study on {profile.name}: {len(runs)} runs, β {list(design.betas)}, {len(design.seeds)} seeds "
              f"(+{len(design.recipe_seeds)} of the recipe), {design.ppo.steps} steps, held-out evaluation "
              f"every {design.eval_every}", flush=True)
        results = run_all(runs, inputs, folder, force=force, combined=("metrics", "evaluation", "runs"),
                          run_missing=execute, workers=workers, keep_changed=True)
        if stage == 1:
            planned = design
            design, sizing = design_for(profile, inputs, folder, sticks, force)
            if design == planned:
                break
    if not execute and not len(results.runs):
        print(f"No run of this design has landed in {folder}: nothing written (the report keeps what is there).")
        return results
    write_verdicts(results, design, folder)
    write_manifest(folder, runs, results, {"command": command, "profile": profile.name,
                                           "dtype": compute_dtype_name(profile), "design": _jsonable(design),
                                           "sizing": sizing}, started, clock, execute, REPORT_FILES)
    return results


def write_manifest(folder: Path, runs, results: Results, fields: dict, started: datetime, clock: float,
                   execute: bool, report_files) -> None:
    """A study's manifest.json: `fields` (command, design, sizing...), the runs done and missing, where they ran,
    this session appended to the earlier ones, and the hashes of the report's files."""
    manifest_file = folder / "manifest.json"
    manifest = read_json(manifest_file) if manifest_file.exists() else {"sessions": []}
    ran = results.runs
    manifest.update({
        **fields, "runs": len(runs), "runs_done": int(len(ran)),
        "compute_s": float(ran["total_time_s"].sum()) if len(ran) else 0.0,
        "commits": sorted(set(ran["commit"].astype(str))) if len(ran) else [],
        "machines": sorted(set(ran["cpu"].astype(str))) if len(ran) else [],
        "missing": [r.label for r in runs if not (folder / "runs" / r.path / "fingerprint.json").exists()],
    })
    done_before = manifest["sessions"][-1]["runs_done"] if manifest["sessions"] else 0
    manifest["sessions"].append({"started": started.isoformat(timespec="seconds"), "wall_s": time.perf_counter() - clock,
                                 "executed": execute, "runs_done": int(len(ran)),
                                 "runs_landed": max(0, int(len(ran)) - done_before), **where_it_ran()})
    # the report's files, written above, and the runs they rest on: written last, so a report torn by an
    # interrupted write is found by load_study instead of rendered
    manifest["report"] = {"runs_done": int(len(ran)),
                          "files": {f: content_hash(folder / f) for f in report_files if (folder / f).exists()}}
    write_json(manifest_file, manifest)


def check_same_setting(profile: Profile, folder: Path) -> None:
    """A study folder holds one PPO setting and dtype: a profile whose settings differ from the committed
    manifest's is refused (with what differs), instead of replacing its runs one by one."""
    manifest = folder / "manifest.json"
    if not manifest.exists():
        return
    m = read_json(manifest)
    committed = {k: v for k, v in m["design"]["ppo"].items() if k != "steps"}
    current = {k: v for k, v in _jsonable_ppo(config_from_profile(profile, adaptive_kl=False)).items() if k != "steps"}
    # a manifest from before the dtype was recorded was made in float32
    committed["dtype"], current["dtype"] = m.get("dtype", "float32"), compute_dtype_name(profile)
    changed = {k: (committed.get(k), current.get(k)) for k in set(committed) | set(current)
               if json.dumps(committed.get(k)) != json.dumps(current.get(k))}
    if changed:
        raise ValueError(f"The study in {folder} was made with other PPO settings ("
                         + "; ".join(f"{k}: {a} -> {b}" for k, (a, b) in sorted(changed.items()))
                         + f"). A new setting is a new version: set study_version (Profile.study.version) of {profile.name!r} to a "
                         f"new name (now {profile.study.version!r}); the committed study stays as it is.")


REPORT_FILES = ("findings.csv", "gains.csv", "figures/dose_response.png", "figures/frontier.png")


def write_verdicts(results: Results, design: Design, folder: Path) -> None:
    """findings.csv, gains.csv and the two figures, from the runs that have landed."""
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
    results, manifest = read_committed(folder, "make study", "05", "helpers.harness.study")
    return results, design_from_manifest(manifest), manifest


def read_committed(folder: str | Path, command: str, notebook: str, module: str) -> tuple[Results, dict]:
    """A committed study's tables and manifest, its report checked against the manifest's hashes; the errors
    name `command` (which makes it), the `notebook` that renders it and the `module` that rewrites its report."""
    folder = Path(folder)
    if not (folder / "manifest.json").exists():
        raise FileNotFoundError(f"No study in {folder} (manifest.json missing): run `{command}` first, or set "
                                f"RUN_STUDY = True in notebook {notebook}.")
    manifest = read_json(folder / "manifest.json")
    report = manifest.get("report", {})  # a study reported before the report was recorded has none
    torn = [f for f, digest in report.get("files", {}).items()
            if not (folder / f).exists() or content_hash(folder / f) != digest]
    if torn:
        raise StaleArtifactError(f"{folder}: {', '.join(torn)} differ from the report its manifest.json records "
                                 f"(an interrupted write?). Nothing was read: rewrite the report from the runs with "
                                 f"`python -m {module} --profile {manifest['profile']} --study-dir {folder} "
                                 f"--report-only`.")
    return load_results(folder), manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=None, help="a profile name (default: $TUTORIAL_PROFILE or smol)")
    parser.add_argument("--study-dir", default=None, help="default: docs/study/<profile>/")
    parser.add_argument("--out", default=None, help="the output folder with 01's adapter (default: outputs/)")
    parser.add_argument("--force", action="store_true", help="re-run finished runs")
    parser.add_argument("--workers", default=None, type=lambda v: v if v == "auto" else int(v),
                        help='runs in parallel on Ray: this many local workers, each on its share of the cores; '
                             'default: $TUTORIAL_WORKERS, else "auto" (2 on a CPU machine with Ray installed, else 1)')
    parser.add_argument("--report-only", action="store_true",
                        help="run nothing: rewrite findings, figures and manifest from the runs that landed")
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 | auto (default: $TUTORIAL_DTYPE, else the "
                        "profile's); a dtype other than the committed study's is a new version (Profile.study.version)")
    args = parser.parse_args(argv)
    profile = configure(args.profile, dtype=args.dtype)
    study = partial(run_study, profile, args.study_dir, args.out, force=args.force, execute=not args.report_only,
                    command="make study" + (f" PROFILE={profile.name}" if args.profile else ""), workers=args.workers)
    try:
        study()
    except MissingArtifactError as missing:  # no SFT adapter yet, committed or in outputs/: notebook 01 makes it
        if missing.notebook != "01_sft_lora" or args.report_only:
            raise
        print(f"{missing}\nRunning notebook 01 first.", flush=True)
        run_notebooks([missing.notebook], profile.name, args.out)
        study()
    return 0


if __name__ == "__main__":
    sys.exit(main())
