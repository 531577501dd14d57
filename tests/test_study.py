"""The full study (helpers.harness.study, `make study`, notebook 05): its sizing, its design, a whole run on `tiny`
(resume, verdicts, the stacked equality), the β = 0 null control, and the committed smol study."""

import math
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from helpers import get_profile
from helpers.artifacts import read_json, stage_dir
from helpers.harness.design import AT_MIDDLE, EVERY_BETA, STUDY, study_claims
from helpers.harness.results import Results
from helpers.harness.run import Run, inputs_from_outputs
from helpers.harness.schedule import run_all
from helpers.harness.sizing import beta_grid, pilot_from_tutorial, power_steps
from helpers.harness.study import load_study, run_study, study_dir
from helpers.harness.verdicts import Claim, findings
from helpers.ppo import TIMING_COLUMNS, config_from_profile

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]

# --- sizing (fast) -----------------------------------------------------------------------------------------


def test_the_beta_grid_puts_the_penalty_at_the_given_multiples_of_the_reward_spread():
    calibration = {"reward_sd": 1.5, "kl_sft_base_per_response": 5.0}
    assert beta_grid(calibration, (0.1, 1.0, 10.0)) == (0.03, 0.3, 3.0)
    assert beta_grid({**calibration, "reward_sd": 3.0}, (0.1, 1.0, 10.0)) == (0.06, 0.6, 6.0)


def test_power_needs_more_steps_for_more_confidence_or_fewer_seeds():
    smol = get_profile("smol")
    pilot = {"gain": 0.28, "se": 0.084, "prompts": 64, "steps": 20, "batch_size": 16, "mini_batch_size": 8,
             "ppo_epochs": 2}
    ppo = replace(__import__("helpers.ppo", fromlist=["x"]).config_from_profile(smol), batch_size=8, mini_batch_size=4)
    base = power_steps(smol, pilot, 6, ppo)
    assert base["steps"] % (smol.study.eval_points - 1) == 0 and base["expected_z"] >= smol.study.target_z
    assert power_steps(smol, pilot, 3, ppo)["steps"] > base["steps"]
    assert power_steps(smol.with_overrides(study_target_z=6.0), pilot, 6, ppo)["steps"] > base["steps"]
    assert power_steps(smol, {**pilot, "gain": 0.56}, 6, ppo)["steps"] < base["steps"]


def test_the_pilot_is_read_from_the_json_notebook_03_writes_not_from_its_printed_output(tmp_path):
    """03's evaluation.json (published as 03_ppo_evaluation.json) carries the gain and the PPO settings it ran
    with; a file without the settings (written before 03 recorded them) is refused, naming what to run."""
    run = {"prompts": 64, "steps": 20, "batch_size": 16, "mini_batch_size": 8, "ppo_epochs": 2, "gain": 0.3,
           "se": 0.11, "z": 2.7}
    (tmp_path / "03_ppo_evaluation.json").write_text(__import__("json").dumps(run))
    pilot = pilot_from_tutorial(tmp_path)
    assert {k: pilot[k] for k in run if k != "z"} == {k: v for k, v in run.items() if k != "z"}
    (tmp_path / "03_ppo_evaluation.json").write_text(__import__("json").dumps({k: run[k] for k in ("gain", "se", "prompts", "steps")}))
    with pytest.raises(ValueError, match="batch_size.*make publish"):
        pilot_from_tutorial(tmp_path)


def test_a_dose_response_is_the_per_seed_slope_against_log_beta():
    """Per seed, effect = seed-specific intercept + 0.5 * log10(β): every slope is 0.5, the interval a point."""
    rows, runs = [], []
    for beta in (0.03, 0.3, 3.0):
        for seed in range(3):
            for arm, effect in [("adapter+disabled", seed + 0.5 * math.log10(beta)), ("adapter+ref-adapter", 0.0)]:
                for step in (0, 6):
                    rows.append({"study": STUDY, "arm": arm, "beta": beta, "seed": seed, "step": step,
                                 "kl_sft_exact": effect if step else 0.0})
                runs.append({"study": STUDY, "arm": arm, "beta": beta, "seed": seed})
    e = pd.DataFrame(rows)
    results = Results(e.iloc[:0], e, e.iloc[:0], pd.DataFrame(runs))
    claim = Claim("drift grows", "adapter+disabled", "adapter+ref-adapter", "kl_sft_end", ">0", study=STUDY,
                  over_beta=True)
    row = findings(results, [claim]).iloc[0]
    assert row.beta == "slope" and row.effect == pytest.approx(0.5) and row.n_seeds == 3
    assert row.ci_low == pytest.approx(0.5) and row.verdict == "as expected"


