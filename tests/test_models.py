import pytest
import torch

from helpers.checkpoints import convert_gguf, gguf_path
from helpers.models import is_quantized, load_model, load_tokenizer, lora_target_modules, model_bytes, perplexity


def test_lora_targets_per_architecture(tiny_architectures, tiny):
    expected = {"llama": ["q_proj", "v_proj"], "gpt_neox": ["query_key_value"], "gpt_neo": ["q_proj", "v_proj"]}
    for arch, path in tiny_architectures.items():
        model = load_model(tiny, path)
        assert lora_target_modules(model) == expected[arch]
        names = {n.split(".")[-1] for n, _ in model.named_modules()}
        assert set(expected[arch]) <= names  # the targets exist in the real module tree


def test_unknown_architecture_names_the_known_ones():
    class Config:
        model_type = "mamba"

    with pytest.raises(ValueError, match="llama, gpt_neox, gpt_neo"):
        lora_target_modules(Config())


def test_hub_profile_loading_code_on_a_locally_saved_model(tiny_architectures):
    """gpt-neo-125m's loading path (tokenizer without a pad token, safetensors only), offline."""
    from helpers import get_profile

    profile = get_profile("gpt-neo-125m").with_overrides(model=str(tiny_architectures["gpt_neo"]))
    tokenizer = load_tokenizer(profile)
    model = load_model(profile)
    assert model.config.model_type == "gpt_neo"
    assert tokenizer.pad_token is not None and tokenizer.padding_side == "left"
    assert model.generation_config.pad_token_id is not None


def test_eight_bit_loading_for_the_20b_profile(tiny_architectures):
    from helpers import get_profile

    profile = get_profile("smol").with_overrides(model=str(tiny_architectures["gpt_neox"]))
    full = load_model(profile)
    q8 = load_model(profile, quantize="8bit")
    q4 = load_model(profile, quantize="4bit")
    assert is_quantized(q8) and is_quantized(q4) and not is_quantized(full)
    assert model_bytes(q8) < model_bytes(full) and model_bytes(q4) < model_bytes(q8)
    with pytest.raises(ValueError, match="'8bit' or '4bit'"):
        load_model(profile, quantize="3bit")


def test_perplexity_ignores_padding(tiny, tiny_base, tokenizer):
    texts = ["A short review.", "A much longer review that goes on and on about the film and its actors."]
    together = perplexity(tiny_base, tokenizer, texts, seq_len=64, batch_size=2)
    one_by_one = perplexity(tiny_base, tokenizer, texts, seq_len=64, batch_size=1)
    assert together == pytest.approx(one_by_one, rel=1e-4)


@pytest.mark.slow
def test_gguf_conversion_round_trip(tmp_path):
    """The converted safetensors checkpoint gives the same logits as transformers' GGUF loader."""
    from transformers import AutoModelForCausalLM

    path = convert_gguf(gguf_path(), tmp_path / "smol")
    files = {f.name for f in path.iterdir()}
    assert "model.safetensors" in files and "config.json" in files and "tokenizer.json" in files
    assert not any(f.endswith(".bin") for f in files)
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written beside it
    tokenizer = load_tokenizer(path)
    batch = tokenizer(["This movie was a delight from start to finish."], return_tensors="pt")
    converted = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(str(gguf_path().parent), gguf_file=gguf_path().name,
                                                    dtype=torch.float32)
    assert "quantization_config" not in converted.config.to_dict()
    with torch.no_grad():
        diff = (converted(**batch).logits - original(**batch).logits).abs().max().item()
    assert diff < 1e-5
