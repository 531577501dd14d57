"""The thread's four questions, each answered in one line from the study's verdicts, and the README's block."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..artifacts import project_root
from ..checkpoints import GGUF_NAME
from ..profiles import configure
from ..ppo import LR_RATIOS
from .design import Design, power_check, study_claims
from .results import load_results
from .study import load_study, study_complete
from .verdicts import CLAIMS, findings


def _summary(row) -> str:
    """effect [95% interval] (verdict, n seeds); an equality claim's effect is its worst seed, no interval."""
    no_interval = row["expected"] == "=" or row["ci_low"] in ("", None) or pd.isna(row["ci_low"])
    ci = "" if no_interval else f" [{float(row['ci_low']):+#.3g}, {float(row['ci_high']):+#.3g}]"  # #: +0.500, not +0.5
    n = int(row["n_seeds"])
    effect = f"{float(row['effect']):#.3g}" if row["expected"] == "=" else f"{float(row['effect']):+#.3g}"  # a value
    return f"{effect}{ci} ({row['verdict']}, {n} seed{'' if n == 1 else 's'})"


# what a verdict means for a claim that says "slower": "differs" is the other side of zero, i.e. faster
SLOWER_SAYS = {"as expected": "slower", "differs": "faster, not slower", "inconclusive": "not shown slower"}


def thread_answers(table: pd.DataFrame, design: Design) -> pd.DataFrame:
    """The thread's four questions, each with a one-line answer composed from the findings table (`findings` of
    `study_claims`, claims looked up by key): the effect, its 95% interval, the verdict and the paired seeds."""
    t = table.set_index(["key", "beta"])
    mid = f"{design.middle:g}"

    def say(key, beta=mid, what=""):
        return f"{what}{_summary(t.loc[(key, beta)])}" if (key, beta) in t.index else f"{what}not run yet"

    def pace(key):  # a "slower" claim, in words computed from its verdict
        return SLOWER_SAYS[t.loc[(key, mid), "verdict"]] + ": " if (key, mid) in t.index else ""

    answers = [
        ("Why merge? (keep the SFT adapter, reference = adapters disabled = the base)",
         say("pull", what=f"at β = {mid}, Δ KL to the base (nats/token), pitfall − control: ") + "; " +
         say("perplexity", what="Δ perplexity: ") + "; " +
         say("pull", "slope", "slope of the pull per ×10 of β: ")),
        ("Why not keep training the SFT adapter, with the SFT adapter as the reference?",
         say("kept_at_kl", what="held-out reward at matched KL to SFT, kept − merged: ") + "; " +
         say("kept_kl_per_step", what=f"KL to SFT per step, kept − merged: {pace('kept_kl_per_step')}") + "; " +
         say("kept_gain_per_step", what=f"reward gain per step: {pace('kept_gain_per_step')}")),
        ("Does SFT first make RL converge faster than RL from the base?",
         say("sft_first_gain", what="reward gain, SFT first − base: ") + "; " +
         say("sft_first_at_kl", what="at matched KL to each one's reference: ")),
        ("Can I stack a new LoRA on the frozen SFT adapter instead of merging?",
         say("stacked", what="largest relative difference from merged+disabled in any curve while both sample "
                             "the same tokens, worst seed: ")),
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
             f"{len(results.runs)} of {len(design.runs())} runs done, last session {when}, machines: "
             f"{', '.join(manifest['machines'])}); rendered by "
             f"[notebook 05](docs/notebooks/05_study.ipynb). Effects are 95% intervals over paired seeds.", "",
             "| question | answer from the study |", "| --- | --- |"]
    lines += [f"| {q} | {a} |" for q, a in answers.itertuples(index=False)]
    lines += ["", power_check(results, design, manifest)]
    before = previous_version(folder)
    if before is not None:
        lines += ["", changes_line(before, folder)]
    lines += ["", f"![dose-response: the pitfall's effects against β]({where.as_posix()}/figures/dose_response.png)"]
    return "\n".join(lines)


def previous_version(folder: str | Path) -> Path | None:
    """The complete study version before `folder` in its profile's docs/study/<profile>/ (v1 is the folder
    itself, v2 its v2/ ...), or None."""
    folder = Path(folder)
    number = int(folder.name[1:]) if folder.name[:1] == "v" and folder.name[1:].isdigit() else 1
    if number <= 1:
        return None
    root = folder.parent
    for older in range(number - 1, 0, -1):
        candidate = root if older == 1 else root / f"v{older}"
        if study_complete(candidate):
            return candidate
    return None