def test_the_second_stage_asks_for_the_seeds_its_measured_spread_needs():
    from helpers.harness.sizing import second_stage

    gains = [0.1, 0.3, 0.0, 0.2, 0.25, 0.05]  # mean 0.15, sd 0.11
    stage = second_stage(gains, target_z=3.0, power=0.8, first_seeds=6, max_seeds=100)
    g, s = np.mean(gains), np.std(gains, ddof=1)
    assert stage["seeds"] == math.ceil(((3.0 + 0.8416212335729143) * s / g) ** 2)  # z_0.8 of the normal
    assert stage["seeds"] * g**2 / s**2 >= (3.0 + 0.84) ** 2  # expected z reaches target + z_power
    assert second_stage(gains, 3.0, 0.5, 6, 100)["seeds"] < stage["seeds"]  # less power, fewer seeds
    assert second_stage(gains, 3.0, 0.8, 6, 10)["seeds"] == 10  # capped
    assert second_stage([x + 1 for x in gains], 3.0, 0.8, 6, 100)["seeds"] == 6  # already enough: no extra
    assert second_stage([-x for x in gains], 3.0, 0.8, 6, 100)["seeds"] == 6  # RL did not move: none


def test_recipe_seeds_run_the_recipe_alone_after_the_paired_seeds():
    from helpers.harness.design import RECIPE, Design

    design = Design((0.03, 0.3, 3.0), (0, 1), (0,), config_from_profile(get_profile("tiny"), steps=2), 1,
                    "imdb-tfidf", recipe_seeds=(2, 3))
    runs = design.runs()
    extra = [r for r in runs if r.seed >= 2]
    assert runs[-2:] == extra and {(r.arm, r.beta, r.seed) for r in extra} == {(RECIPE, 0.3, 2), (RECIPE, 0.3, 3)}


def _twins(flip_at: int | None = None, step0_perplexity: float = 60.0, rounding: float = 1e-6) -> Results:
    """stacked and merged+disabled on one seed, 6 steps: the same tokens, so a bit-equal reward, and every
    other curve equal up to `rounding`; from `flip_at` the sampler drew another token (reward +0.1)."""
    def tables(arm, twin):
        r = np.linspace(0.1, 0.6, 6)
        if twin and flip_at is not None:
            r[flip_at:] += 0.1
        off = rounding if twin else 0.0
        key = {"study": STUDY, "arm": arm, "beta": 0.03, "seed": 0}
        metrics = pd.DataFrame({**key, "step": range(6), "reward_mean": r, "kl_ref": np.linspace(0, 0.1, 6) + off})
        evaluation = pd.DataFrame({**key, "step": [0, 2, 6], "reward_mean": [r[0], r[2], r[-1]],
                                   "perplexity": [step0_perplexity if twin else 60.0, 61.0 + off, 62.0 + off]})
        return metrics, evaluation
    (m1, e1), (m2, e2) = tables("stacked", True), tables("merged+disabled", False)
    return Results(pd.concat([m1, m2]), pd.concat([e1, e2]), pd.DataFrame(), pd.DataFrame({"study": [STUDY] * 2,
                   "arm": ["stacked", "merged+disabled"], "beta": [0.03] * 2, "seed": [0, 0]}))


