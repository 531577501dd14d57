"""The default numbers do not move: a `tiny` PPO run (training and the held-out evaluation, both of which
generate) pinned to a fixture, and smol rollouts pinned to theirs.

Sampling turns float rounding into a discrete choice: on another CPU (AVX2 against AVX-512 kernels) or after a
faster kernel, a logit that moves by 1e-6 can flip one sampled token, and the rest of the run follows another
path. So the exact comparison is made only where it can hold, on the machine and path that recorded the
fixture. Everywhere else the run is *replayed*: every sampling call returns the recorded tokens (and what
generation keeps, from a forward pass over them), and every number must then lie within rtol 1e-3 / atol 1e-5
of the recorded one; a changed algorithm moves them far more. tests/test_equivalence.py checks the
distribution of whole runs.

Re-record (only when a result is meant to change, and say so in the commit):
    TUTORIAL_RECORD_FIXTURE=1 .venv/bin/python -m pytest tests/test_fixture_run.py
"""

import json
import os

import pytest
import torch
from conftest import ROOT, random_sft, smol_with_lora

from helpers import sampling
from helpers.data import load_imdb, ppo_queries
from helpers.evaluation import Evaluator
from helpers.fastpath import reference_path_on
from helpers.harness.arms import build_arm, yardsticks
from helpers.harness.trainers import ppo_arm
from helpers.machine import signature as machine_signature
from helpers.ppo import TIMING_COLUMNS, config_from_profile, train
from helpers.rewards import vader_reward

FIXTURE = ROOT / "tests" / "fixtures" / "tiny_ppo_run.json"
TIMING = list(TIMING_COLUMNS)


def recorded_on() -> dict:
    """What must be equal for an exact comparison: the machine (CPU, ISA, threads, torch) and the path."""
    return {**machine_signature(), "path": "reference" if reference_path_on() else "fast"}


def tiny_run(tiny, tokenizer, out, monkeypatch, replay: list | None = None) -> dict:
    """3 PPO steps of the recipe on `tiny` with an evaluation after each (4 held-out prompts, KL to the
    base and the SFT model); every sampling call's tokens, every metric. `replay`: the tokens of a recorded
    run, returned by the sampling calls in their order instead of sampled ones."""
    adapter, merged_dir = random_sft(tiny, tokenizer, out)
    queries = ppo_queries(load_imdb(tiny)["train"]["text"], tokenizer, n=64, seed=0)
    tokens = []
    replayed = iter(replay or [])
    generate = sampling.generate_tokens  # every rollout (training and evaluation) calls it in helpers.sampling

    def recording(model, query_ids, query_mask, max_new, eos_ids, pad, keep_logits=False):
        if replay is None:
            generated = generate(model, query_ids, query_mask, max_new, eos_ids, pad, keep_logits)
        else:
            recorded = torch.tensor(next(replayed), device=query_ids.device)
            generated = sampling.teacher_forced(model, query_ids, query_mask, recorded, keep_logits)
        tokens.append(generated.tokens.tolist())
        return generated

    monkeypatch.setattr(sampling, "generate_tokens", recording)
    arm = ppo_arm(build_arm("merged+disabled", tiny, adapter, merged_dir), seed=0)
    evaluator = Evaluator(tokenizer, queries[-4:], vader_reward(), tiny.ppo.response_len, every=1,
                          yardsticks=yardsticks(tiny, merged_dir))
    metrics = train(arm.policy, arm.value_head, arm.reference, tokenizer, queries, vader_reward(),
                    config_from_profile(tiny, steps=3), evaluator=evaluator, progress=False)
    if replay is not None:
        assert next(replayed, None) is None, "the run sampled fewer times than the recorded one"
    drop = lambda frame: frame.drop(columns=[c for c in TIMING if c in frame.columns])  # noqa: E731
    lora = sorted((k, v) for k, v in arm.policy.state_dict().items() if "lora_B.ppo" in k)
    return {"recorded_on": recorded_on(), "tokens": tokens,
            "metrics": drop(metrics).to_dict(orient="list"), "evaluation": drop(evaluator.table()).to_dict(orient="list"),
            "lora_B_sums": [float(v.double().sum()) for _, v in lora],
            "value_head": arm.value_head.summary.weight.flatten().tolist()[:8]}


NUMBERS = ["metrics", "evaluation", "lora_B_sums", "value_head"]


def assert_close_numbers(got: dict, want: dict) -> None:
    """Every number within rtol 1e-3 / atol 1e-5, with the same columns and lengths."""
    for key in NUMBERS:
        g, w = got[key], want[key]
        if isinstance(w, dict):
            assert sorted(g) == sorted(w), f"{key}: columns {sorted(g)} != recorded {sorted(w)}"
            g, w = [v for col in sorted(g) for v in g[col]], [v for col in sorted(w) for v in w[col]]
        assert len(g) == len(w), f"{key}: {len(g)} values, recorded {len(w)}"
        assert g == pytest.approx(w, rel=1e-3, abs=1e-5), key


