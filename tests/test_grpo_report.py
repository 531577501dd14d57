"""Notebook 06's study tables on synthetic runs whose answers are known: the power calculation from a pilot,
and the pitfall's pull in GRPO against PPO's at the same β (helpers.harness.grpo_report)."""

import math

import pandas as pd
import pytest

from helpers.harness.grpo_report import beside_ppo, compare_pulls, comparison_line, power_line, precision_line
from helpers.harness.results import Results
from helpers.harness.sizing import pilot_power
from helpers.harness.verdicts import Claim, findings, seeds_needed

START = 0.4  # every arm's KL to the base at step 0


def _results(study, pitfall, control, pulls: dict, moved: float) -> Results:
    """Runs of one study: per (β, seed) the pitfall's change in KL to the base minus its control's is
    `pulls[β][seed]` (the control stays at START); the control ends `moved` nats/token from the SFT model."""
    rows, runs = [], []
    for beta, per_seed in pulls.items():
        for seed, pull in enumerate(per_seed):
            for arm, end in [(pitfall, START + pull), (control, START)]:
                for step, kl_base, kl_sft in [(0, START, 0.0), (8, end, moved)]:
                    rows.append({"study": study, "arm": arm, "beta": beta, "seed": seed, "step": step,
                                 "kl_base_exact": kl_base, "kl_sft_exact": kl_sft})
                runs.append({"study": study, "arm": arm, "beta": beta, "seed": seed})
    e = pd.DataFrame(rows)
    return Results(e.iloc[:0], e, e.iloc[:0], pd.DataFrame(runs))


def _ppo():
    """PPO's pull is linear in log10 β: 0 at β 0.003, -0.1 per ×10, plus 0.01 × seed (6 seeds)."""
    return _results("fixed-beta", "adapter+disabled", "adapter+ref-adapter",
                    {b: [-0.1 * math.log10(b / 0.003) + 0.01 * s for s in range(6)] for b in (0.003, 0.03, 0.3)}, 0.5)


def _grpo(shift: float):
    """GRPO's pull at β 0.01 is PPO's line there plus `shift` (4 seeds); β 0.001 lies outside PPO's grid."""
    at = -0.1 * math.log10(0.01 / 0.003)
    return _results("grpo", "pitfall", "ref-copy",
                    {0.001: [0.0, 0.01, -0.01, 0.02], 0.01: [at + shift + 0.01 * s for s in range(4)]}, 0.25)


def test_grpos_pull_is_compared_with_ppos_read_off_its_line_in_log_beta():
    table = compare_pulls(_ppo(), _grpo(0.3)).set_index(["measure", "beta"])
    row = table.loc[("pull (nats/token)", 0.01)]
    ppo_at = -0.1 * math.log10(0.01 / 0.003) + 0.025  # seeds 0-5: mean offset 0.025
    assert row.ppo == pytest.approx(ppo_at) and row.ppo_from == "β 0.003 and 0.03" and row.ppo_seeds == 6
    assert row.difference == pytest.approx(0.3 + 0.015 - 0.025) and row.grpo_is == "weaker"
    assert row.ci_low < row.difference < row.ci_high
    assert table.loc[("pull (nats/token)", 0.001)].grpo_is.startswith("not compared: outside PPO's grid")
    relative = table.loc[("pull per nat/token the control moved from the SFT model", 0.01)]
    assert relative.grpo == pytest.approx(row.grpo / 0.25) and relative.ppo == pytest.approx(ppo_at / 0.5)
    assert compare_pulls(_ppo(), _grpo(-0.3)).set_index(["measure", "beta"]).loc[
        ("pull (nats/token)", 0.01)].grpo_is == "stronger"
    assert compare_pulls(_ppo(), _grpo(0.01)).set_index(["measure", "beta"]).loc[
        ("pull (nats/token)", 0.01)].grpo_is.startswith("inconclusive: |difference| < ")
    line = comparison_line(table.reset_index())
    assert "at β = 0.01, GRPO" in line and "GRPO's pull is weaker" in line and "β 0.001 not compared" in line


def test_beside_ppo_gives_each_studys_pull_with_its_seeds():
    side = beside_ppo(_ppo(), _grpo(0.3)).set_index(["algorithm", "beta"])
    assert side.loc[("PPO", 0.3)].pull == pytest.approx(-0.2 + 0.025) and side.loc[("PPO", 0.3)].n_seeds == 6
    assert side.loc[("GRPO", 0.001)].n_seeds == 4 and side.loc[("GRPO", 0.01)].control_kl_sft == pytest.approx(0.25)


def test_the_power_calculation_reads_the_pilot_seeds_alone():
    pulls = [-0.1, -0.3, -0.2, -0.25]
    results = _results("grpo", "pitfall", "ref-copy", {0.04: pulls}, 0.25)
    claim = Claim("pulls", "pitfall", "ref-copy", "kl_base_change", "<0", study="grpo", beta=0.04, key="pull")
    power = pilot_power(results, [claim], pilot=(0, 1)).iloc[0]
    needed = seeds_needed(pulls[:2])
    assert power.pilot_effect == pytest.approx(-0.2) and power.pilot_seeds == 2
    assert power.seeds_needed == str(needed) and power.within_reach == (needed <= 4) and power.seeds_run == 4
    assert power.verdict == findings(results, [claim]).iloc[0].verdict
    assert power_line(pilot_power(results, [claim], pilot=(0, 1)), (0, 1)).startswith(
        f"The pilot (seeds 0, 1) put {int(needed <= 4)} of 1 findings within reach of 4 paired seeds")


def test_the_precision_line_puts_06s_step0_perplexity_beside_01s_and_names_the_precision():
    ends = pd.DataFrame({"perplexity, step 0": [57.807, 57.745]})
    line = precision_line(ends, 57.766, "bf16")
    assert "57.745–57.807" in line and "57.766" in line and "bf16=True" in line
    assert "full precision" in precision_line(ends.iloc[:1], 57.807, None) and "–" not in precision_line(ends.iloc[:1], 57.807, None)