def test_stacked_is_compared_while_both_runs_sample_the_same_tokens():
    claim = Claim("stacking equals merging", "stacked", "merged+disabled", "curves_same_tokens", "=",
                  study=STUDY, beta=0.03, tolerance=1e-2)
    verdict_of = lambda results: findings(results, [claim]).iloc[0]  # noqa: E731
    assert verdict_of(_twins()).verdict == "as expected"
    # a near-tie flips a token at step 3: two random paths from then on, not a stacking error
    flipped = verdict_of(_twins(flip_at=3))
    assert flipped.verdict == "as expected" and flipped.effect < 1e-5
    # the same flip read over every step is 0.1 apart (the old measure)
    assert findings(_twins(flip_at=3), [replace(claim, measure="curves_relative")]).iloc[0].verdict == "differs"
    # a stacking error (the SFT adapter not applied) shows in step 0's perplexity, which involves no sampling
    assert verdict_of(_twins(flip_at=2, step0_perplexity=94.0)).verdict == "differs"
    assert verdict_of(_twins(flip_at=2, rounding=0.05)).verdict == "differs"  # beyond float rounding, same tokens
    # runs that part before the first trained evaluation are no evidence either way: never "as expected"
    assert verdict_of(_twins(flip_at=1)).verdict == "inconclusive"
    assert verdict_of(_twins(flip_at=0, step0_perplexity=94.0)).verdict == "inconclusive"


# --- a whole study on tiny ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_study(tiny_outputs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("study")
    return folder, run_study(get_profile("tiny"), folder, out=tiny_outputs)


@pytest.mark.slow
def test_the_design_runs_every_claim_arm_seed_by_seed(tiny_study):
    folder, results = tiny_study
    _, design, manifest = load_study(folder)
    tiny = get_profile("tiny")
    assert len(design.betas) == 3 and list(design.betas) == sorted(design.betas) and design.middle == design.betas[1]
    runs = design.runs()
    assert [r.seed for r in runs] == sorted(r.seed for r in runs)  # a study stopped part-way has whole seeds
    cells = {(r.arm, r.beta) for r in runs}
    assert cells >= {(a, b) for a in EVERY_BETA for b in design.betas}
    assert {a for a, b in cells if b != design.middle} == set(EVERY_BETA)  # recipe arms: middle β only
    assert {r.seed for r in runs if r.arm == "stacked"} == set(range(tiny.study.side_seeds))
    assert all(r.config.adaptive_kl is False and r.config.init_kl_coef == r.beta for r in runs)
    assert len(results.runs) == len(runs) == manifest["runs_done"] == manifest["runs"]
    e = results.evaluation  # at least study_eval_points evaluations per run, the same prompts in every run
    assert (e.groupby(["arm", "beta", "seed"]).step.nunique() >= tiny.study.eval_points).all()
    assert manifest["sizing"]["power"]["fixed_by"] == "Profile.study.steps"
    assert {"kl_sft_base_per_response", "reward_sd"} <= set(manifest["sizing"]["calibration"])


@pytest.mark.slow
def test_the_committed_verdicts_are_the_tables_recomputed(tiny_study):
    folder, _ = tiny_study
    results, design, _ = load_study(folder)
    committed = pd.read_csv(folder / "findings.csv", keep_default_na=False)
    again = findings(results, study_claims(design))
    assert list(committed.claim) == list(again.claim) and len(again) >= 10
    np.testing.assert_allclose(committed.effect.astype(float), again.effect.astype(float), rtol=1e-9)
    assert list(committed.verdict) == list(again.verdict)
    assert set(again[again.kind == "sanity"].claim) == {"the pitfall: KL to the reference starts at KL(SFT‖base) > 0"}
    assert (again[again.beta == "slope"].measure.str.contains("per ×10 of β")).all()


@pytest.mark.slow
def test_stacked_equals_merged_disabled_within_float_tolerance(tiny_study):
    """Frozen SFT adapter + new LoRA computes (W + BA)x + new(x) as W x + BA x + new(x): the same run."""
    folder, results = tiny_study
    table = pd.read_csv(folder / "findings.csv", keep_default_na=False).set_index("claim")
    row = table.loc["stacking the SFT adapter under a new LoRA equals merging it"]
    assert row.verdict == "as expected" and float(row.effect) < 1e-2  # the claim's tolerance (helpers.harness.design)
    e = results.evaluation.set_index(["arm", "seed", "step"]).sort_index()
    np.testing.assert_allclose(e.loc["stacked"].reward_mean, e.loc["merged+disabled"].loc[e.loc["stacked"].index]
                               .reward_mean, atol=1e-4)


