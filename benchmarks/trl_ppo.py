"""This package's PPO step against TRL 1.12's PPOTrainer (its last PPO), at the same layout, in one run.

TRL removed PPOTrainer in 1.13, so TRL 1.12 lives in a venv of its own that this script creates
(`.venv-trl112`: torch, transformers and peft at this project's pins, trl==1.12.0). Both sides, on smol's merged
model (notebook 02), fp32 on the CPU:
- the layout: 8 rollouts per step of 16 sampled tokens each (temperature 1, top_k 0, top_p 1, no early stop on
  TRL's side; ours cut at 16 tokens or an end-of-sequence), 4 PPO epochs x minibatches of 4, one Adam step per
  minibatch; a new LoRA (r 16, alpha 32, q_proj and v_proj, no dropout); the reference = the policy with
  adapters disabled on both sides;
- TRL at its leanest: the value model's backbone frozen (only its score head trains), a reward model that is a
  sequence classifier on the same backbone (TRL needs a model: its score is random here, which costs the same);
- ours: the package's PPO (the fast path, or TUTORIAL_REFERENCE_PATH=1) and its TF-IDF reward model.
Each round runs each side in a fresh process, alternating which goes first; a side's step time is the median of
its steps after the first; memory is the whole process's peak resident set (ru_maxrss), read at its end.

    .venv/bin/python benchmarks/trl_ppo.py [--rounds 2 --steps 4] [--json PATH]

Needs the merged model of notebook 02 (`make tutorial`) and, once, the package index for the venv. Run nothing
else beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = ROOT / ".venv-trl112"
PINS = ["trl==1.12.0", "transformers==5.24.0", "peft==0.21.2", "accelerate==1.15.0", "datasets==5.2.0"]
BATCH, MINI_BATCH, EPOCHS, RESPONSE = 8, 4, 4, 16


def ensure_venv() -> Path:
    python = VENV / "bin" / "python"
    if not (VENV / ".installed").exists():
        print(f"Creating {VENV} with {' '.join(PINS)} (once, a few minutes)...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        torch_spec = os.environ.get("TORCH_SPEC", "torch==2.13.0")
        subprocess.run(pip + [torch_spec], check=True)  # first and alone: the CPU wheel (see the Makefile)
        subprocess.run(pip + PINS, check=True)
        (VENV / ".installed").touch()
    return python


def ours_child(steps: int) -> dict:
    """The package's PPO, set up as notebook 03 does (benchmarks/ppo_step.py's `setup`), TRL's layout."""
    sys.path.insert(0, str(Path(__file__).parent))
    from ppo_step import setup

    from helpers.ppo import train

    run = setup("smol", "float32", steps, batch_size=BATCH, mini_batch_size=MINI_BATCH, ppo_epochs=EPOCHS,
                response_len=(RESPONSE, RESPONSE))
    metrics = train(run.policy, run.value_head, run.reference, run.tokenizer, run.queries, run.reward, run.config,
                    progress=False)
    return {"step_s": metrics.step_time_s.tolist(), "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def trl_child(steps: int, merged: str, prompts_file: str) -> dict:
    """TRL 1.12's PPOTrainer (run in .venv-trl112)."""
    import tempfile

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(merged)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "left"
    policy = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, use_safetensors=True)
    value = AutoModelForSequenceClassification.from_pretrained(merged, num_labels=1, dtype=torch.float32,
                                                               use_safetensors=True)
    reward = AutoModelForSequenceClassification.from_pretrained(merged, num_labels=1, dtype=torch.float32,
                                                                use_safetensors=True)
    for p in getattr(value, value.base_model_prefix).parameters():  # TRL's leanest: the value backbone frozen
        p.requires_grad_(False)
    for m in (value, reward):
        m.config.pad_token_id = tokenizer.pad_token_id
    prompts = json.loads(Path(prompts_file).read_text())
    dataset = Dataset.from_dict({"input_ids": prompts})
    times = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as out:
        config = PPOConfig(output_dir=out, per_device_train_batch_size=MINI_BATCH,
                           gradient_accumulation_steps=BATCH // MINI_BATCH, num_mini_batches=BATCH // MINI_BATCH,
                           num_ppo_epochs=EPOCHS, total_episodes=BATCH * steps, response_length=RESPONSE,
                           local_rollout_forward_batch_size=BATCH, learning_rate=7e-4, use_cpu=True, report_to=[],
                           num_sample_generations=0, save_strategy="no", logging_steps=10**6, seed=0,
                           dataloader_num_workers=0, stop_token=None, missing_eos_penalty=None)
        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=None, reward_model=reward,
                             train_dataset=dataset, value_model=value, callbacks=[Clock()],
                             peft_config=LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0,
                                                    target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
        start = time.perf_counter()
        trainer.train()
    steps_s = [b - a for a, b in zip([start] + times[:-1], times)]
    return {"step_s": steps_s, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def run_side(side: str, steps: int, merged: Path, prompts: Path, trl_python: Path) -> dict:
    python = str(trl_python) if side == "trl" else sys.executable
    command = [python, __file__, f"--{side}-child", "--steps", str(steps), "--merged", str(merged),
               "--prompts", str(prompts)]
    from ab_step import run_child  # this folder is the script's, so first on sys.path

    return run_child(command, dict(os.environ, OUTPUT_DIR=str(merged.parents[2]), TOKENIZERS_PARALLELISM="false"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4, help="steps per process; the first is left out")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--merged", help=argparse.SUPPRESS)
    parser.add_argument("--prompts", help=argparse.SUPPRESS)
    parser.add_argument("--ours-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trl-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours_child:
        return print(json.dumps(ours_child(args.steps)))
    if args.trl_child:
        return print(json.dumps(trl_child(args.steps, args.merged, args.prompts)))

    import tempfile

    from helpers import get_profile
    from helpers.artifacts import output_dir, require, stage_dir
    from helpers.data import load_imdb, ppo_queries
    from helpers.models import load_tokenizer

    smol = get_profile("smol")
    merged = require(stage_dir(output_dir(), "smol", "02_merge") / "model", "02_merge", "smol").resolve()
    trl_python = ensure_venv()
    # TRL's prompts: the same IMDB openings ours trains on, in the same order (ppo_step.setup's queries)
    queries = ppo_queries(load_imdb(smol)["train"]["text"], load_tokenizer(merged), n=BATCH * args.steps, seed=0)
    prompts = Path(tempfile.mkdtemp()) / "prompts.json"
    prompts.write_text(json.dumps(queries))
    rounds = []
    for i in range(args.rounds):
        order = ("ours", "trl") if i % 2 == 0 else ("trl", "ours")
        got = {side: run_side(side, args.steps, merged, prompts, trl_python) for side in order}
        rounds.append({side: {"step_s": statistics.median(got[side]["step_s"][1:]),
                              "peak_rss_bytes": got[side]["peak_rss_bytes"]} for side in got})
        r = rounds[-1]
        print(f"round {i + 1}: ours {r['ours']['step_s']:.2f} s at {r['ours']['peak_rss_bytes'] / 2**30:.2f} GiB, "
              f"TRL 1.12 {r['trl']['step_s']:.2f} s at {r['trl']['peak_rss_bytes'] / 2**30:.2f} GiB", flush=True)
    speed = [r["trl"]["step_s"] / r["ours"]["step_s"] for r in rounds]
    memory = [r["ours"]["peak_rss_bytes"] / r["trl"]["peak_rss_bytes"] for r in rounds]
    print(f"ours is {statistics.mean(speed):.2f}x faster (rounds: {', '.join(f'{s:.2f}' for s in speed)}) at "
          f"{statistics.mean(memory):.2f}x the memory (rounds: {', '.join(f'{m:.2f}' for m in memory)})")
    if args.json:
        from datetime import date

        from helpers.artifacts import write_json
        from helpers.fastpath import fast_path_on
        from helpers.machine import signature

        write_json(args.json, {"command": ".venv/bin/python benchmarks/trl_ppo.py " + " ".join(sys.argv[1:]),
                               "date": date.today().isoformat(), "machine": signature(),
                               "path": "fast" if fast_path_on() else "reference", "batch": BATCH,
                               "mini_batch": MINI_BATCH, "ppo_epochs": EPOCHS, "response_tokens": RESPONSE,
                               "rounds": rounds, "speedup_mean": statistics.mean(speed),
                               "memory_ratio_mean": statistics.mean(memory)})


if __name__ == "__main__":
    main()
