"""Notebook 04: every reference-model choice side by side, in the tutorial's budget.

The plan is a frozen value that yields one `Run` per (study, arm, seed) (helpers.harness.run); every arm runs with
the same prompts, reward, steps and hyperparameters, over seeds that are paired across arms. Two studies:
"main" (the reward on, the profile's adaptive KL coefficient) and "penalty" (the reward off, for the pitfall
and its control: what the KL penalty does on its own). The arms are in helpers.harness.arms, the verdicts
in helpers.harness.verdicts; the full study with fixed KL coefficients, more seeds and more steps is
helpers.harness.study.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..artifacts import stage_dir, write_csv
from ..ppo import PPOConfig, config_from_profile
from ..profiles import Profile
from ..provenance import check_count
from .arms import ARMS, check_arms
from .results import Results
from .run import Inputs, Run
from .schedule import run_all

PENALTY_ARMS = ("adapter+disabled", "adapter+ref-adapter")


@dataclass(frozen=True)
class Plan:
    arms: tuple[str, ...]
    seeds: tuple[int, ...]  # every claim arm runs each of them
    side_seeds: tuple[int, ...]  # the other arms (copies, stacked): a prefix of `seeds`, so still paired
    steps: int
    side_steps: int
    eval_every: int
    penalty_steps: int  # the penalty alone (reward off) for PENALTY_ARMS; 0 skips it
    penalty_eval_every: int
    main: PPOConfig  # the reward-on runs' PPO settings (steps set per run)
    penalty: PPOConfig  # the penalty alone's
    reward: str  # the reward the main study trains on (the evaluation always measures it)

    def __post_init__(self):
        check_arms(self.arms)
        for name in ("steps", "side_steps", "eval_every", "penalty_eval_every"):
            check_count(name, getattr(self, name))
        check_count("penalty_steps", self.penalty_steps, minimum=0)
        if not self.seeds:
            raise ValueError("a plan needs at least one seed")
        for seed in self.seeds:
            check_count("seed", seed, minimum=0)
        if tuple(self.side_seeds) != tuple(self.seeds[: len(self.side_seeds)]):
            raise ValueError(f"side_seeds {self.side_seeds} must be a prefix of seeds {self.seeds} (paired)")

    def runs(self) -> list[Run]:
        """Every run, in the order they are run."""
        runs = [Run("main", arm, seed, replace(self.main, steps=self.steps if ARMS[arm].claim else self.side_steps),
                    self.reward, self.eval_every)
                for arm in self.arms for seed in (self.seeds if ARMS[arm].claim else self.side_seeds)]
        if self.penalty_steps:
            runs += [Run("penalty", arm, seed, replace(self.penalty, steps=self.penalty_steps), "off",
                         self.penalty_eval_every)
                     for arm in PENALTY_ARMS if arm in self.arms for seed in self.seeds]
        return runs


def plan_from_profile(profile: Profile, arms: list[str] | None = None, seed: int = 0, **ppo_overrides) -> Plan:
    """The profile's comparison (its `comparison` section: notebook 04's COMPARISON_SEEDS, COMPARISON_STEPS and
    COMPARISON_PENALTY_STEPS set it through helpers.profiles.configure): its seeds start at `seed`."""
    c = profile.comparison
    n, steps, penalty_steps = c.seeds, c.steps, c.penalty_steps
    all_seeds = tuple(check_count("SEED", seed, minimum=0) + i for i in range(n))
    # the reward-on runs take 04's own batch where the profile gives one (cheaper steps, as many optimizer
    # updates); the penalty alone keeps 03's batch: with no reward its only signal is the KL penalty, and the
    # critic's noise drowns it in small minibatches (smol, 3 seeds: 8 rollouts in minibatches of 4 left its
    # pull inconclusive)
    main = config_from_profile(profile, batch_size=c.batch_size, mini_batch_size=c.mini_batch_size, **ppo_overrides)
    return Plan(arms=tuple(check_arms(list(ARMS) if arms is None else arms)), seeds=all_seeds,
                side_seeds=all_seeds[: min(n, c.side_seeds)], steps=steps, side_steps=min(steps, c.side_steps or steps),
                eval_every=c.eval_every, penalty_steps=penalty_steps, penalty_eval_every=c.penalty_eval_every, main=main,
                penalty=penalty_config(profile, **ppo_overrides), reward=profile.reward)


def penalty_config(profile: Profile, **ppo_overrides) -> PPOConfig:
    """The penalty alone's PPO settings: 03's, at the profile's fixed β where it sets one (penalty_kl_coef)."""
    config = config_from_profile(profile, **ppo_overrides)
    if profile.comparison.penalty_kl_coef is None or "init_kl_coef" in ppo_overrides:
        return config
    return replace(config, init_kl_coef=profile.comparison.penalty_kl_coef, adaptive_kl=False)


def comparison_configs(plan: Plan) -> dict[str, PPOConfig]:
    """The PPO settings of each study (the same for every arm), with the plan's steps."""
    penalty = {"penalty": replace(plan.penalty, steps=plan.penalty_steps)} if plan.penalty_steps else {}  # 0: skipped
    return {"main": replace(plan.main, steps=plan.steps), **penalty}


def run_comparison(runs: list[Run], inputs: Inputs, out: str | Path | None = None, force: bool = False,
                   progress: bool = False, workers: int | str | None = None) -> Results:
    """Every run into `04_comparison/`: `runs/<study>/<arm>/seed<k>/`, the combined tables, and summary.csv.
    `workers` > 1 runs them on that many Ray workers (helpers.harness.workers)."""
    folder = stage_dir(out, inputs.profile.name, "04_comparison")
    results = run_all(runs, inputs, folder, force=force, progress=progress, workers=workers)
    write_csv(folder / "summary.csv", results.summary())
    return results