@pytest.mark.slow
def test_a_torn_report_is_refused_and_a_report_only_run_rewrites_it(tiny_study, tiny_outputs, tmp_path):
    """The manifest records the report's files (findings, gains, figures) and the runs they rest on, written
    last: a findings.csv cut short by an interrupted write is refused by load_study, naming the fix."""
    from helpers.artifacts import StaleArtifactError

    folder = tmp_path / "study"
    shutil.copytree(tiny_study[0], folder)
    manifest = read_json(folder / "manifest.json")
    assert manifest["report"]["runs_done"] == manifest["runs_done"] and "findings.csv" in manifest["report"]["files"]
    text = (folder / "findings.csv").read_text()
    (folder / "findings.csv").write_text(text[: len(text) // 2])
    with pytest.raises(StaleArtifactError, match="findings.csv differ from the report.*--report-only"):
        load_study(folder)
    run_study(get_profile("tiny"), folder, out=tiny_outputs, execute=False)
    assert (folder / "findings.csv").read_text() == text and load_study(folder)[2]["report"] == manifest["report"]


@pytest.mark.slow
def test_a_rerun_resumes_and_skips_every_landed_run(tiny_study, tiny_outputs, capsys):
    folder, results = tiny_study
    again = run_study(get_profile("tiny"), folder, out=tiny_outputs)
    said = capsys.readouterr().out
    assert said.count("results exist with the same settings, skipped") == len(results.runs) and " ran (" not in said
    pd.testing.assert_frame_equal(again.evaluation, results.evaluation)
    assert len(read_json(folder / "manifest.json")["sessions"]) == 2
    # a study stopped part-way: the report covers what landed, and the next run executes only the missing run
    gone = folder / "runs" / "fixed-beta" / "stacked"
    label = "/".join(next(gone.rglob("fingerprint.json")).parent.relative_to(folder / "runs").parts)
    shutil.rmtree(gone)
    partial = run_study(get_profile("tiny"), folder, out=tiny_outputs, execute=False)
    said = capsys.readouterr().out
    assert f"{label}: not run yet; left for a later run" in said and " ran (" not in said
    assert len(partial.runs) == len(results.runs) - 1 and read_json(folder / "manifest.json")["missing"] == [label]
    run_study(get_profile("tiny"), folder, out=tiny_outputs)
    said = capsys.readouterr().out
    assert said.count(" ran (not run yet)") == 1 and f"{label}: ran" in said
    assert read_json(folder / "manifest.json")["missing"] == []


@pytest.mark.slow
def test_a_committed_study_survives_dotfiles_reports_and_changed_settings(tiny_study, tiny_outputs, tmp_path, capsys):
    """Fault injection on a copy of a finished study: a .DS_Store beside the committed SFT adapter, a report,
    a run folder's settings changed, a report with nothing landed. Every combined table stays byte-identical;
    each refusal says what to do."""
    folder = tmp_path / "study"
    shutil.copytree(tiny_study[0], folder)
    tables = lambda: {f.name: f.read_bytes() for f in sorted(folder.glob("*.csv"))}  # noqa: E731
    before = tables()
    tiny = get_profile("tiny")
    (folder / "inputs" / "sft_adapter" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    report = run_study(tiny, folder, out=tiny_outputs, execute=False)
    assert len(report.runs) == len(tiny_study[1].runs) and tables() == before
    with pytest.raises(ValueError, match=r"other PPO settings \(learning_rate.*study_version"):
        run_study(tiny.with_overrides(ppo_learning_rate=tiny.ppo.learning_rate / 2), folder, out=tiny_outputs)
    other = tiny.with_overrides(study_eval_points=3)  # every run's evaluation spacing changes: its fingerprint too
    with pytest.raises(ValueError, match=r"\d+ of \d+ runs in .* were made with other settings.*--force replaces"):
        run_study(other, folder, out=tiny_outputs)
    assert tables() == before
    capsys.readouterr()
    run_study(other, folder, out=tiny_outputs, execute=False)  # nothing of this design has landed
    assert "nothing written" in capsys.readouterr().out and tables() == before
    victim = sorted((folder / "runs").rglob("evaluation.csv"))[0]  # a truncated CSV: resumed by re-running it
    victim.write_text(victim.read_text().splitlines()[0] + "\n")
    run_study(tiny, folder, out=tiny_outputs)
    said = capsys.readouterr().out
    assert said.count(" ran (") == 1 and "ran (damaged (evaluation.csv changed since the run landed))" in said


# --- the β = 0 null control -------------------------------------------------------------------------------


@pytest.mark.slow
def test_at_beta_zero_the_pitfall_and_its_control_are_the_same_run(tiny, tiny_outputs, tmp_path):
    """At β = 0 the reference has no weight: the pitfall (reference = base) and its control (reference = the
    SFT adapter) must give the same rollouts, losses, trained weights and held-out numbers; only the logged KL
    to each arm's own reference differs."""
    from helpers.data import load_imdb, ppo_queries
    from helpers.models import load_tokenizer
    from helpers.ppo import config_from_profile
    from helpers.rewards import load_reward

    tokenizer = load_tokenizer(stage_dir(tiny_outputs, "tiny", "02_merge") / "model")
    data = load_imdb(tiny)
    queries = ppo_queries(data["train"]["text"], tokenizer, n=3 * tiny.ppo.batch_size, seed=0)
    eval_queries = ppo_queries(data["heldout"]["text"], tokenizer, n=4, seed=1)
    inputs = inputs_from_outputs(tiny, tiny_outputs, tokenizer, queries, eval_queries, load_reward(tiny),
                                 list(data["heldout"]["text"][:4]))
    ppo = config_from_profile(tiny, steps=3, adaptive_kl=False, init_kl_coef=0.0)
    runs = [Run("null", arm, 0, ppo, tiny.reward, 3) for arm in EVERY_BETA]
    r = run_all(runs, inputs, tmp_path)
    own = {"kl_ref", "kl_ref_exact"}
    timing = set(TIMING_COLUMNS)
    for table in (r.metrics, r.evaluation, r.samples):
        pit, ctl = (table[table.arm == a].drop(columns=["arm"]).reset_index(drop=True) for a in EVERY_BETA)
        same = [c for c in pit.columns if c not in own | timing]
        pd.testing.assert_frame_equal(pit[same], ctl[same], check_exact=True)
    assert r.runs.set_index("arm").trained_weights.nunique() == 1  # bit-identical LoRA and value-head weights
    pit, ctl = (r.metrics[r.metrics.arm == a] for a in EVERY_BETA)
    assert (pit.kl_ref_exact.to_numpy() > ctl.kl_ref_exact.to_numpy() + 1e-3).all()  # the references did differ


# --- the committed smol study ------------------------------------------------------------------------------


def test_the_committed_smol_study_recomputes_to_its_committed_verdicts():
    folder = study_dir("smol")
    results, design, manifest = load_study(folder)
    committed = pd.read_csv(folder / "findings.csv", keep_default_na=False, dtype={"beta": str})
    # every claim the study was committed with, recomputed by today's code (a claim added since is new)
    again = findings(results, study_claims(design)).set_index(["claim", "beta"]).loc[
        list(zip(committed.claim, committed.beta))]
    np.testing.assert_allclose(committed.effect.astype(float), again.effect.astype(float), rtol=1e-9)
    assert list(committed.verdict) == list(again.verdict)
    assert manifest["runs_done"] == len(results.runs) and set(results.runs.arm) <= set(EVERY_BETA + AT_MIDDLE) | {"stacked"}
    assert set(results.runs.commit) and set(results.runs.cpu)  # each run says where it came from


def test_the_readme_results_are_generated_from_the_committed_runs():
    """`make publish` regenerates the README's two blocks (the study's answers, the tutorial run's results);
    on the committed study and tutorial run it changes nothing."""
    from helpers.harness.readme import TUTORIAL_BEGIN, readme_with_results, tutorial_dir

    text = (ROOT / "README.md").read_text()
    assert readme_with_results(text, study_dir("smol"), tutorial_dir("smol")) == text
    from helpers.harness.readme import GRPO_BEGIN, PERFORMANCE_PAGE, page_with_results

    page = (ROOT / PERFORMANCE_PAGE).read_text()  # the site's Performance page: its benchmark figures
    assert page_with_results(page) == page and "| phase | time (s) |" in page
    assert "| the pitfall pulls the policy towards the base | 2 |" in text.split(GRPO_BEGIN, 1)[1]
    generated = text.split(TUTORIAL_BEGIN, 1)[1]
    assert any(line.startswith("| 01 | 02 | 03 | 04 |") for line in generated.splitlines()) and "the pitfall pulls the policy towards the base" in generated


def test_the_readme_opens_with_answers_whose_words_follow_their_verdicts(monkeypatch):
    """The answers-first table: each question's words are the ones its claim's verdict picks, next to that
    verdict; with the verdict changed, the words change with it."""
    from helpers.harness import answers
    from helpers.harness.readme import tutorial_dir

    def rows(text):
        return [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]

    got = rows(answers.answers_first(study_dir("smol"), tutorial_dir("smol")))
    assert len(got) == len(answers.ANSWERS) == 4
    for (key, (question, says)), cells in zip(answers.ANSWERS.items(), got):
        assert cells[0] == f"| {question}" and set(says) == {"as expected", "differs", "inconclusive"}
        verdict = next(v for v in says if f"({v}," in cells[2])
        assert cells[1] == f"{says[verdict]}."
    flipped = {"as expected": "differs", "differs": "as expected", "inconclusive": "inconclusive"}
    real = answers.findings
    monkeypatch.setattr(answers, "findings", lambda *a, **k: real(*a, **k).assign(
        verdict=lambda t: t.verdict.map(flipped)))
    changed = rows(answers.answers_first(study_dir("smol"), tutorial_dir("smol")))
    assert [c[1] for c in changed] != [c[1] for c in got]


def test_the_power_check_compares_the_recipe_with_the_planned_gain_and_z():
    """The study says how much of the planned gain the recipe reached and whether its z passed the target: two
    checks, both from the recipe's measured gain (v1 passed z 3 with 41% of the planned gain, at 20 seeds)."""
    from helpers.harness.design import power_check, reward_gains

    results, design, manifest = load_study(study_dir("smol"))
    gains = reward_gains(results)
    got = gains[(gains.arm == "merged+disabled") & (gains.beta == design.middle)].iloc[0]
    power = manifest["sizing"]["power"]
    planned = lambda **p: {**manifest, "sizing": {"power": {**power, **p}}}  # noqa: E731
    assert "z above its target" in power_check(results, design, planned(target_z=got.z - 0.01))
    assert "z below its target" in power_check(results, design, planned(target_z=got.z + 0.01))
    assert "100% of the planned gain" in power_check(results, design, planned(expected_gain=got.gain))
    assert "50% of the planned gain" in power_check(results, design, planned(expected_gain=2 * got.gain))
    assert f"z {got.z:.2f}" in power_check(results, design, manifest)


def test_a_new_setting_is_a_new_study_version_and_the_committed_one_is_kept(tmp_path, monkeypatch):
    """`study_dir` with no version renders the newest *complete* version; a study folder refuses a profile
    whose PPO settings differ from its manifest's, naming the setting to change."""
    import helpers.harness.study as study

    monkeypatch.setattr(study, "project_root", lambda: tmp_path)
    root = tmp_path / "docs" / "study" / "smol"
    smol = get_profile("smol")
    manifest = {"runs": 2, "runs_done": 2, "missing": [], "design": {"ppo": study._jsonable_ppo(
        config_from_profile(smol, adaptive_kl=False))}}
    for folder in (root, root / "v2"):
        folder.mkdir(parents=True)
    study.write_json(root / "manifest.json", manifest)
    study.write_json(root / "v2" / "manifest.json", {**manifest, "runs_done": 1, "missing": ["x"]})
    assert study_dir("smol") == root  # v2 still running: v1 is what 05 renders
    assert study_dir("smol", version="v2") == root / "v2" and study_dir("smol", version="v1") == root
    study.write_json(root / "v2" / "manifest.json", manifest)
    assert study_dir("smol") == root / "v2"
    study.check_same_setting(smol, root)  # the same settings: resumes
    with pytest.raises(ValueError, match=r"learning_rate: .* -> .*study_version"):
        study.check_same_setting(smol.with_overrides(ppo_learning_rate=smol.ppo.learning_rate * 2), root)
    with pytest.raises(ValueError, match=r"dtype: float32 -> bfloat16.*study_version"):  # `make study DTYPE=...`
        study.check_same_setting(replace(smol, dtype="bfloat16"), root)


def test_the_power_calculation_takes_the_tunings_spread_over_seeds(tmp_path):
    """The pilot comes from the tuning's confirmation trials of exactly the study's setting, with the
    spread over seeds measured; a setting the tuning did not confirm has no pilot there."""
    from helpers.harness.sizing import pilot_from_tuning

    smol = get_profile("smol")
    ppo = config_from_profile(smol, adaptive_kl=False)
    cols = dict(prompts="confirm", lr=ppo.learning_rate, lora_b_lr_ratio=ppo.lora_b_lr_ratio,
                value_lr_ratio=ppo.value_lr_ratio, beta0=ppo.init_kl_coef, batch=ppo.batch_size,
                minibatch=ppo.mini_batch_size, epochs=ppo.ppo_epochs, setting="x",
                response_len=f"{ppo.response_len[0]}-{ppo.response_len[1]}")
    rows = [{**cols, "seed": s, "step": k, "gain": g * k / 20, "gain_se": 0.05}
            for s, g in enumerate((0.4, 0.6, 0.8)) for k in (10, 20)]
    # the setting before it, at the same learning rate and batch: another setting, not this one's pilot
    rows += [{**cols, "setting": "before", "value_lr_ratio": 1.0, "beta0": 0.2, "seed": s, "step": 20, "gain": -1.0,
              "gain_se": 0.05} for s in range(3)]
    pd.DataFrame(rows).to_csv(tmp_path / "trials.csv", index=False)
    pilot = pilot_from_tuning(tmp_path, ppo, prompts=64)
    assert pilot["steps"] == 20 and pilot["gain"] == pytest.approx(0.6) and pilot["seed_sd"] == pytest.approx(0.2)
    assert pilot_from_tuning(tmp_path, replace(ppo, learning_rate=1e-5), prompts=64) is None
    noisy = power_steps(smol, pilot, 6, ppo)
    quiet = power_steps(smol, {**pilot, "seed_sd": 0.05}, 6, ppo)
    assert noisy["seed_sd"] > quiet["seed_sd"] and noisy["steps"] > quiet["steps"]


def test_a_bad_worker_count_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match='workers must be an integer >= 1 or "auto", not 0'):
        run_study(get_profile("tiny"), tmp_path / "study", out=tmp_path, workers=0)
    assert not (tmp_path / "study").exists() and not list(tmp_path.iterdir())


def test_a_new_version_says_what_changed_from_the_one_before():
    """05 and the README show, for a later study version, the settings that differ and the findings side by side,
    read from the two committed manifests (the smol study's v1 and v2)."""
    from helpers.harness.answers import changes_line, previous_version, what_changed

    v1, v2 = study_dir("smol", version="v1"), study_dir("smol", version="v2")
    assert previous_version(v1) is None and previous_version(v2) == v1
    changed, answers = what_changed(v1, v2)
    m1, m2 = read_json(v1 / "manifest.json"), read_json(v2 / "manifest.json")
    assert changed.loc["steps"].tolist() == [str(m1["design"]["ppo"]["steps"]), str(m2["design"]["ppo"]["steps"])]
    assert changed.loc["β"].tolist() == [", ".join(f"{b:g}" for b in m["design"]["betas"]) for m in (m1, m2)]
    assert "paired seeds" not in changed.index  # the same in both: not a change
    assert ("the pitfall pulls the policy towards the base", "middle β") in answers.index and answers.shape[1] == 2
    assert changes_line(v1, v2).startswith("Changed from v1: β ")


def test_make_study_runs_notebook_01_first_where_no_sft_adapter_exists(monkeypatch):
    """`make study` on a fresh clone without the study's committed adapter or 01's output: the CLI runs notebook 01
    (what the Makefile used to do with its own test -d), then the study; --report-only never runs anything."""
    from helpers.artifacts import MissingArtifactError
    from helpers.harness import study

    calls = []

    def fake_study(profile, *args, **kwargs):
        calls.append("study")
        if calls.count("study") == 1:
            raise MissingArtifactError("no adapter", "01_sft_lora")

    monkeypatch.setattr(study, "run_study", fake_study)
    monkeypatch.setattr(study, "run_notebooks", lambda names, profile, out: calls.append(f"{names[0]} on {profile}"))
    assert study.main(["--profile", "tiny"]) == 0 and calls == ["study", "01_sft_lora on tiny", "study"]
    calls.clear()
    with pytest.raises(MissingArtifactError):
        study.main(["--profile", "tiny", "--report-only"])
    assert calls == ["study"]
