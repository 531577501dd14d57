"""The tuning study's analysis (helpers.tuning): scores, the drift budget, the choice, the confirmation."""

import pandas as pd
import pytest

from helpers.tuning import BASELINE, KL_BUDGET, PERPLEXITY_BUDGET, Tuning, choose, confirmation, distinct_2, summarise


def trials(rows):
    base = dict(prompts="select", perplexity_before=50.0, p_positive_before=0.5, p_positive_after=0.6, lr=7e-4,
                lora_b_lr_ratio=1.0, beta0=0.2, batch=16, minibatch=8, epochs=2, response_len="4-16", gain_se=0.05)
    return pd.DataFrame([{**base, **r} for r in rows])


def setting(name, gain, kl, cpu_min, ppl=55.0, step=20, seeds=(0, 1, 2), prompts="select"):
    return [dict(setting=name, seed=s, step=step, gain=gain + 0.01 * s, kl_sft=kl, cpu_min=cpu_min,
                 perplexity_after=ppl, prompts=prompts) for s in seeds]


def test_the_choice_is_the_most_gain_per_cpu_minute_within_the_drift_budget():
    t = trials(setting(BASELINE, 0.2, 0.10, 4.0) + setting("fast", 0.6, 0.15, 3.0)
               + setting("drifts", 1.5, KL_BUDGET * 2, 3.0) + setting("garbles", 1.0, 0.1, 3.0, ppl=50 * PERPLEXITY_BUDGET + 1)
               + setting("two seeds", 5.0, 0.1, 1.0, seeds=(0, 1)))
    s = summarise(t)
    assert s.set_index("setting").within_budget.to_dict() == {BASELINE: True, "fast": True, "drifts": False,
                                                            "garbles": False, "two seeds": True}
    choice = choose(s)
    assert choice["winner"] == "fast" and choice["step"] == 20
    assert choice["gain_per_cpu_min"] == pytest.approx(0.61 / 3.0)
    # an earlier evaluation of a setting that later leaves the budget still counts
    early = trials(setting(BASELINE, 0.2, 0.10, 4.0) + setting("drifts", 0.9, 0.1, 1.5, step=10)
                   + setting("drifts", 1.5, KL_BUDGET * 2, 3.0))
    assert choose(summarise(early))["winner"] == "drifts" and choose(summarise(early))["step"] == 10
    assert choose(summarise(trials(setting("drifts", 1.5, 1.0, 3.0))))["winner"] is None


def test_the_confirmation_is_the_paired_difference_per_seed():
    t = trials([dict(r, gain=r["gain"]) for r in setting("fast", 0.6, 0.15, 3.0, seeds=(100, 101, 102), prompts="confirm")]
               + setting(BASELINE, 0.2, 0.10, 4.0, seeds=(100, 101, 102), prompts="confirm"))
    c = confirmation(t, "fast")
    assert c["seeds"] == 3 and c["difference"] == pytest.approx(0.4) and c["low"] == pytest.approx(0.4)
    assert confirmation(t[t.setting == "fast"], "fast") == {}


def test_distinct_2_falls_when_a_policy_repeats_itself():
    assert distinct_2(["a fine film with a plot", "the cast is good"]) == 1.0
    assert distinct_2(["great great great great"]) == pytest.approx(1 / 3)


@pytest.mark.parametrize("kl, ppl, over", [(0.1, 1.1, False), (KL_BUDGET * 2, 1.1, True), (0.1, PERPLEXITY_BUDGET + 0.1, True)])
def test_the_sentences_say_whether_the_budget_held_at_the_length_the_notebook_runs(kl, ppl, over):
    choice = {"winner": "fast", "step": 10, "why": "w", "gain": 0.2, "gain_low": 0.1, "gain_high": 0.3, "kl_sft": 0.1,
              "perplexity_ratio": 1.1,
              "confirmation": {"seeds": 3, "step": 20, "winner_gain": 0.5, "baseline_gain": 0.3, "difference": 0.2,
                               "low": -0.1, "high": 0.5, "winner_p_positive": [0.5, 0.6], "winner_kl_sft": kl,
                               "baseline_kl_sft": 0.1, "winner_perplexity_ratio": ppl}}
    summary = summarise(trials(setting(BASELINE, 0.2, 0.1, 4.0) + setting("fast", 0.6, 0.1, 3.0)))
    text = "\n".join(Tuning(None, summary, choice, {}).sentences())
    assert "Rerun on fresh prompts" in text and "Confirmed" not in text
    assert ("not at this notebook's" in text) == over, text
    assert "Screened out" not in text  # no setting of SCREENED_OUT ran here
