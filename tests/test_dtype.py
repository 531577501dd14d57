"""The precision setting: which dtype each name gives, what "auto" picks on which hardware, that bf16 keeps
the trained parameters in fp32, and that a run's fingerprint carries the dtype."""

import pytest
import torch

import helpers.machine
import helpers.models
from helpers import get_profile
from helpers.harness.arms import Sources
from helpers.harness.run import Inputs
from helpers.models import load_model, new_lora, resolve_dtype
from helpers.ppo import ValueHead, config_from_profile, train
from helpers.profiles import ProfileError
from helpers.reference import DisabledAdapters
from helpers.rewards import token_fraction_reward


def test_named_dtypes_and_errors():
    assert resolve_dtype("float32", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="valid: float32, bfloat16, float16, auto"):
        resolve_dtype("fp8", "cpu")
    with pytest.raises(ValueError, match="CUDA GPU only"):
        resolve_dtype("float16", "cpu")
    with pytest.raises(ProfileError, match="unknown dtype 'half'"):
        get_profile("smol").with_overrides(dtype="half")
    assert get_profile("tiny").dtype == get_profile("smol").dtype == "float32"  # the default numbers


@pytest.mark.parametrize("flags, picked, reason", [
    ([], torch.float32, "no native bf16"),
    (["avx2", "avx512f"], torch.float32, "no native bf16"),
    (["avx512f", "avx512_bf16"], torch.bfloat16, "native bf16 on this CPU"),
    (["avx512f", "amx_tile", "amx_bf16"], torch.bfloat16, "native bf16 on this CPU"),
])
def test_auto_on_a_cpu_picks_by_what_the_cpu_has_and_says_why(flags, picked, reason, monkeypatch, capsys):
    monkeypatch.setattr(helpers.machine, "cpu_flags", lambda: flags)
    monkeypatch.setattr(helpers.models, "_said_auto", set())
    assert resolve_dtype("auto", "cpu") == picked
    said = capsys.readouterr().out
    assert f"picked {str(picked).removeprefix('torch.')} on cpu" in said and reason in said
    resolve_dtype("auto", "cpu")
    assert capsys.readouterr().out == ""  # said once


def test_bf16_trains_the_lora_value_head_and_optimizer_in_fp32(tiny, tokenizer):
    profile = tiny.with_overrides(dtype="bfloat16")
    torch.manual_seed(0)
    policy = new_lora(load_model(profile), profile)
    backbone = [p for n, p in policy.named_parameters() if "lora_" not in n]
    trained = [p for p in policy.parameters() if p.requires_grad]
    assert backbone and all(p.dtype == torch.bfloat16 for p in backbone)
    assert trained and all(p.dtype == torch.float32 for p in trained)
    value_head = ValueHead(policy.config.hidden_size)
    before = [p.detach().clone() for p in trained]
    queries = [tokenizer.encode(t) for t in ["the film was", "a story of", "i liked the", "this movie is"]] * 4
    metrics = train(policy, value_head, DisabledAdapters(policy), tokenizer, queries, token_fraction_reward(tokenizer, " good"),
                    config_from_profile(profile, steps=1, batch_size=4, mini_batch_size=2), progress=False)
    assert metrics[["policy_loss", "value_loss", "kl_ref_exact"]].notna().all().all()
    assert all(p.dtype == torch.float32 for p in trained) and value_head.summary.weight.dtype == torch.float32
    assert any(not torch.equal(a, p) for a, p in zip(before, trained))  # it trained, in fp32


def test_the_fingerprint_carries_the_dtype_and_is_unchanged_for_fp32(tmp_path):
    adapter, merged = tmp_path / "adapter.safetensors", tmp_path / "model.safetensors"
    adapter.write_bytes(b"a")
    merged.write_bytes(b"m")

    def fingerprint(dtype):
        profile = get_profile("tiny").with_overrides(dtype=dtype)
        return Inputs(profile, Sources(profile, adapter, merged, None), None, [[1, 2]], [[3]], {}, "off").fingerprint()

    assert "dtype" not in fingerprint("float32")  # committed fp32 runs keep their fingerprints
    assert fingerprint("bfloat16") == {**fingerprint("float32"), "dtype": "bfloat16"}