def test_the_fixture_comparison_fails_on_a_changed_number_column_or_length():
    want = {"metrics": {"kl": [0.1, 0.2]}, "evaluation": {"reward_mean": [1.0]}, "lora_B_sums": [1.0],
            "value_head": [0.5]}
    assert_close_numbers(want, want)
    for broken in ({**want, "metrics": {"kl": [0.1, 0.21]}}, {**want, "metrics": {"kl_exact": [0.1, 0.2]}},
                   {**want, "value_head": [0.5, 0.1]}, {**want, "lora_B_sums": [1.01]}):
        with pytest.raises(AssertionError):
            assert_close_numbers(broken, want)


def test_tiny_ppo_run_matches_the_fixture(tiny, tokenizer, tmp_path, monkeypatch):
    run = json.loads(json.dumps(tiny_run(tiny, tokenizer, tmp_path / "a", monkeypatch)))  # floats as in the file
    if os.environ.get("TUTORIAL_RECORD_FIXTURE") == "1":
        FIXTURE.parent.mkdir(exist_ok=True)
        tmp = FIXTURE.with_suffix(".tmp")
        tmp.write_text(json.dumps(run, indent=1) + "\n")
        tmp.rename(FIXTURE)
        pytest.skip(f"recorded {FIXTURE}")
    expected = json.loads(FIXTURE.read_text())
    if run["recorded_on"] == expected["recorded_on"]:  # where it can hold: bit for bit
        assert run["tokens"] == expected["tokens"], "the sampled tokens changed for the same seed"
        for key in NUMBERS:
            assert run[key] == expected[key], key
    replayed = json.loads(json.dumps(tiny_run(tiny, tokenizer, tmp_path / "b", monkeypatch, expected["tokens"])))
    assert replayed["tokens"] == expected["tokens"]
    assert_close_numbers(replayed, expected)


SMOL_FIXTURE = ROOT / "tests" / "fixtures" / "smol_rollout_tokens.json"


@pytest.mark.slow  # seconds of SmolLM2 or a subprocess: in `make test`, not `make test-fast`
def test_smol_rollouts_match_the_recorded_tokens_and_log_probs(tokenizer):
    """SmolLM2 (its real width, 30 layers, tied head), a LoRA with B != 0 on it, 4 IMDB prompts, 16 new tokens,
    in training's path and in the evaluation's (kept logits). On the recording machine and path: the same tokens.
    Anywhere: the log-probability of every recorded token, computed here, within 1e-4 nats of the recorded one
    (the distribution the tokens were drawn from; AVX2 against AVX-512 moves it ~2e-5)."""
    from helpers.models import response_forward
    from helpers.ppo import gather_logprobs, log_softmax, rollout

    smol, policy = smol_with_lora()
    queries = ppo_queries(load_imdb(smol)["heldout"]["text"][:4], tokenizer, n=4, seed=0)
    lengths = [16, 9, 16, 4]

    def logprobs(input_ids, attention_mask, query_len) -> list:
        ids, mask = torch.tensor(input_ids), torch.tensor(attention_mask)
        with torch.no_grad():
            logp = gather_logprobs(log_softmax(response_forward(policy, ids, mask, query_len)[0]), ids[:, query_len:])
        return (logp * mask[:, query_len:]).tolist()

    got = {}
    for keep in (False, True):
        torch.manual_seed(7)
        ro = rollout(policy, tokenizer, queries, lengths, keep_logits=keep)
        got[f"keep_logits={keep}"] = {"input_ids": ro.input_ids.tolist(), "attention_mask": ro.attention_mask.tolist(),
                                      "query_len": ro.query_len}
    if os.environ.get("TUTORIAL_RECORD_FIXTURE") == "1":
        for rec in got.values():
            rec["logprobs"] = logprobs(rec["input_ids"], rec["attention_mask"], rec["query_len"])
        SMOL_FIXTURE.write_text(json.dumps({"recorded_on": recorded_on(), **got}) + "\n")
        pytest.skip(f"recorded {SMOL_FIXTURE}")
    expected = json.loads(SMOL_FIXTURE.read_text())
    for key, rec in got.items():
        want = expected[key]
        if expected["recorded_on"] == recorded_on():
            assert rec["input_ids"] == want["input_ids"], key
        here = torch.tensor(logprobs(want["input_ids"], want["attention_mask"], want["query_len"]))
        gap = (here - torch.tensor(want["logprobs"])).abs().max().item()
        assert gap <= 1e-4, f"{key}: a recorded token's log-probability moved by {gap:.2e} nats (> 1e-4)"
