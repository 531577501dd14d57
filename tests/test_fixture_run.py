"""The default numbers do not move: a `tiny` PPO run (training and the held-out evaluation, both of which
generate) pinned to a fixture recorded before generation, the update and memory were optimised.

On the machine that recorded it (same CPU model, torch and ISA) the comparison is exact. Elsewhere low-bit
float rounding differs between CPUs (AVX-512 against AVX2 kernels), so the sampled tokens must still be the
same and every number equal within rtol 1e-3 / atol 1e-5; a changed algorithm moves them far more.

Re-record (only when a result is meant to change, and say so in the commit):
    TUTORIAL_RECORD_FIXTURE=1 .venv/bin/python -m pytest tests/test_fixture_run.py
"""

import json
import os

import pytest
import torch
from peft import get_peft_model

import helpers.ppo
from helpers.artifacts import stage_dir
from helpers.compare import build_arm, yardsticks
from helpers.data import load_imdb, ppo_queries
from helpers.evaluation import Evaluator
from helpers.merge import merge_adapter, save_merged
from helpers.models import load_model, lora_config
from helpers.ppo import TIMING_COLUMNS, config_from_profile, train
from helpers.rewards import vader_reward
from helpers.sft import save_adapter
from helpers.machine import signature as machine_signature

from conftest import ROOT

FIXTURE = ROOT / "tests" / "fixtures" / "tiny_ppo_run.json"
TIMING = list(TIMING_COLUMNS)


def tiny_run(tiny, tokenizer, out, monkeypatch) -> dict:
    """3 PPO steps of the recipe on `tiny` with an evaluation after each (4 held-out prompts, KL to the
    base and the SFT model); every rollout's tokens, every metric."""
    torch.manual_seed(0)
    base = load_model(tiny)
    config = lora_config(tiny, base)
    config.init_lora_weights = False  # a random "SFT adapter": SFT != base
    adapter = save_adapter(get_peft_model(base, config), stage_dir(out, "tiny", "01_sft") / "adapter")
    merged, verification = merge_adapter(tiny, adapter, tokenizer, load_imdb(tiny)["heldout"]["text"][:4])
    merged_dir = save_merged(merged, tokenizer, stage_dir(out, "tiny", "02_merge") / "model", verification)
    queries = ppo_queries(load_imdb(tiny)["train"]["text"], tokenizer, n=64, seed=0)
    tokens = []
    original = helpers.ppo.rollout

    def recording_rollout(*args, **kwargs):
        ro = original(*args, **kwargs)
        tokens.append(ro.input_ids.tolist())
        return ro

    monkeypatch.setattr(helpers.ppo, "rollout", recording_rollout)
    monkeypatch.setattr(helpers.evaluation, "rollout", recording_rollout)
    arm = build_arm("merged+disabled", tiny, adapter, merged_dir)
    evaluator = Evaluator(tokenizer, queries[-4:], vader_reward(), tiny.response_len, every=1,
                          yardsticks=yardsticks(tiny, merged_dir))
    metrics = train(arm.policy, arm.value_head, arm.reference, tokenizer, queries, vader_reward(),
                    config_from_profile(tiny, steps=3), evaluator=evaluator, progress=False)
    drop = lambda frame: frame.drop(columns=[c for c in TIMING if c in frame.columns])  # noqa: E731
    lora = sorted((k, v) for k, v in arm.policy.state_dict().items() if "lora_B.ppo" in k)
    return {"machine": machine_signature(), "tokens": tokens,
            "metrics": drop(metrics).to_dict(orient="list"), "evaluation": drop(evaluator.table()).to_dict(orient="list"),
            "lora_B_sums": [float(v.double().sum()) for _, v in lora],
            "value_head": arm.value_head.summary.weight.flatten().tolist()[:8]}


def test_tiny_ppo_run_matches_the_fixture_recorded_before_the_speedups(tiny, tokenizer, tmp_path, monkeypatch):
    run = json.loads(json.dumps(tiny_run(tiny, tokenizer, tmp_path, monkeypatch)))  # floats as the file has them
    if os.environ.get("TUTORIAL_RECORD_FIXTURE") == "1":
        FIXTURE.parent.mkdir(exist_ok=True)
        tmp = FIXTURE.with_suffix(".tmp")
        tmp.write_text(json.dumps(run, indent=1) + "\n")
        tmp.rename(FIXTURE)
        pytest.skip(f"recorded {FIXTURE}")
    expected = json.loads(FIXTURE.read_text())
    assert run["tokens"] == expected["tokens"], "the sampled tokens changed for the same seed"
    same_machine = run["machine"] == expected["machine"]
    for key in ["metrics", "evaluation", "lora_B_sums", "value_head"]:
        got, want = run[key], expected[key]
        if same_machine:
            assert got == want, key
        else:
            assert json.dumps(sorted(got)) == json.dumps(sorted(want)) if isinstance(got, dict) else True
            flat = lambda x: [v for col in sorted(x) for v in x[col]] if isinstance(x, dict) else x  # noqa: E731
            assert flat(got) == pytest.approx(flat(want), rel=1e-3, abs=1e-5), key


SMOL_FIXTURE = ROOT / "tests" / "fixtures" / "smol_rollout_tokens.json"


def test_smol_rollouts_sample_the_tokens_recorded_before_the_speedups(tokenizer):
    """SmolLM2 (its real width, 30 layers, tied head), a LoRA with B != 0 on it, 4 IMDB prompts, 16 new tokens:
    the same tokens as the recorded ones, in training's path and in the evaluation's (kept logits)."""
    from helpers import get_profile
    from helpers.models import new_lora
    from helpers.ppo import rollout

    smol = get_profile("smol")
    torch.manual_seed(0)
    policy = new_lora(load_model(smol, dtype=torch.float32, on="cpu"), smol)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    queries = ppo_queries(load_imdb(smol)["heldout"]["text"][:4], tokenizer, n=4, seed=0)
    lengths = [16, 9, 16, 4]
    got = {}
    for keep in (False, True):
        torch.manual_seed(7)
        ro = rollout(policy, tokenizer, queries, lengths, keep_logits=keep)
        got[f"keep_logits={keep}"] = ro.input_ids.tolist()
    if os.environ.get("TUTORIAL_RECORD_FIXTURE") == "1":
        SMOL_FIXTURE.write_text(json.dumps({"machine": machine_signature(), **got}) + "\n")
        pytest.skip(f"recorded {SMOL_FIXTURE}")
    expected = json.loads(SMOL_FIXTURE.read_text())
    for key, tokens in got.items():
        assert tokens == expected[key], key
