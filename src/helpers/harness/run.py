"""One run is one value: `Run(study, arm, seed, config, reward, eval_every, trainer)`.

Notebook 04 and the full study (`make study`, helpers.harness.study) both make a list of `Run`s and hand it
to `run_all` (helpers.harness.schedule). A run's numbers are decided by the run value itself and by the
`Inputs` every run of a plan shares (the prompts, the evaluation's prompts and reviews, the 01 adapter and
the 02 model, by content): its fingerprint is those two, so a re-run skips exactly the runs whose folder is
complete and whose fingerprint is unchanged, and says why it runs the others.

`config` is the trainer's own settings (helpers.harness.trainers: `PPOConfig` for "ppo"); the harness reads
nothing from it but through the trainer's entry (its KL coefficient, its checks).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..artifacts import read_json, require, stage_dir
from ..models import compute_dtype_name
from ..profiles import Profile
from ..provenance import check_count, content_hash
from .arms import Sources
from .trainers import trainer_for

RUN_FILES = ("metrics.csv", "evaluation.csv", "samples.csv", "summary.json", "fingerprint.json")
CHECKSUMS = "files"  # the fingerprint file's key for its run's result files' hashes (resume verifies them)


@dataclass(frozen=True)
class Run:
    """Everything that decides one run's numbers, apart from the inputs all runs share."""

    study: str  # "main", "penalty" (notebook 04), "fixed-beta" (the full study), ...
    arm: str  # a name in helpers.harness.arms.ARMS
    seed: int  # training-prompt order, rollout sampling, LoRA and value-head init, held-out sampling
    config: object  # the trainer's settings (steps and the KL coefficient included); its seed is the run's
    reward: str  # a name in helpers.rewards.REWARDS (or the profile's reward), or "off"
    eval_every: int  # held-out evaluation at step 0, every `eval_every` steps and after the last
    trainer: str = "ppo"  # a name in helpers.harness.trainers.TRAINERS

    def __post_init__(self):
        trainer = trainer_for(self.trainer)
        trainer.check_arm(self.arm)
        check_count("seed", self.seed, minimum=0)
        check_count("eval_every", self.eval_every)
        trainer.check(self.config)
        object.__setattr__(self, "config", replace(self.config, seed=self.seed))

    @property
    def steps(self) -> int:
        return self.config.steps

    @property
    def beta(self) -> float | None:
        """The fixed KL coefficient, or None where an adaptive controller sets it."""
        return trainer_for(self.trainer).beta(self.config)

    @property
    def path(self) -> Path:
        beta = [] if self.beta is None else [f"beta{self.beta:g}"]
        return Path(self.study, self.arm, *beta, f"seed{self.seed}")

    @property
    def label(self) -> str:
        return "/".join(self.path.parts)

    def fingerprint(self) -> dict:
        """The run's settings under its trainer's name: {"ppo": {...}} for PPO, as before trainers existed,
        so committed runs keep their fingerprints."""
        d = {"study": self.study, "arm": self.arm, "seed": self.seed,
             self.trainer: trainer_for(self.trainer).fingerprint(self.config),
             "reward": self.reward, "eval_every": self.eval_every}
        return d if self.trainer == "ppo" else {**d, "trainer": self.trainer}


def no_reward(texts: list[str]) -> torch.Tensor:
    """The reward switched off: the trainer then optimises only the KL penalty."""
    return torch.zeros(len(texts))


def seed_queries(queries: list[list[int]], seed: int) -> list[list[int]]:
    """Seed k's order of the training prompts: the same for every arm (paired), different across seeds."""
    return [queries[i] for i in np.random.default_rng(seed).permutation(len(queries))]


@dataclass
class Inputs:
    """What every run of a plan shares: the models' sources, the prompts and the evaluation protocol."""

    profile: Profile
    sources: Sources
    tokenizer: object
    queries: list[list[int]]  # training prompts; seed k takes them in its own order
    eval_queries: list[list[int]]  # held-out prompts, the same at every evaluation of every run
    rewards: dict[str, Callable]  # every reward a run may name ("off" is always there)
    eval_reward: str  # the evaluation always measures this one, whatever the run trains on
    perplexity_texts: list[str] | None = None
    eval_samples: int = 1  # responses per held-out prompt at each evaluation
    # what identifies the merged model when it is remade from a committed adapter (the study): last-bit float
    # differences of a merge on another machine then do not invalidate committed runs. None: its files' hash
    merged_from: str | None = None
    _common: dict | None = field(default=None, repr=False)

    def reward(self, name: str) -> Callable:
        if name == "off":
            return no_reward
        if name not in self.rewards:
            raise ValueError(f"Unknown reward {name!r} for these inputs; they have: off, {', '.join(self.rewards)}")
        return self.rewards[name]

    def fingerprint(self) -> dict:
        """The inputs by content (computed once: hashing the merged model reads its files)."""
        if self._common is None:
            self._common = {
                "profile": self.profile.name, "quantization": self.sources.quantize,
                "train_prompts": content_hash(self.queries),
                "eval_prompts": content_hash(self.eval_queries, self.perplexity_texts, self.profile.sft.seq_len),
                "eval_samples": self.eval_samples, "eval_reward": self.eval_reward,
                "sft_adapter": content_hash(self.sources.sft_adapter),
                "merged_model": self.merged_from or content_hash(self.sources.merged_dir),
            }
            dtype = compute_dtype_name(self.profile)
            if dtype != "float32":  # absent for fp32, the one dtype before the setting: committed runs keep theirs
                self._common["dtype"] = dtype
        return self._common


def inputs_from_outputs(profile: Profile, out, tokenizer, queries, eval_queries, reward_fn, perplexity_texts=None,
                        reward_name: str | None = None, eval_samples: int = 1) -> Inputs:
    """Inputs from the 01 adapter and the 02 model in the output folder (an error names the notebook to run
    first when one is missing)."""
    sft_adapter = require(stage_dir(out, profile.name, "01_sft") / "adapter", "01_sft", profile.name)
    merged_dir = require(stage_dir(out, profile.name, "02_merge") / "model", "02_merge", profile.name)
    name = reward_name or profile.reward
    return Inputs(profile, Sources(profile, sft_adapter, merged_dir, profile.quantize), tokenizer,
                  queries, eval_queries, {name: reward_fn}, name, perplexity_texts, eval_samples)


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<missing>"), new.get(key, "<missing>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


def run_state(folder: Path, fingerprint: dict) -> str | None:
    """None if the run in `folder` is complete and made with `fingerprint`, else why it must (re-)run."""
    if not folder.exists():
        return "not run yet"
    missing = [f for f in RUN_FILES if not (folder / f).exists()]
    if missing:
        return f"incomplete (missing {', '.join(missing)})"
    recorded = read_json(folder / "fingerprint.json")
    files = recorded.pop(CHECKSUMS, {})  # runs that landed before checksums were recorded have none
    damaged = [name for name, digest in sorted(files.items()) if content_hash(folder / name) != digest]
    if damaged:
        return f"damaged ({', '.join(damaged)} changed since the run landed)"
    changed = _differences(json.loads(json.dumps(recorded)), json.loads(json.dumps(fingerprint)))
    return f"settings changed ({'; '.join(changed)})" if changed else None


def checksums(folder: Path) -> dict:
    """Each result file's content hash, recorded in the run's fingerprint file as it lands."""
    return {CHECKSUMS: {name: content_hash(folder / name) for name in RUN_FILES if name != "fingerprint.json"}}
