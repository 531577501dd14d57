"""The sections of a profile (helpers.profiles), each a frozen dataclass with its defaults in one place: SFT (01),
the LoRA adapters (01 and the RL adapter of 03-05), PPO (the algorithm's own config, used as is by 03-05),
03's held-out evaluation, 04's comparison and the full study (05, `make study`).

A field is named from outside (notebook parameters, environment variables, `make` variables) by its flat name,
`<section>_<field>` (`sft_steps`, `ppo_learning_rate`, `study_eval_points`), or the field itself where it already
starts with the section (`ppo_epochs`); helpers.profiles.configure applies them, with one precedence.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass

from .provenance import check_count


def flat_name(section: str, field: str) -> str:
    return field if field.startswith(section + "_") else f"{section}_{field}"


def check_numbers(settings, section: str | None, zero_allowed=(), minimum: dict | None = None):
    """Every number of a section (None: the profile's top level) in its valid range, with the flat name a user
    types in the message: an integer field takes an integer >= 1 (>= 0 where `zero_allowed`, or `minimum`), a
    float field a number > 0 (>= 0 where `zero_allowed`)."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        kind = str(f.type)
        if value is None or "bool" in kind or "str" in kind or "tuple" in kind or is_dataclass(value):
            continue
        name = flat_name(section, f.name) if section else f.name
        if "int" in kind and "float" not in kind:
            check_count(name, value, (minimum or {}).get(f.name, 0 if f.name in zero_allowed else 1))
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                value >= 0 if f.name in zero_allowed else value > 0):
            raise ValueError(f"{name} must be a number {'>=' if f.name in zero_allowed else '>'} 0, not {value!r}")


@dataclass(frozen=True)
class SFTSettings:
    """Notebook 01: supervised fine-tuning of a LoRA adapter on reviews (TRL's SFTTrainer)."""
    steps: int = 100
    batch_size: int = 8
    seq_len: int = 128  # tokens per review in SFT, and in every held-out perplexity
    lr: float = 2e-4

    def __post_init__(self):
        check_numbers(self, "sft")


@dataclass(frozen=True)
class LoraSettings:
    """Every LoRA adapter: the SFT adapter and the new one that RL trains."""
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05  # SFT's; the RL adapter has none (the policy runs in eval mode)
    targets: str | None = None  # None: per architecture (helpers.models.LORA_TARGETS)

    def __post_init__(self):
        check_numbers(self, "lora", zero_allowed=("dropout",))


