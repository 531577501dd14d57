"""Shared fixtures. The papermill chain 01 -> 04 on the `tiny` profile runs once per session into a
temporary output dir; artifact and comparison tests read what it wrote."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import helpers  # noqa: F401  (quiets the libraries)
from helpers import get_profile
from helpers.checkpoints import build_tiny_model
from helpers.models import load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# runs go in process unless a test asks for Ray workers itself (tests/test_workers.py): the default, "auto",
# would start Ray for every small study here (helpers.harness.workers.resolve_workers)
os.environ.setdefault("TUTORIAL_WORKERS", "1")
NOTEBOOKS = ["01_sft_lora", "02_merge_adapter", "03_ppo_lora", "04_reference_model_comparison", "05_study",
             "06_grpo_reference"]


@pytest.fixture(scope="session")
def tiny():
    return get_profile("tiny")


@pytest.fixture(scope="session")
def tokenizer(tiny):
    return load_tokenizer(tiny)


@pytest.fixture(scope="session")
def tiny_architectures(tmp_path_factory):
    """Random-init tiny models of the three architectures the profiles use, saved locally the way a Hub
    model is (config + safetensors + tokenizer), so Hub-profile loading code runs offline."""
    folder = tmp_path_factory.mktemp("tiny-models")
    return {arch: build_tiny_model(arch, folder / arch, seed=1) for arch in ("llama", "gpt_neox", "gpt_neo")}


@pytest.fixture(scope="session")
def tiny_outputs(tmp_path_factory):
    """Run notebooks 01 -> 05 on `tiny` with papermill (05 renders the committed smol study); return the output dir."""
    from helpers.run_notebooks import run

    out = tmp_path_factory.mktemp("outputs")
    stale = out / "tiny" / "notebooks" / f"{NOTEBOOKS[0]}.failed.ipynb"  # an earlier failure's report:
    stale.parent.mkdir(parents=True)                                     # the successful run removes it
    stale.write_text("{}")
    run(NOTEBOOKS, "tiny", out)
    return out


def random_sft(tiny, tokenizer, out) -> tuple[Path, Path]:
    """Notebooks 01-02 on `tiny` in seconds: a random "SFT adapter" (B != 0, so SFT != base) saved where 01
    saves it, and its merge where 02 saves it; returns (adapter folder, merged model folder)."""
    from peft import get_peft_model

    from helpers.artifacts import stage_dir
    from helpers.data import load_imdb
    from helpers.merge import merge_adapter, save_merged
    from helpers.models import lora_config
    from helpers.sft import save_adapter

    torch.manual_seed(0)
    base = load_model(tiny)
    config = lora_config(tiny, base)
    config.init_lora_weights = False
    adapter = save_adapter(get_peft_model(base, config), stage_dir(out, "tiny", "01_sft") / "adapter")
    merged, verification = merge_adapter(tiny, adapter, tokenizer, load_imdb(tiny)["heldout"]["text"][:4])
    return adapter, save_merged(merged, tokenizer, stage_dir(out, "tiny", "02_merge") / "model", verification)


def smol_with_lora():
    """SmolLM2 at its real widths (30 layers, tied head) in fp32 on the CPU, with a seeded LoRA whose B != 0."""
    from helpers.models import new_lora

    smol = get_profile("smol")
    torch.manual_seed(0)
    policy = new_lora(load_model(smol, dtype=torch.float32, on="cpu"), smol)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return smol, policy


@pytest.fixture
def tiny_base(tiny):
    torch.manual_seed(0)
    return load_model(tiny)


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Tests that read the notebooks' outputs on `tiny` (the papermill chain 01 -> 05, minutes) are marked
    `notebooks`: `make test-fast` leaves them out with the `slow` ones."""
    for item in items:
        if "tiny_outputs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.notebooks)


@pytest.fixture(scope="session", autouse=True)
def committed_results_stay_byte_identical():
    """No test, fault injection included, changes a committed result: the study and tuning folders hash the
    same after the session as before it (dotfiles such as a held lock left out)."""
    from helpers.provenance import content_hash

    folders = [ROOT / "docs" / "study", ROOT / "docs" / "tuning", ROOT / "docs" / "tutorial"]
    before = content_hash(*folders)
    yield
    assert content_hash(*folders) == before, "a test changed a committed result under docs/"
