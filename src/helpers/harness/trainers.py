"""The trainers the harness can run, one registry entry each: PPO (helpers.ppo) and GRPO (helpers.grpo, TRL's).

The harness knows a trainer only through its entry: `fit` trains an arm's policy against the arm's
reference and returns its per-step table; `beta` says which fixed KL coefficient a config runs at (None
under an adaptive controller: the run's folder then has no beta<β> level); `check` refuses a config that
cannot run; `fingerprint` is the config as the run's fingerprint records it. A trainer that builds its arms
its own way (GRPO: TRL decides the reference from what it is handed) names its arm registry and builder; the
others use helpers.harness.arms. Adding a trainer is one module with its training loop and its config
dataclass (with `steps`, `seed` and `response_len`), plus one entry in `TRAINERS`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping

import pandas as pd
import torch

from ..grpo import GRPO_ARMS, Evaluations, grpo_metrics, grpo_trainer
from ..ppo import LR_RATIOS, PPOConfig, ValueHead, train, trainable_parameters
from ..settings import GRPOSettings
from .arms import ARMS, Sources, build_from


@dataclass
class Fitted:
    metrics: pd.DataFrame  # one row per training step (the trainer's own columns; `step` and `step_time_s` at least)
    trained: list  # the parameters it trained (their count and hash go into the run's summary)
    holds: list  # modules the trainer added to the arm (a value head), counted in the arm's memory


@dataclass(frozen=True)
class Trainer:
    """What the harness needs of a trainer. `fit(arm, tokenizer, queries, reward_fn, config, evaluator,
    progress) -> Fitted`, where `arm` has `.policy` and `.reference` (helpers.harness.arms.ArmModels)."""

    config: type
    fit: Callable[..., Fitted]
    beta: Callable[[object], float | None]
    check: Callable[[object], None]
    fingerprint: Callable[[object], dict]
    arms: Mapping = field(default_factory=lambda: ARMS)  # the arms its runs may name
    build: Callable[[str, Sources, int], object] = build_from  # (arm, sources, seed) -> what `fit` takes

    def check_arm(self, name: str) -> None:
        if name not in self.arms:
            raise ValueError(f"Unknown arm {name!r} for {self.config.__name__}'s trainer; valid arms: "
                             f"{', '.join(self.arms)}")


# --- PPO (helpers.ppo) ---------------------------------------------------------------------------------------


@dataclass
class PPOArm:
    """An arm (helpers.harness.arms.ArmModels) with PPO's value head: what `helpers.ppo.train` takes."""

    policy: object
    value_head: ValueHead
    reference: object


def ppo_arm(arm, seed: int) -> PPOArm:
    """The arm with a value head on its policy's last hidden state, initialised from `seed` (whatever ran before
    in this process)."""
    torch.manual_seed(seed)
    value_head = ValueHead(arm.policy.get_base_model().config.hidden_size).to(arm.policy.device)
    return PPOArm(arm.policy, value_head, arm.reference)


def fit_ppo(arm, tokenizer, queries, reward_fn, config: PPOConfig, evaluator, progress: bool = False) -> Fitted:
    a = ppo_arm(arm, config.seed)
    metrics = train(a.policy, a.value_head, a.reference, tokenizer, queries, reward_fn, config,
                    evaluator=evaluator, progress=progress)
    return Fitted(metrics, trainable_parameters(a.policy, a.value_head), [a.value_head])


def check_ppo(config: PPOConfig) -> None:
    if not isinstance(config, PPOConfig):
        raise TypeError(f"a PPO run needs a PPOConfig, not {type(config).__name__}")
    config.__post_init__()  # its own checks (a config changed in place since it was made is checked again)


def ppo_fingerprint(config: PPOConfig) -> dict:
    d = asdict(config)
    for ratio in LR_RATIOS:  # absent at TRL's one learning rate, as before these settings existed: runs
        if d[ratio] == 1:  # made before them keep their fingerprints
            del d[ratio]
    return d


# --- GRPO (helpers.grpo: TRL's GRPOTrainer) ----------------------------------------------------------------


@dataclass
class GRPOSources:
    """A GRPO arm before TRL has seen it: TRL's trainer builds the policy and picks the reference (in `fit`)."""

    name: str
    sources: Sources


def fit_grpo(arm: GRPOSources, tokenizer, queries, reward_fn, config: GRPOSettings, evaluator,
             progress: bool = False) -> Fitted:
    src = arm.sources
    trainer = grpo_trainer(arm.name, src.profile, src.sft_adapter, src.merged_dir, tokenizer, queries, reward_fn,
                           config)
    trainer.add_callback(Evaluations(evaluator, trainer.model, config.steps))
    if not progress:  # `make tutorial`'s terminal bar (helpers/__init__.py): from a Ray worker it lands in the notebook
        for callback in [c for c in trainer.callback_handler.callbacks if type(c).__name__ == "TerminalProgress"]:
            trainer.remove_callback(callback)
    trainer.train()
    trained = [p for p in trainer.model.parameters() if p.requires_grad]
    return Fitted(grpo_metrics(trainer), trained, [trainer.model])


def check_grpo(config: GRPOSettings) -> None:
    if not isinstance(config, GRPOSettings):
        raise TypeError(f"a GRPO run needs a GRPOSettings, not {type(config).__name__}")
    config.__post_init__()


TRAINERS: dict[str, Trainer] = {
    "ppo": Trainer(PPOConfig, fit_ppo, beta=lambda c: None if c.adaptive_kl else c.init_kl_coef, check=check_ppo,
                   fingerprint=ppo_fingerprint),
    "grpo": Trainer(GRPOSettings, fit_grpo, beta=lambda c: c.beta, check=check_grpo, fingerprint=asdict,
                    arms=GRPO_ARMS, build=lambda name, sources, seed: GRPOSources(name, sources)),
}


def trainer_for(name: str) -> Trainer:
    if name not in TRAINERS:
        raise ValueError(f"Unknown trainer {name!r}; valid trainers: {', '.join(TRAINERS)}")
    return TRAINERS[name]
