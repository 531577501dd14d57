"""Shared fixtures. The papermill chain 01 -> 04 on the `tiny` profile runs once per session into a
temporary output dir; artifact and comparison tests read what it wrote."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

import helpers  # noqa: F401  (quiets the libraries)
from helpers import get_profile
from helpers.models import build_tiny_model, load_model, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ["01_sft_lora", "02_merge_adapter", "03_ppo_lora", "04_reference_model_comparison", "05_study"]


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


@pytest.fixture
def tiny_base(tiny):
    torch.manual_seed(0)
    return load_model(tiny)


def pytest_configure(config):
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
