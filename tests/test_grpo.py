"""GRPO through TRL's own GRPOTrainer on `tiny` (helpers.grpo): each arm is built by TRL's code path, and the
reference TRL uses is the one the arm names."""

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch
from conftest import random_sft

from helpers.data import load_imdb, ppo_queries
from helpers.grpo import (GRPO_ARMS, REF_ADAPTER, TRAINED_ADAPTER, GRPOSettings, NothingToTrainError, TRLReference,
                          grpo_metrics, grpo_trainer, require_trainable)
from helpers.merge import load_adapter
from helpers.models import load_model
from helpers.reference import FrozenModel
from helpers.sampling import rollout
from helpers.ppo_math import kl_exact, log_softmax

SETTINGS = GRPOSettings(steps=2, prompts_per_step=2, group=2, response_len=(6, 6), learning_rate=1e-2, beta=0.04)


@pytest.fixture(scope="module")
def grpo_inputs(tiny, tokenizer, tmp_path_factory):
    from helpers.rewards import load_reward

    adapter, merged = random_sft(tiny, tokenizer, tmp_path_factory.mktemp("grpo"))
    queries = ppo_queries(load_imdb(tiny)["train"]["text"], tokenizer, n=8, seed=0)
    return adapter, merged, queries, load_reward(tiny)


def _trainer(arm, tiny, tokenizer, grpo_inputs, settings=SETTINGS):
    adapter, merged, queries, reward = grpo_inputs
    return grpo_trainer(arm, tiny, adapter, merged, tokenizer, queries, reward, settings)


def _lora(model, adapter_name):
    return {n: p.detach().clone() for n, p in model.named_parameters() if f".{adapter_name}." in n}


@pytest.mark.parametrize("arm", list(GRPO_ARMS))
def test_each_arm_trains_two_steps_through_trl_with_the_reference_it_names(arm, tiny, tokenizer, grpo_inputs):
    trainer = _trainer(arm, tiny, tokenizer, grpo_inputs)
    adapters = sorted(trainer.model.peft_config)
    assert adapters == ({"ref-copy": [TRAINED_ADAPTER, REF_ADAPTER]}.get(arm, [TRAINED_ADAPTER]))
    assert trainer.ref_model is None  # TRL's PEFT path: the reference lives on the policy's own backbone
    before = _lora(trainer.model, TRAINED_ADAPTER)
    trainer.train()
    metrics = grpo_metrics(trainer)
    assert list(metrics.step) == [1, 2] and metrics.step_time_s.gt(0).all()
    after = _lora(trainer.model, TRAINED_ADAPTER)
    assert any(not torch.equal(before[n], after[n]) for n in before), "GRPO trained nothing"
    # TRL's logged KL at step 1 is the policy before any update (= the SFT model) against the reference:
    # 0 where the reference is the SFT model, > 0 where it is the raw base
    if arm == "pitfall":
        assert metrics.kl[0] > 1e-3
    else:
        assert metrics.kl[0] == pytest.approx(0, abs=1e-6)


def test_trls_ref_copy_equals_the_sft_adapter_and_stays_frozen(tiny, tokenizer, grpo_inputs):
    trainer = _trainer("ref-copy", tiny, tokenizer, grpo_inputs)
    ref, sft = _lora(trainer.model, REF_ADAPTER), _lora(trainer.model, TRAINED_ADAPTER)
    assert ref and {n.replace(f".{REF_ADAPTER}.", f".{TRAINED_ADAPTER}."): p for n, p in ref.items()}.keys() == sft.keys()
    assert all(torch.equal(p, sft[n.replace(f".{REF_ADAPTER}.", f".{TRAINED_ADAPTER}.")]) for n, p in ref.items())
    assert not any(p.requires_grad for n, p in trainer.model.named_parameters() if f".{REF_ADAPTER}." in n)
    trainer.train()
    assert all(torch.equal(p, ref[n]) for n, p in _lora(trainer.model, REF_ADAPTER).items())
    assert any(not torch.equal(p, sft[n]) for n, p in _lora(trainer.model, TRAINED_ADAPTER).items())


