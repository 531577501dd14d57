"""One run, executed: build its arm, train it with its trainer under held-out evaluations, measure it.

The one function the harness calls per run (in this process or on a Ray worker): `execute(run, inputs,
sticks)` returns the run's tables (metrics, evaluation, samples) and a one-row summary. It knows nothing of
any trainer's settings: the trainer's registry entry (helpers.harness.trainers) does the training.
"""

from __future__ import annotations

import gc
import resource
import time

import torch

from ..evaluation import Evaluator
from ..models import model_bytes
from ..provenance import weights_hash, where_it_ran
from .measure import RssPeak, _Unmeasured
from .run import Inputs, Run, seed_queries
from .trainers import Trainer, trainer_for


def execute(run: Run, inputs: Inputs, sticks: dict, progress: bool = False, trainer: Trainer | None = None) -> dict:
    """One run: build the arm, train it with held-out evaluations; its tables and a one-row summary."""
    trainer = trainer or trainer_for(run.trainer)
    cuda_baseline = 0  # the yardsticks already on the GPU: not the arm's memory
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        cuda_baseline = torch.cuda.memory_allocated()
    start = time.perf_counter()
    src = inputs.sources
    arm = trainer.build(run.arm, src, run.seed)
    evaluator = Evaluator(inputs.tokenizer, inputs.eval_queries, inputs.reward(inputs.eval_reward),
                          run.config.response_len, every=run.eval_every, seed=run.seed,
                          samples_per_prompt=inputs.eval_samples, yardsticks=sticks,
                          perplexity_texts=inputs.perplexity_texts, perplexity_seq_len=src.profile.sft.seq_len)
    with RssPeak() as rss:
        fitted = trainer.fit(arm, inputs.tokenizer, seed_queries(inputs.queries, run.seed), inputs.reward(run.reward),
                             run.config, _Unmeasured(evaluator, rss), progress)
    metrics = fitted.metrics
    timed = metrics["step_time_s"].iloc[1:] if len(metrics) > 1 else metrics["step_time_s"]  # no warm-up step
    summary = {
        "arm": run.arm, "seed": run.seed, "steps": run.steps, "backbones": getattr(trainer.arms[run.arm], "backbones", 1),
        "model_bytes": model_bytes(*getattr(arm, "holds", []), *fitted.holds),
        "rss_growth_bytes": rss.growth,
        # of it: weights' file pages the first forward touches (safetensors are memory-mapped), and the rest
        "rss_file_growth_bytes": rss.growth_of("file"), "rss_anon_growth_bytes": rss.growth_of("anon"),
        "peak_cuda_bytes": torch.cuda.max_memory_allocated() - cuda_baseline if torch.cuda.is_available() else 0,
        "trainable_params": sum(p.numel() for p in fitted.trained),
        "trained_weights": weights_hash(fitted.trained),
        "step_time_median_s": timed.median(), "step_time_min_s": timed.min(), "step_time_max_s": timed.max(),
        "total_time_s": time.perf_counter() - start,
        "process_peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux: KiB
        **where_it_ran(),
    }
    del arm, fitted
    gc.collect()
    return {"metrics": metrics, "evaluation": evaluator.table(), "samples": evaluator.samples(), "summary": summary}
