"""Helpers the lora-rlhf-tutorial notebooks call: profiles, data, models, SFT, merge, rewards,
reference models, PPO, the reference-model comparison and its plots."""

import warnings

from .profiles import PROFILES, Profile, get_profile


def quiet_libraries() -> None:
    """Hide the loading bars and deprecation notices of transformers/datasets: they bury what a notebook shows."""
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.utils.data")


quiet_libraries()

__all__ = ["PROFILES", "Profile", "get_profile", "quiet_libraries"]