@torch.no_grad()
def test_the_pitfalls_step0_kl_to_its_reference_is_kl_of_sft_to_base(tiny, tokenizer, grpo_inputs):
    """What TRL uses as the pitfall's reference, measured on the same tokens: KL(SFT || base) to float rounding.
    The ref-copy arm on the same tokens: 0."""
    adapter, merged, queries, _ = grpo_inputs
    torch.manual_seed(0)
    sft = load_model(tiny, merged)
    ro = rollout(sft, tokenizer, queries[:4], [6] * 4, keep_logits=True)
    logp, mask = log_softmax(ro.logits), ro.response_mask.float()
    want = kl_exact(logp, log_softmax(FrozenModel(load_model(tiny)).logits(*ro.rows(slice(None)))), mask).mean()
    assert want > 1e-3  # SFT differs from the base: the check below can fail
    for arm, expected in [("pitfall", want), ("ref-copy", torch.tensor(0.0))]:
        model = _trainer(arm, tiny, tokenizer, grpo_inputs).model
        got = kl_exact(logp, log_softmax(TRLReference(model).logits(*ro.rows(slice(None)))), mask).mean()
        assert got == pytest.approx(expected.item(), rel=1e-3, abs=1e-5), arm


def test_at_beta_zero_the_pitfall_and_the_copy_are_the_same_run(tiny, tokenizer, grpo_inputs):
    """β = 0: TRL loads no reference, so removing its copy changes nothing (and it makes none)."""
    runs = {}
    for arm in ("pitfall", "ref-copy"):
        trainer = _trainer(arm, tiny, tokenizer, grpo_inputs, replace(SETTINGS, beta=0.0))
        assert REF_ADAPTER not in trainer.model.peft_config
        trainer.train()
        runs[arm] = (grpo_metrics(trainer), _lora(trainer.model, TRAINED_ADAPTER))
    (m1, w1), (m2, w2) = runs.values()
    assert list(m1.reward) == list(m2.reward) and list(m1.loss) == list(m2.loss)
    assert all(torch.equal(w1[n], w2[n]) for n in w1)


def test_an_adapter_loaded_frozen_is_refused_before_training(tiny, tokenizer, grpo_inputs, monkeypatch):
    """peft loads an adapter frozen by default; TRL would then run GRPO and train nothing."""
    adapter = grpo_inputs[0]
    frozen = load_adapter(load_model(tiny), adapter, tiny, TRAINED_ADAPTER, trainable=False)
    with pytest.raises(NothingToTrainError, match="is_trainable=True"):
        require_trainable(frozen)
    assert require_trainable(load_adapter(load_model(tiny), adapter, tiny, TRAINED_ADAPTER, trainable=True)) > 0
    from helpers import grpo

    frozen_arm = replace(GRPO_ARMS["ref-copy"], build=lambda profile, sft, merged: grpo.Handed(
        load_adapter(load_model(profile), sft, profile, TRAINED_ADAPTER, trainable=False)))
    monkeypatch.setitem(GRPO_ARMS, "frozen", frozen_arm)
    with pytest.raises(NothingToTrainError):
        _trainer("frozen", tiny, tokenizer, grpo_inputs)
    with pytest.raises(ValueError, match="Unknown GRPO arm 'merged'; valid arms: recipe, ref-copy, pitfall"):
        _trainer("merged", tiny, tokenizer, grpo_inputs)


