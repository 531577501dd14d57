"""Running the tuning study's trials (the protocol and the analysis are helpers.tuning):

    python -m helpers.tune --profile smol --stage screen    # the settings on the selection prompts, seeds 0-2
    python -m helpers.tune --profile smol --stage confirm   # the winner and the setting before, fresh prompts and seeds
    python -m helpers.tune --profile smol --stage report    # the tables, choice, figure and manifest again
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .artifacts import atomic_dir, read_json, require, stage_dir, write_csv, write_json
from .data import load_imdb, perplexity_reviews, ppo_queries
from .evaluation import Evaluator, paired_gain
from .models import load_model, load_tokenizer, new_lora
from .ppo import ValueHead, config_from_profile, train
from .profiles import Profile, get_profile
from .provenance import content_hash
from .reference import DisabledAdapters
from .rewards import load_reward
from .tuning import (
    BASELINE,
    BEFORE,
    CONFIRM_SEEDS,
    SCREENED_OUT,
    SELECT_POOL,
    SELECT_SEEDS,
    SETTINGS,
    analyse,
    trial_dir,
    tuning_dir,
)


@dataclass
class Pool:
    """What every trial shares: the merged SFT model's folder, tokenizer, reward, prompt sets, perplexity texts."""

    profile: Profile
    merged_dir: Path
    sft_adapter: Path
    tokenizer: object
    reward: object
    train_texts: list[str]
    prompts: dict[str, list[list[int]]]  # "select", "confirm"
    perplexity_texts: list[str]

    def fingerprint(self) -> dict:
        return {"sft_adapter": content_hash(self.sft_adapter), "prompts": content_hash(self.prompts),
                "perplexity_texts": content_hash(self.perplexity_texts), "reward": self.profile.reward}


def load_pool(profile: Profile, out=None) -> Pool:
    merged_dir = require(stage_dir(out, profile.name, "02_merge") / "model", "02_merge", profile.name)
    sft_adapter = require(stage_dir(out, profile.name, "01_sft") / "adapter", "01_sft", profile.name)
    data = load_imdb(profile)
    tokenizer = load_tokenizer(merged_dir)
    train_texts = list(data["train"]["text"])
    prompts = {"select": ppo_queries(train_texts[-SELECT_POOL:], tokenizer, n=profile.evaluation.prompts, seed=7),
               # notebook 03's held-out prompts (its seed 0 + 1)
               "confirm": ppo_queries(data["heldout"]["text"], tokenizer, n=profile.evaluation.prompts, seed=1)}
    return Pool(profile, merged_dir, sft_adapter, tokenizer, load_reward(profile), train_texts[:-SELECT_POOL],
                prompts, perplexity_reviews(profile, data))


def run_trial(pool: Pool, setting: str, seed: int, prompt_set: str, steps: int, eval_every: int = 10) -> dict:
    """One setting on one seed: train with held-out evaluations at step 0, every `eval_every` steps and after
    the last; one row per evaluation after step 0 (its paired gain over step 0, drift and CPU-minutes so far)."""
    profile = pool.profile.with_overrides(**BEFORE.get(pool.profile.name, {})).with_overrides(**SETTINGS[setting])
    config = config_from_profile(profile, steps=steps, seed=seed)
    policy = new_lora(load_model(profile, pool.merged_dir), profile, seed)
    torch.manual_seed(seed)
    value_head = ValueHead(policy.get_base_model().config.hidden_size)
    reference = DisabledAdapters(policy)  # the SFT model
    queries = ppo_queries(pool.train_texts, pool.tokenizer, n=steps * config.batch_size, seed=seed)
    evaluator = Evaluator(pool.tokenizer, pool.prompts[prompt_set], pool.reward, config.response_len,
                          every=eval_every, seed=seed, samples_per_prompt=profile.evaluation.samples,
                          perplexity_texts=pool.perplexity_texts, perplexity_seq_len=profile.sft.seq_len)
    metrics = train(policy, value_head, reference, pool.tokenizer, queries, pool.reward, config, evaluator, progress=False)
    samples, ev = evaluator.samples(), evaluator.table().set_index("step")
    p_pos = samples.assign(p=1 / (1 + np.exp(-samples.reward))).groupby("step").p.mean()
    rows = []
    for step in ev.index[1:]:
        gain = paired_gain(samples, before=0, after=step)
        train_s = float(metrics.step_time_s.iloc[:step].sum())
        rows.append({"setting": setting, "seed": seed, "prompts": prompt_set, "step": int(step),
                     "episodes": int(step) * config.batch_size,
                     "updates": int(step) * math.ceil(config.batch_size / config.mini_batch_size) * config.ppo_epochs,
                     "gain": float(gain["gain"]), "gain_se": float(gain["se"]),
                     "p_positive_before": float(p_pos[0]), "p_positive_after": float(p_pos[step]),
                     "kl_sft": float(ev.kl_ref_exact[step]), "perplexity_before": float(ev.perplexity[0]),
                     "perplexity_after": float(ev.perplexity[step]), "train_s": train_s,
                     "cpu_min": train_s * torch.get_num_threads() / 60, "threads": torch.get_num_threads(),
                     "reward_sd": float(samples[samples.step == 0].reward.std()), **config_columns(config)})
    return {"rows": rows, "samples": samples, "metrics": metrics}