def what_changed(old: str | Path, new: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two versions of a study side by side: the settings that differ (from their manifests) and each thread
    answer's finding that both carry (by claim key, at each one's middle β and on its slopes)."""
    (r_old, d_old, m_old), (r_new, d_new, m_new) = load_study(old), load_study(new)
    def settings(d, m):
        ppo = m["design"]["ppo"]
        return {"β": ", ".join(f"{b:g}" for b in d.betas), "β ratios (× reward spread)": m["sizing"].get("beta_ratios"),
                "paired seeds": len(d.seeds), "recipe-only seeds": len(d.recipe_seeds), "steps": d.ppo.steps,
                "evaluation every": d.eval_every,
                **{f"ppo {k}": v for k, v in {**dict.fromkeys(LR_RATIOS, 1.0), **ppo}.items() if k != "steps"},
                "runs": m["runs_done"], "compute (h)": round(m["compute_s"] / 3600, 1)}
    a, b = settings(d_old, m_old), settings(d_new, m_new)
    keys = [k for k in {**a, **b} if str(a.get(k)) != str(b.get(k))]
    names = [version_name(old), version_name(new)]
    table = pd.DataFrame({names[0]: [a.get(k, "–") for k in keys], names[1]: [b.get(k, "–") for k in keys]},
                         index=keys).astype(str)

    def rows(r, d):  # (claim key, where read) -> (its wording, effect [interval] (verdict, seeds))
        t = findings(r, study_claims(d))
        t = t[(t.beta == f"{d.middle:g}") | (t.beta == "slope")]
        return {(row.key, "slope per ×10 β" if row.beta == "slope" else "middle β"): (row.claim, _summary(row))
                for _, row in t.iterrows()}
    x, y = rows(r_old, d_old), rows(r_new, d_new)
    both = [k for k in y if k in x]
    answers = pd.DataFrame({f"{names[0]} (middle β {d_old.middle:g})": [x[k][1] for k in both],
                            f"{names[1]} (middle β {d_new.middle:g})": [y[k][1] for k in both]},
                           index=pd.MultiIndex.from_tuples([(y[k][0], k[1]) for k in both], names=["claim", "at"]))
    return table, answers


def version_name(folder: str | Path) -> str:
    name = Path(folder).name
    return name if name[:1] == "v" and name[1:].isdigit() else "v1"


def changes_line(old: str | Path, new: str | Path) -> str:
    """One sentence: what `new` changed from `old`, from the two manifests."""
    table, _ = what_changed(old, new)
    a, b = table.columns
    return f"Changed from {a}: " + "; ".join(f"{k} {row[a]} → {row[b]}" for k, row in table.iterrows()) + "."


THREAD = "https://github.com/huggingface/trl/issues/250"

# each question's one-line answer, by its claim's verdict: the words are chosen by the verdict, never typed per run
ANSWERS = {
    "kl_ref_start": ("Without merging, is the reference (\"adapters disabled\") the raw base?",
                     {"as expected": "Yes: the kept adapter starts at KL(SFT‖base) from its reference, its control "
                                     "(a frozen copy of the SFT adapter) at 0",
                      "differs": "No: it starts closer to its reference than the control",
                      "inconclusive": "Not shown"}),
    "pull": ("Why merge?",
             {"as expected": "Without it, the KL penalty pulls the policy back towards the base model",
              "differs": "The penalty pulled the kept adapter away from the base, not towards it",
              "inconclusive": "A pull towards the base is not shown at this β"}),
    "copy_equals": ("After merging, is `ref_model=None` (adapters disabled) the same as an explicit frozen copy?",
                    {"as expected": "Yes, to float rounding",
                     "differs": "No: they differ beyond float rounding",
                     "inconclusive": "Not shown"}),
    "kept_at_kl": ("Can I keep training the SFT adapter instead, with the SFT adapter as the reference?",
                   {"as expected": "Possible, but it reaches less reward than merging at the same KL to the SFT model",
                    "differs": "Possible, and it reaches more reward than merging at the same KL to the SFT model",
                    "inconclusive": "Possible (TRL's GRPOTrainer does it with a frozen copy); at the same KL to the "
                                    "SFT model its reward is not shown different from merging"}),
}


def answers_first(study_folder: str | Path, tutorial_folder: str | Path) -> str:
    """The README's opening table: the thread's four questions, each answered in one line chosen by its claim's
    verdict, with the number, its 95% interval and its scope. From the committed study and the committed
    tutorial run's notebook 04 (the copy's equality, which the study does not run)."""
    results, design, manifest = load_study(study_folder)
    study = findings(results, study_claims(design)).set_index(["key", "beta"])
    mid = f"{design.middle:g}"
    tutorial = findings(load_results(Path(tutorial_folder) / "04_comparison"), CLAIMS).set_index("key")
    profile = configure(manifest["profile"])
    model = GGUF_NAME.split(".")[0] if profile.model == "smollm2-gguf" else profile.model
    scope = f"{model}, IMDB, PPO {design.ppo.steps} steps at β = {mid} (the study)"
    rows = [("kl_ref_start", study.loc[("kl_ref_start", mid)], "nats/token at step 0, pitfall − control", scope),
            ("pull", study.loc[("pull", mid)], "Δ KL to the base (nats/token), pitfall − control", scope),
            ("copy_equals", tutorial.loc["copy_equals"], "largest absolute difference in any curve, copy − None",
             f"{model}, notebook 04's published run"),
            ("kept_at_kl", study.loc[("kept_at_kl", mid)], "held-out reward at matched KL to SFT, kept − merged",
             scope)]
    lines = [f"The question of [huggingface/trl#250]({THREAD}): *why merge, and which reference should the KL penalty "
             f"use?* Measured here (generated from the committed runs by `make publish`; the full tables follow):", "",
             "| question | answer | measured: effect [95% interval] (verdict, paired seeds) | scope |",
             "| --- | --- | --- | --- |"]
    for key, row, measure, where in rows:
        question, says = ANSWERS[key]
        lines.append(f"| {question} | {says[row['verdict']]}. | {measure}: {_summary(row)} | {where} |")
    return "\n".join(lines)