def test_the_grpo_study_runs_its_design_and_judges_its_claims(tiny, tokenizer, tmp_path):
    """The GRPO study through the harness on tiny: β = 0 once, the pitfall and TRL's copy at each framework β and
    the calibrated one, the recipe at the middle; findings for every claim, β = 0 against the smallest β."""
    from helpers.harness.grpo_study import FRAMEWORK_BETAS, calibrated_beta, design_for, run_grpo_study

    out = tmp_path / "outputs"
    random_sft(tiny, tokenizer, out)
    calibration = {"kl_sft_base_per_token": 0.25}
    design, _ = design_for(tiny, 2, calibration)
    assert design.betas == (*FRAMEWORK_BETAS, 4.0) and calibrated_beta(0.25) == 4.0 and calibrated_beta(0.47) == 2.0
    results = run_grpo_study(tiny, 2, tmp_path / "grpo", out, workers=1, calibration=calibration)
    assert len(results.runs) == 2 * (1 + 2 * 4 + 1) and set(results.runs.beta) == {0.0, *design.betas}
    table = pd.read_csv(tmp_path / "grpo" / "findings.csv")
    pulls = table[table.key == "pull"]
    assert sorted(pulls.beta.astype(str)) == sorted(["0.001", "0.01", "0.04", "4", "slope"])
    assert {"kept_at_kl", "kept_kl_per_step", "small_beta", "pull_cost"} <= set(table.key)
    assert (table.n_seeds == 2).all()
    start = table[table.key == "kl_ref_start"].effect.item()  # the pitfall starts at KL(SFT || base), the copy at 0
    assert start > 1e-3
    manifest = json.loads((tmp_path / "grpo" / "manifest.json").read_text())
    assert manifest["runs"] == manifest["runs_done"] == 20 and not manifest["missing"]
    # what 06 renders: the tables, the design as it ran, the figures; a report torn by a write is refused
    from helpers.artifacts import StaleArtifactError
    from helpers.harness.grpo_study import load_grpo_study

    loaded, loaded_design, _ = load_grpo_study(tmp_path / "grpo")
    assert loaded_design == design and len(loaded.runs) == 20
    assert set(manifest["report"]["files"]) == {"findings.csv", "figures/dose_response.png", "figures/curves.png"}
    (tmp_path / "grpo" / "figures" / "curves.png").write_bytes(b"torn")
    with pytest.raises(StaleArtifactError, match="curves.png.*grpo_study .*--report-only"):
        load_grpo_study(tmp_path / "grpo")


def test_the_framework_table_names_arms_that_exist_and_says_what_06_measured():
    from helpers.harness.arms import ARMS
    from helpers.harness.frameworks import FRAMEWORKS, framework_markdown, framework_table

    for f in FRAMEWORKS:
        assert f.ppo_arm in ARMS and (f.grpo_arm == "-" or f.grpo_arm in GRPO_ARMS), f.name
    measured = pd.DataFrame({"arm": ["recipe", "ref-copy", "pitfall"], "KL to its reference": [0.0, 0.0, 0.4877]})
    rows = framework_markdown(measured).splitlines()[2:]
    assert len(rows) == len(FRAMEWORKS)
    for f, row in zip(FRAMEWORKS, rows):  # each GRPO arm's row carries that arm's measured step-0 KL, no other
        assert ("0.4877" in row) == (f.grpo_arm == "pitfall") and (("0.0000" in row) == (f.grpo_arm in ("recipe", "ref-copy")))
    assert "measured in notebook 06" not in framework_markdown(None)
    assert set(framework_table(grpo=True).grpo_arm) <= set(GRPO_ARMS)


def test_trls_default_bf16_runs_the_evaluations_inside_training_under_autocast(tiny, tokenizer, grpo_inputs):
    """Why notebook 06's step-0 perplexity differs from 01's for the same SFT model (precision_line says so):
    GRPOConfig defaults to bf16=True, and accelerate wraps the trained model's forward in bf16 autocast, so a
    callback's forward inside training is in bf16, and no autocast(enabled=False) around it undoes that."""
    from transformers import TrainerCallback

    from helpers.grpo import grpo_config
    from helpers.models import perplexity

    texts = load_imdb(tiny)["heldout"]["text"][:8]
    seen = {}

    class Probe(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            with torch.autocast("cpu", enabled=False):
                seen["inside"] = perplexity(model, tokenizer, texts, 32)

    one_step = replace(SETTINGS, steps=1)
    assert grpo_config(one_step).bf16  # TRL's default, which the package keeps
    trainer = _trainer("ref-copy", tiny, tokenizer, grpo_inputs, one_step)
    before = perplexity(trainer.model, tokenizer, texts, 32)
    trainer.add_callback(Probe())
    trainer.train()
    assert seen["inside"] != pytest.approx(before, rel=1e-6), "the evaluation inside training ran in full precision"
    assert seen["inside"] == pytest.approx(before, rel=0.05)  # the same model, in bf16
