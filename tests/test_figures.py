"""The figures a learner reads, checked against the data behind them (issue: lines side by side have the same n
and steps, or their legend says n; aligned step axes; β ticks labelled; intervals where means are compared)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from conftest import ROOT  # noqa: E402

from helpers.harness.design import study_claims  # noqa: E402
from helpers.harness.figures import (comparison_curves, dose_response, frontier, grpo_curves,  # noqa: E402
                                     penalty_alone, pull_by_algorithm, study_frontier)
from helpers.harness.grpo_report import beside_ppo  # noqa: E402
from helpers.harness.grpo_study import grpo_claims, grpo_study_dir, load_grpo_study  # noqa: E402
from helpers.harness.results import load_results  # noqa: E402
from helpers.harness.study import load_study, study_dir  # noqa: E402
from helpers.harness.verdicts import findings  # noqa: E402
from helpers.plots import ppo_curves  # noqa: E402

TUTORIAL = ROOT / "docs" / "tutorial" / "smol" / "04_comparison"


@pytest.fixture(scope="module")
def comparison():
    return load_results(TUTORIAL).study("main")


def _drawn(ax):
    """(legend label, x data) of every labelled line: an errorbar's label sits on its container."""
    lines = [(c.get_label(), c.lines[0].get_xdata()) for c in ax.containers if not c.get_label().startswith("_")]
    return lines + [(line.get_label(), line.get_xdata()) for line in ax.get_lines()
                    if not line.get_label().startswith("_")]


@pytest.mark.parametrize("which", ["main", "penalty"])
def test_comparison_curves_share_one_step_axis_and_every_line_says_its_n_and_runs_its_steps(which):
    results = load_results(TUTORIAL).study(which)
    fig = (comparison_curves if which == "main" else penalty_alone)(results)
    limits = {ax.get_xlim() for ax in fig.axes}
    assert len(limits) == 1, f"panels with different step axes: {limits}"
    e = results.evaluation
    n = e.groupby("arm").seed.nunique()
    held_out = fig.axes if which == "penalty" else fig.axes[:4]  # 04's bottom middle and right: training steps
    for ax in held_out:
        for label, x in _drawn(ax):
            arm = label.split(" (")[0]
            assert f"(n={n[arm]})" in label if n[arm] > 1 else "only)" in label, label
            assert list(x) == sorted(e[e.arm == arm].step.unique()), (label, x)
    plt.close(fig)


def test_frontiers_draw_intervals_and_say_n(comparison):
    results, design, _ = load_study(study_dir("smol"))
    for fig, data in [(frontier(comparison), comparison.evaluation), (study_frontier(results), results.evaluation)]:
        labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
        assert labels and all("(n=" in t for t in labels), labels
        assert any(len(ax.containers) for ax in fig.axes), "no error bars drawn"
        plt.close(fig)


@pytest.fixture(scope="module")
def grpo():
    return load_grpo_study(grpo_study_dir("smol"))


@pytest.mark.parametrize("which", ["ppo", "grpo"])
def test_the_dose_response_labels_the_betas_it_ran_and_draws_each_slope(which, grpo):
    results, design, _ = load_study(study_dir("smol")) if which == "ppo" else grpo
    claims = study_claims(design) if which == "ppo" else grpo_claims(design)
    table = findings(results, claims)
    fig = dose_response(results, claims, slopes=table[table.beta == "slope"],
                        **({} if which == "ppo" else {"arm": "pitfall"}))
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"{b:g}" for b in design.betas]
        assert any(line.get_linestyle() == "--" for line in ax.get_lines()), "fitted slope not drawn"
        assert ax.title.get_fontsize() >= 9 and ax.yaxis.label.get_fontsize() >= 9
    plt.close(fig)


def test_ppo_curves_are_a_grid_two_panels_wide():
    steps = range(0, 5)
    metrics = pd.DataFrame({"step": steps, "reward_mean": 0.1, "kl_ref_exact": 0.01, "kl_coef": 0.05})
    evaluation = pd.DataFrame({"step": [0, 4], "reward_mean": [0.1, 0.3], "reward_se": 0.05, "kl_ref_exact": [0, .1],
                               "kl_base_exact": [0.5, 0.4], "perplexity": [58, 60]})
    fig = ppo_curves(metrics, evaluation, prompts=16)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 4 and {round(ax.get_position().width, 3) for ax in visible}.__len__() == 1
    assert len({round(ax.get_position().x0, 2) for ax in visible}) == 2  # two columns
    plt.close(fig)


def test_grpo_curves_every_line_says_its_n_and_runs_the_steps_its_data_ran(grpo):
    results = grpo[0]
    e = results.evaluation
    fig = grpo_curves(results)
    gap = e["step"].drop_duplicates().sort_values().diff().min()
    assert len({ax.get_xlim() for ax in fig.axes}) == 1, "panels with different step axes"
    for ax in fig.axes:
        drawn = _drawn(ax)
        assert len(drawn) == e.groupby(["arm", "beta"]).ngroups, [label for label, _ in drawn]
        for label, x in drawn:
            arm, beta = label.split(", β=")[0], float(label.split("β=")[1].split(" ")[0])
            data = e[(e["arm"] == arm) & (e["beta"] == beta)]
            assert f"(n={data.seed.nunique()})" in label, label
            steps = sorted(data["step"].unique())
            assert len(x) == len(steps) and all(abs(a - b) < gap / 2 for a, b in zip(x, steps)), (label, x, steps)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert len(legend) == len(set(legend)) == e.groupby(["arm", "beta"]).ngroups, legend
    assert "bars: 95% intervals" in fig._suptitle.get_text()
    plt.close(fig)
    one_seed = grpo_curves(results.seeds([0]))  # the tutorial's runs: no interval to draw, none promised
    assert "no interval" in one_seed._suptitle.get_text() and not any(ax.containers for ax in one_seed.axes)
    plt.close(one_seed)


def test_the_pull_by_algorithm_says_each_algorithms_n_and_labels_its_betas(grpo):
    ppo = load_study(study_dir("smol"))[0]
    side = beside_ppo(ppo, grpo[0])
    fig = pull_by_algorithm(side, 0.45, (0.001, 0.04))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    for algorithm, g in side.groupby("algorithm"):
        n = sorted(set(g["n_seeds"]))
        said = [t for t in labels if t.startswith(algorithm)]
        assert said and (f"n={n[0]}" in said[0]) and (f"{n[-1]} seeds" in said[0]), (said, n)
    ticks = {t.get_text() for ax in fig.axes for t in ax.get_xticklabels()}
    ticks |= {t.get_text() for ax in fig.axes for child in ax.get_children() if hasattr(child, "get_xticklabels")
              for t in child.get_xticklabels()}
    assert {f"{b:g}" for b in side["beta"]} <= ticks, ticks
    plt.close(fig)