def config_columns(config) -> dict:
    return {"lr": config.learning_rate, "lora_b_lr_ratio": config.lora_b_lr_ratio,
            "value_lr_ratio": config.value_lr_ratio, "beta0": config.init_kl_coef,
            "batch": config.batch_size, "minibatch": config.mini_batch_size, "epochs": config.ppo_epochs,
            "response_len": f"{config.response_len[0]}-{config.response_len[1]}"}


def sweep(pool: Pool, folder: Path, settings, seeds, prompt_set: str, steps: int) -> None:
    """Every (setting, seed) not yet in `folder`, each landing in one atomic step."""
    for setting in settings:
        if setting not in SETTINGS:
            raise ValueError(f"Unknown setting {setting!r}; valid: {', '.join(SETTINGS)}")
    for seed in seeds:  # seed by seed: a sweep stopped part-way has complete paired seeds
        for setting in settings:
            target = trial_dir(folder, prompt_set, setting, seed)
            if (target / "rows.json").exists() and read_json(target / "rows.json")["steps"] == steps:
                continue
            start = time.perf_counter()
            result = run_trial(pool, setting, seed, prompt_set, steps)
            with atomic_dir(target) as tmp:
                write_csv(tmp / "samples.csv", result["samples"])
                write_csv(tmp / "metrics.csv", result["metrics"])
                write_json(tmp / "rows.json", {"steps": steps, "rows": result["rows"], "fingerprint": pool.fingerprint()})
            r = result["rows"][-1]
            print(f"{prompt_set} {setting} seed {seed}: gain {r['gain']:+.3f} (se {r['gain_se']:.3f}), "
                  f"P(positive) {r['p_positive_before']:.1%} -> {r['p_positive_after']:.1%}, KL {r['kl_sft']:.3f}, "
                  f"perplexity {r['perplexity_before']:.1f} -> {r['perplexity_after']:.1f}, "
                  f"{r['cpu_min']:.2f} CPU-min ({time.perf_counter() - start:.0f} s)", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default=None)
    parser.add_argument("--out", default=None, help="the notebooks' output folder (01 adapter, 02 model)")
    parser.add_argument("--folder", default=None, help="default: docs/tuning/<profile>/")
    parser.add_argument("--stage", choices=("screen", "confirm", "report"), default="screen")
    parser.add_argument("--settings", default=None, help="comma-separated names in SETTINGS (default: all; "
                        "confirm: the winner and the baseline)")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    folder = tuning_dir(profile.name, args.folder)
    command = "python -m helpers.tune " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.stage != "report":
        pool = load_pool(profile, args.out)
        if args.stage == "screen":
            settings = args.settings.split(",") if args.settings else [s for s in SETTINGS if s not in SCREENED_OUT]
            sweep(pool, folder, settings, SELECT_SEEDS, "select", args.steps)
        else:
            winner = read_json(folder / "choice.json")["winner"]
            settings = args.settings.split(",") if args.settings else [BASELINE, winner]
            sweep(pool, folder, settings, CONFIRM_SEEDS, "confirm", args.steps)
    print(json.dumps(analyse(folder, command), indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