@dataclass(frozen=True)
class PPOConfig:
    """The PPO step's settings (helpers.ppo.train). Defaults are the original TRL sentiment example's (gpt2 /
    gpt-neox-20b on IMDB). A run's fingerprint holds these fields by name (helpers.harness.run)."""
    steps: int = 20
    batch_size: int = 16  # rollouts per step
    mini_batch_size: int = 4
    ppo_epochs: int = 4
    learning_rate: float = 1.41e-5
    response_len: tuple[int, int] = (4, 16)  # inclusive; drawn per rollout (LengthSampler(4, 16))
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2  # policy ratio clip
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    init_kl_coef: float = 0.2
    adaptive_kl: bool = True  # False: kl_coef stays init_kl_coef
    kl_target: float = 6.0
    kl_horizon: int = 10000
    max_grad_norm: float | None = None  # the original clipped nothing
    # An addition to TRL 0.11 (1.0 = TRL's one learning rate): the LoRA B matrices learn this many times
    # faster than every other trained weight, as LoRA+ (Hayou et al. 2024) does. A new LoRA starts at B = 0,
    # so its A gets no gradient until B has moved; a larger step for B shortens that cold start
    # (docs/tuning/<profile>/ measures what it buys). It applies to whichever adapter trains, in every arm.
    lora_b_lr_ratio: float = 1.0
    # An addition too (1.0 = TRL's): the value head learns this many times faster. It starts as noise while
    # the reward of query + response varies mostly with the query; until the critic has learned that, the
    # advantages are mostly the query's sentiment, not the response's merit. Adam scales each parameter's step
    # by its own gradient, so vf_coef cannot speed up the head (only its learning rate can).
    value_lr_ratio: float = 1.0
    seed: int = 0

    def __post_init__(self):  # checked where it enters: 03's PPO_STEPS = 0 or SEED = -1 fail here, saying what is valid
        for name in ("steps", "batch_size", "mini_batch_size", "ppo_epochs"):
            check_count(name, getattr(self, name))
        check_count("seed", self.seed, minimum=0)
        if self.mini_batch_size > self.batch_size:
            raise ValueError(f"mini_batch_size ({self.mini_batch_size}) must be at most batch_size ({self.batch_size})")
        for name in ("learning_rate", "lora_b_lr_ratio", "value_lr_ratio"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, not {getattr(self, name)!r}")
        if not self.init_kl_coef >= 0:
            raise ValueError(f"the KL coefficient β must be >= 0, not {self.init_kl_coef!r} (init_kl_coef)")
        if not 1 <= self.response_len[0] <= self.response_len[1]:
            raise ValueError(f"response_len must be (low, high) with 1 <= low <= high, not {self.response_len}")

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per PPO step: every minibatch of the batch, `ppo_epochs` times."""
        return -(-self.batch_size // self.mini_batch_size) * self.ppo_epochs


def evaluation_steps(steps: int, every: int) -> list[int]:
    """When a held-out evaluation runs (03, 04, the study): before the first update, after every `every`
    updates, and after the last one."""
    return sorted({0, steps, *range(every, steps + 1, every)})


@dataclass(frozen=True)
class EvalSettings:
    """Notebook 03's held-out evaluation during PPO (helpers.evaluation)."""
    prompts: int = 32  # fixed held-out prompts
    every: int = 5  # evaluate before the first update, every `every` updates and after the last
    samples: int = 1  # responses per prompt (their mean is the prompt's reward)

    def __post_init__(self):
        check_numbers(self, "evaluation")


@dataclass(frozen=True)
class ComparisonSettings:
    """Notebook 04: claim arms run `seeds` paired seeds of `steps` steps; the side arms (the copies, whose claim is
    exact equality, and stacked) run the first `side_seeds` seeds for `side_steps` steps (None: all); the penalty
    alone runs `penalty_steps` (0: skipped)."""
    steps: int = 12
    seeds: int = 3
    side_seeds: int = 1
    side_steps: int | None = None
    batch_size: int | None = None  # rollouts per step of the reward-on runs (None: the PPO section's, as in 03)
    mini_batch_size: int | None = None  # None: the PPO section's
    eval_every: int = 4  # held-out evaluation at step 0, every k steps and after the last
    eval_prompts: int = 32
    penalty_steps: int = 6
    penalty_eval_every: int = 1  # the penalty alone: held-out evaluation every k steps (its curve)
    # the penalty alone at this fixed β (None: 03's adaptive controller from ppo_init_kl_coef). With no reward the
    # penalty is the only signal, so β sets how hard the reference pulls
    penalty_kl_coef: float | None = None

    def __post_init__(self):
        check_numbers(self, "comparison", zero_allowed=("penalty_steps", "side_seeds", "side_steps"))


@dataclass(frozen=True)
class StudySettings:
    """The full study (`make study`, helpers.harness.study, notebook 05): fixed KL coefficients β, chosen so that
    the penalty on the pitfall's step-0 drift, β·KL(SFT‖base) per response, is `beta_ratios` times the reward's
    spread across responses; `seeds` paired seeds; steps from the power calculation (None) or fixed;
    `eval_points` held-out evaluations per run (step 0 included)."""
    beta_ratios: tuple[float, ...] = (0.1, 1.0, 10.0)
    seeds: int = 6
    side_seeds: int = 2  # stacked: an equality claim needs few seeds
    steps: int | None = None
    eval_points: int = 4
    eval_prompts: int = 32
    eval_samples: int = 2
    target_z: float = 3.0  # the power calculation: the recipe's gain at the middle β this many se from 0
    # the second stage: seeds of the recipe alone at the middle β for z > target_z with this probability, from
    # the first stage's measured spread (None: no second stage); never more than max_seeds in all
    topup_power: float | None = 0.8
    max_seeds: int = 30
    # a study folder holds one setting: a profile whose PPO settings change gets a new version, committed in
    # docs/study/<profile>/<version>/ beside the old one ("v1": docs/study/<profile>/ itself; helpers.harness.study)
    version: str = "v1"

    def __post_init__(self):
        check_numbers(self, "study", zero_allowed=("side_seeds",), minimum={"eval_points": 2})

    def eval_every(self, steps: int) -> int:
        """Evaluation spacing for `eval_points` evaluations over `steps` steps (step 0 included)."""
        return max(1, -(-steps // (self.eval_points - 1)))


@dataclass(frozen=True)
class GRPOSettings:
    """Notebook 06 and the GRPO study: one run of TRL's GRPOTrainer (helpers.grpo makes its GRPOConfig). A run's
    fingerprint holds these fields by name."""

    steps: int = 8
    prompts_per_step: int = 2  # distinct prompts per step; each is answered `group` times
    group: int = 4  # completions per prompt (TRL's num_generations): the advantage is relative to the group
    response_len: tuple[int, int] = (16, 16)  # TRL samples up to max_completion_length = response_len[1]
    learning_rate: float = 5e-4
    beta: float = 0.04  # TRL's KL coefficient (k3 estimator in the loss); 0: no reference at all
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self):
        # a group of 1 has an advantage of 0 (relative to itself): nothing would train
        check_numbers(self, "grpo", zero_allowed=("beta", "seed"), minimum={"group": 2})
        if not 1 <= self.response_len[0] <= self.response_len[1]:
            raise ValueError(f"response_len must be (low, high) with 1 <= low <= high, not {self.response_len}")


SECTIONS = {"sft": SFTSettings, "lora": LoraSettings, "ppo": PPOConfig, "evaluation": EvalSettings,
            "comparison": ComparisonSettings, "study": StudySettings, "grpo": GRPOSettings}
