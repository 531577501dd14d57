import json
import shutil

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from helpers.artifacts import MissingArtifactError, atomic_dir, require, stage_dir
from helpers.merge import (
    AdapterError,
    QuantizedMergeError,
    merge_adapter,
    merge_tolerance,
    quantized_merge_report,
    save_merged,
)
from helpers.models import load_model, lora_target_modules
from helpers.sft import save_adapter

TEXTS = ["The acting was wooden but the score was lovely.", "I laughed, I cried, I left happy.",
         "Two hours I will never get back."]


def random_adapter(model, folder):
    """A LoRA with B != 0 (init_lora_weights=False), so merging really changes the weights."""
    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=lora_target_modules(model),
                                                  init_lora_weights=False))
    save_adapter(peft_model, folder)
    return folder


@pytest.mark.parametrize("arch", ["llama", "gpt_neox", "gpt_neo"])
def test_merged_equals_base_plus_adapter(arch, tiny_architectures, tiny, tokenizer, tmp_path):
    profile = tiny.with_overrides(model=str(tiny_architectures[arch]), lora_targets=None)
    adapter = random_adapter(load_model(profile), tmp_path / "adapter")
    merged, verification = merge_adapter(profile, adapter, tokenizer, TEXTS)
    assert verification["within_tolerance"] and verification["lora_modules_left"] == 0
    assert verification["max_abs_logit_diff"] <= verification["tolerance"]
    assert not isinstance(merged, PeftModel)
    # independently: a fresh base + adapter against the merged weights
    reference = PeftModel.from_pretrained(load_model(profile), adapter)
    batch = tokenizer(TEXTS[:1], return_tensors="pt")
    with torch.no_grad():
        expected, got = reference(**batch).logits, merged(**batch).logits
        plain = load_model(profile)(**batch).logits
    assert (expected - got).abs().max() < 1e-4
    assert (plain - got).abs().max() > 1e-3  # the adapter did change the model
    out = save_merged(merged, tokenizer, tmp_path / "02_merge" / "model", verification)
    assert json.loads((tmp_path / "02_merge" / "verification.json").read_text())["within_tolerance"] is True
    assert (out / "model.safetensors").exists() and not list(out.glob("adapter_*"))


def test_merge_refuses_a_quantized_base(tiny_architectures, tiny, tokenizer, tmp_path):
    profile = tiny.with_overrides(model=str(tiny_architectures["gpt_neox"]), lora_targets=None)
    adapter = random_adapter(load_model(profile), tmp_path / "adapter")
    for bits in ("8bit", "4bit"):
        with pytest.raises(QuantizedMergeError, match="8-bit/4-bit"):
            merge_adapter(profile, adapter, tokenizer, TEXTS, base_model=load_model(profile, quantize=bits))


def test_adapter_of_another_architecture_is_a_clear_error(tiny_architectures, tiny, tokenizer, tmp_path):
    neox = tiny.with_overrides(model=str(tiny_architectures["gpt_neox"]), lora_targets=None)
    adapter = random_adapter(load_model(neox), tmp_path / "adapter")
    llama = tiny.with_overrides(model=str(tiny_architectures["llama"]), lora_targets=None)
    with pytest.raises(AdapterError, match=r"does not fit .*llama.*01_sft_lora\.ipynb"):
        merge_adapter(llama, adapter, tokenizer, TEXTS)


def test_corrupt_adapter_is_a_clear_error(tiny_architectures, tiny, tokenizer, tmp_path):
    profile = tiny.with_overrides(model=str(tiny_architectures["llama"]), lora_targets=None)
    adapter = random_adapter(load_model(profile), tmp_path / "adapter")
    (adapter / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(AdapterError, match="01_sft_lora.ipynb"):
        merge_adapter(profile, adapter, tokenizer, TEXTS)
    (adapter / "adapter_config.json").write_text("{oops")
    with pytest.raises(AdapterError, match="not valid JSON"):
        merge_adapter(profile, adapter, tokenizer, TEXTS)


def test_missing_adapter_names_the_notebook(tmp_path):
    with pytest.raises(MissingArtifactError, match=r"01_sft_lora\.ipynb.*PROFILE=tiny"):
        require(stage_dir(tmp_path, "tiny", "01_sft") / "adapter", "01_sft", "tiny")


def test_atomic_dir_leaves_nothing_half_written(tmp_path):
    final = tmp_path / "model"
    with atomic_dir(final) as tmp:
        (tmp / "weights").write_text("v1")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "weights").write_text("half of v2")
            raise RuntimeError("interrupted")
    assert (final / "weights").read_text() == "v1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_quantized_merge_report_measures_what_the_8bit_merge_loses(tiny_architectures, tiny, tokenizer, tmp_path):
    # rows of very different scale, so a per-row quantization step differs from any other grouping
    shutil.copytree(tiny_architectures["llama"], tmp_path / "model")
    profile = tiny.with_overrides(model=str(tmp_path / "model"), lora_targets=None)
    model = load_model(profile)
    q = model.model.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        q.mul_(torch.linspace(0.1, 10, q.shape[0])[:, None])
    model.save_pretrained(tmp_path / "model")
    adapter = random_adapter(load_model(profile), tmp_path / "adapter")
    models, layers = quantized_merge_report(profile, adapter, tokenizer, TEXTS, TEXTS)
    diff, ppl = models["max |Δlogit| vs base+adapter"], models["held-out perplexity"]
    assert diff["base + adapter"] == 0 and diff["merged in full precision"] <= merge_tolerance(torch.float32)
    assert diff["base (no adapter)"] > 1e-3  # the adapter changes the model...
    assert diff["merged into the 8-bit base (peft)"] > 10 * max(diff["merged in full precision"], 1e-7)  # ...8-bit rounds
    assert ppl.gt(1).all() and ppl["merged in full precision"] == pytest.approx(ppl["base + adapter"], rel=1e-4)
    assert diff["merged into a 4-bit base (peft)"] > diff["merged into the 8-bit base (peft)"]  # 16 levels, not 255
    assert any("8-bit" in w for w in models.attrs["peft_warnings"])  # peft merges with only a warning
    # one row per adapted layer; both figures recomputed by hand for q_proj of layer 0
    peft_model = PeftModel.from_pretrained(load_model(profile), adapter)
    lora = {n.removeprefix("base_model.model."): m for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    assert sorted(layers.layer) == sorted(lora)
    row = layers.set_index("layer").loc["model.layers.0.self_attn.q_proj"]
    weight = lora["model.layers.0.self_attn.q_proj"].get_base_layer().weight.detach()
    delta = lora["model.layers.0.self_attn.q_proj"].get_delta_weight("default").detach()

    def int8(w):  # bitsandbytes' LLM.int8 weights: one absmax per row, 127 levels
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        return torch.round(w / scale) * scale

    step = weight.abs().amax(dim=1, keepdim=True) / 127
    assert row["median |ΔW| / int8 step"] == pytest.approx((delta.abs() / step).median().item(), rel=0.02)
    w8 = int8(weight)
    lost = ((int8(w8 + delta) - w8 - delta).norm() / delta.norm()).item()
    assert row["update lost to re-quantization"] == pytest.approx(lost, rel=0.2)
