"""One PPO step against the machine's limits (a roofline), and where its memory goes.

For each phase of a step (generation, the policy's forward over the rollout, the reference forward, the PPO
epochs' forward/backward, the rest) it counts the FLOPs and the bytes the phase must move, from the model's
shapes and the batch's token counts, and measures the machine's own limits in the same run: dense-matmul
FLOP/s per dtype at the step's GEMM shapes (M, K, N) and memory read bandwidth. A phase's bound is the larger
of FLOPs / peak FLOP/s and bytes / bandwidth: no code on this machine can do the phase faster. The table
prints the time, the bound and the fraction of the bound reached; "at its shapes" is the time of the
phase's GEMMs timed alone at their own shapes (hot caches), what the matmul kernels allow there.

Memory: each (profile, dtype) runs in a fresh process; resident memory after each library's import and each
stage of setting up, split into anonymous pages (what the process allocated) and file-backed ones (the
memory-mapped weights, the libraries' code), and the transient above it of each phase (Linux VmHWM, reset
before each phase); the process's peak (ru_maxrss) before the limits are measured; CUDA's
max_memory_allocated beside it on a GPU. `step / floor` is the old self-relative ratio: the step against its
own parts timed alone (1.00: the loop adds nothing to its parts; it says nothing of the machine). A step's
time moves between runs on a shared machine: compare two codes with benchmarks/ab_step.py (paired).

    .venv/bin/python benchmarks/ppo_step.py --profile smol --batch 8 --mini-batch 4 --epochs 4 \
        [--dtype float32 --dtype bfloat16] [--json PATH]

Needs the merged model of notebook 02 for each profile (`make tutorial PROFILE=...`). Run nothing else
beside it: two torch processes on two cores slow each other down several times over.
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
from collections import Counter
from types import SimpleNamespace

import torch

GIB = 2**30


# --- the machine's limits ------------------------------------------------------------------------------


def timed(fn, repeats: int = 3, warmup: int = 1) -> float:
    """Median wall time of `fn()` over `repeats` calls, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def gemm_seconds(m: int, k: int, n: int, dtype: torch.dtype, device: str) -> float:
    """One [m x k] @ [k x n] as the model runs it (F.linear on an [n x k] weight), hot caches."""
    x, w = torch.randn(m, k, dtype=dtype, device=device), torch.randn(n, k, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        torch.nn.functional.linear(x, w)
        sync()

    repeats = max(3, min(50, int(0.05 / max(timed(run, 1), 1e-6))))
    return timed(run, repeats)


def read_bandwidth(device: str, size_bytes: int = 512 * 2**20) -> float:
    """Bytes per second of a streaming read (a sum over a buffer far larger than the caches)."""
    a = torch.ones(size_bytes // 4, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        a.sum()
        sync()

    return size_bytes / timed(run, 5)


# --- the work of each phase, from the model's shapes --------------------------------------------------


def layer_linears(config) -> list[tuple[str, int, int]]:
    """(name, K, N) of each linear of one decoder layer (LLaMA layout)."""
    h, heads, kv = config.hidden_size, config.num_attention_heads, config.num_key_value_heads
    d = getattr(config, "head_dim", None) or h // heads
    i = config.intermediate_size
    return [("q_proj", h, heads * d), ("k_proj", h, kv * d), ("v_proj", h, kv * d), ("o_proj", heads * d, h),
            ("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)]


class Work:
    """FLOPs, bytes and GEMMs (M, K, N) -> count of one phase."""

    def __init__(self):
        self.flops, self.bytes, self.gemms = 0.0, 0.0, Counter()

    def gemm(self, m, k, n, count=1):
        self.flops += 2.0 * m * k * n * count
        self.gemms[(m, k, n)] += count


def forward_work(work: Work, config, lora_r: int, lora_targets, rows: int, seq: int, head_rows: int,
                 context: int | None = None, lora: bool = True, backward: bool = False):
    """One forward over `rows` x `seq` tokens (each attending to `context` positions, default `seq`: causal
    full), the LM head on `head_rows` positions; with `backward`, the input gradients too (frozen weights:
    dX = dY W, the same FLOPs again; attention's backward ~2x its forward) and the LoRA weight gradients."""
    m, layers = rows * seq, config.num_hidden_layers
    context = seq if context is None else context
    heads, d = config.num_attention_heads, getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    for name, k, n in layer_linears(config):
        work.gemm(m, k, n, layers)
        if backward:
            work.gemm(m, n, k, layers)
        if lora and name in lora_targets:
            work.gemm(m, k, lora_r, layers)
            work.gemm(m, lora_r, n, layers)
            if backward:  # input grads through B and A, weight grads of B and A
                work.gemm(m, n, lora_r, layers)
                work.gemm(m, lora_r, k, layers)
                work.gemm(lora_r, m, n, layers)
                work.gemm(k, m, lora_r, layers)
    attention = 4.0 * heads * d * m * context * layers  # QK^T and AV
    work.flops += attention * (3 if backward else 1)
    work.gemm(head_rows, config.hidden_size, config.vocab_size)
    if backward:
        work.gemm(head_rows, config.vocab_size, config.hidden_size)


def phase_work(config, weight_bytes: int, element: int, lora_r: int, lora_targets, batch: int, query: int,
               generated: int, response: int, mini_batch: int, epochs: int) -> dict[str, Work]:
    """The work of each phase of one step: `batch` rollouts, queries padded to `query` tokens, `generated`
    tokens sampled (columns), responses padded to `response` tokens."""
    kv_token = 2 * config.num_key_value_heads * (getattr(config, "head_dim", None) or
                                                 config.hidden_size // config.num_attention_heads) * element
    generation = Work()
    forward_work(generation, config, lora_r, lora_targets, batch, query, batch)  # prefill
    generation.bytes += weight_bytes
    for t in range(1, generated):  # one token per row, attending to the query and what came before
        forward_work(generation, config, lora_r, lora_targets, batch, 1, batch, context=query + t)
        generation.bytes += weight_bytes + kv_token * config.num_hidden_layers * batch * (query + t)
    seq = query + response
    rollout, reference, epochs_work = Work(), Work(), Work()
    forward_work(rollout, config, lora_r, lora_targets, batch, seq, batch * response)
    rollout.bytes += weight_bytes
    forward_work(reference, config, lora_r, lora_targets, batch, seq, batch * response, lora=False)
    reference.bytes += weight_bytes
    for _ in range(epochs * (batch // mini_batch)):
        forward_work(epochs_work, config, lora_r, lora_targets, mini_batch, seq, mini_batch * response, backward=True)
        epochs_work.bytes += 2 * weight_bytes  # the weights stream in the forward and again in the backward
    return {"generation": generation, "rollout forward": rollout, "reference forward": reference,
            "epochs forward/backward": epochs_work}


# --- memory ------------------------------------------------------------------------------------------


def _status(field: str) -> int:
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss() -> int:
    return _status("VmRSS")


def rss_split() -> dict:
    """Resident memory by kind: anonymous pages (what the process allocated) and file-backed ones (the
    memory-mapped safetensors weights, the libraries' code)."""
    return {"anon": _status("RssAnon"), "file": _status("RssFile")}


def transient(fn) -> tuple[object, int]:
    """`fn()`'s result and the resident memory it needed above what was resident before it (VmHWM, reset)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the high-water mark VmHWM to the current RSS
    except OSError:
        pass
    before = rss()
    out = fn()
    return out, _status("VmHWM") - before


# --- one (profile, dtype) in this process -------------------------------------------------------------


IMPORTS = [("torch", "torch"), ("transformers", "transformers"), ("peft (it imports bitsandbytes)", "peft"),
           ("datasets", "datasets"), ("scikit-learn", "sklearn.feature_extraction.text"), ("pandas", "pandas")]


def setup(profile_name: str, dtype_name: str, steps: int, stage=lambda name: None, **overrides) -> SimpleNamespace:
    """Everything a PPO run needs, set up as notebook 03 does, with `steps` timed steps after one warm-up step;
    `stage(name)` is called after each stage (the memory table's lines). Shared with benchmarks/ab_step.py,
    and run on older code too (PYTHONPATH), so it calls only what that code had."""
    from helpers import get_profile
    from helpers.artifacts import output_dir, require, stage_dir
    from helpers.data import load_imdb, ppo_queries
    from helpers.models import load_model, load_tokenizer, new_lora
    from helpers.ppo import ValueHead, config_from_profile
    from helpers.reference import DisabledAdapters
    from helpers.rewards import load_reward

    profile = get_profile(profile_name)
    if dtype_name == "auto":
        from helpers.models import resolve_dtype

        dtype_name = str(resolve_dtype("auto")).removeprefix("torch.")
    merged_dir = require(stage_dir(output_dir(), profile.name, "02_merge") / "model", "02_merge", profile.name)
    # the dtype passed explicitly: the same script measures code from before the `dtype` setting existed
    model = load_model(profile, merged_dir, quantize=profile.quantize,
                       dtype=getattr(torch, dtype_name))
    tokenizer = load_tokenizer(merged_dir)
    stage("after the weights")
    policy = new_lora(model, profile)
    value_head = ValueHead(model.config.hidden_size).to(policy.device)
    reference = DisabledAdapters(policy)
    config = config_from_profile(profile, steps=steps + 1, **overrides)
    reward = load_reward(profile)
    stage("after the reward model")
    queries = ppo_queries(load_imdb(profile)["train"]["text"], tokenizer, n=config.steps * config.batch_size, seed=0)
    stage("after the data")
    return SimpleNamespace(profile=profile, model=model, tokenizer=tokenizer, policy=policy, value_head=value_head,
                           reference=reference, config=config, reward=reward, queries=queries)


def bench(profile_name: str, dtype_name: str, steps: int, repeats: int, **overrides) -> dict:
    memory, split = {}, {}

    def stage(name):
        memory[name], split[name] = rss(), rss_split()

    # what each library costs resident, imported in the order the helpers import them (torch: at the top)
    for label, module in IMPORTS:
        __import__(module)
        stage(f"after import: {label}")
    import numpy as np

    import helpers  # noqa: F401
    from helpers.machine import signature
    from helpers.models import model_bytes
    from helpers.ppo import gather_logprobs, log_softmax, policy_forward, rollout, train, trainable_parameters

    stage("after import: the helpers")
    run = setup(profile_name, dtype_name, steps, stage, **overrides)
    profile, model, policy, config, queries = run.profile, run.model, run.policy, run.config, run.queries
    tokenizer, value_head, reference, reward = run.tokenizer, run.value_head, run.reference, run.reward
    device = policy.device.type
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # the whole loop: median step time, the first (warm-up) step left out
    metrics, loop_peak = transient(lambda: train(policy, value_head, reference, tokenizer, queries, reward, config,
                                                 progress=False))
    step = float(metrics.step_time_s.iloc[1:].median())
    # fwd_s (the rollout's forward) is timed in the loop since issue 20; older code: timed alone below
    timed_in_loop = [c for c in ("gen_s", "score_s", "fwd_s", "ref_s", "update_s") if c in metrics]
    phases = metrics[timed_in_loop].iloc[1:].median().to_dict()
    stage("after the PPO steps")
    memory["peak of the PPO steps (transient above the line before)"] = loop_peak
    # the process's own peak, before the limits below allocate their buffers (512 MiB for the bandwidth)
    memory["peak of the process (ru_maxrss)"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    # each part alone on one batch like the loop's, with its own memory transient
    batch = queries[: config.batch_size]
    lengths = np.random.default_rng(0).integers(config.response_len[0], config.response_len[1] + 1,
                                                size=config.batch_size).tolist()
    torch.manual_seed(0)
    ro = rollout(policy, tokenizer, batch, lengths)
    params = trainable_parameters(policy, value_head)

    def one_epoch():
        for i in range(0, config.batch_size, config.mini_batch_size):
            mb = slice(i, i + config.mini_batch_size)
            logits, values = policy_forward(policy, value_head, *ro.rows(mb))
            logprobs = gather_logprobs(log_softmax(logits), ro.response_tokens[mb])
            (logprobs.sum() + values.sum()).backward()
            for p in params:
                p.grad = None

    def rollout_forward():
        with torch.no_grad():
            return log_softmax(policy_forward(policy, value_head, *ro.rows(slice(None)))[0])

    parts = {"generation": lambda: rollout(policy, tokenizer, batch, lengths),
             "rollout forward": rollout_forward,
             "reference forward": lambda: reference.logits(*ro.rows(slice(None))),
             "epochs forward/backward": one_epoch}
    transients, alone = {}, {}
    for name, fn in parts.items():
        _, transients[name] = transient(fn)
        alone[name] = timed(fn, repeats) * (config.ppo_epochs if name == "epochs forward/backward" else 1)
    # each phase's time is the loop's own (median over the timed steps); timed alone, only for step / floor
    seconds = {"generation": phases["gen_s"], "rollout forward": phases.get("fwd_s", alone["rollout forward"]),
               "reference forward": phases["ref_s"], "epochs forward/backward": phases["update_s"]}

    # the work, from the shapes and this batch's token counts
    element = torch.finfo(next(model.parameters()).dtype).bits // 8
    lora_cfg = policy.peft_config[policy.active_adapter]
    generated = int(ro.response_tokens.shape[1])
    work = phase_work(model.config, model_bytes(model), element, lora_cfg.r, set(lora_cfg.target_modules),
                      config.batch_size, ro.query_len, generated, generated, config.mini_batch_size,
                      config.ppo_epochs)
    dtype = next(model.parameters()).dtype
    shapes = sorted({s for w in work.values() for s in w.gemms})
    gemm_s = {s: gemm_seconds(*s, dtype, device) for s in shapes}
    square = 2048
    peak = max([2.0 * m * k * n / t for (m, k, n), t in gemm_s.items()] +
               [2.0 * square**3 / gemm_seconds(square, square, square, dtype, device)])
    bandwidth = read_bandwidth(device)
    try:  # older code (PYTHONPATH) has one path only: the reference path
        from helpers.fastpath import fast_path_on

        path = "fast" if fast_path_on() else "reference"
    except ImportError:
        path = "reference"
    rows = []
    for name, w in work.items():
        if path == "fast" and name == "rollout forward":  # folded into generation: no work of its own
            rows.append({"phase": name, "time_s": seconds[name],
                         "note": "none: the old log-probs and values come from generation's own forwards"})
            alone.pop(name)
            continue
        bound = max(w.flops / peak, w.bytes / bandwidth)
        at_shapes = sum(gemm_s[s] * count for s, count in w.gemms.items())
        rows.append({"phase": name, "time_s": seconds[name], "gflop": w.flops / 1e9, "gbytes": w.bytes / 1e9,
                     "bound_s": bound, "bound_by": "FLOP/s" if w.flops / peak >= w.bytes / bandwidth else "bandwidth",
                     "fraction_of_bound": bound / seconds[name], "gemms_at_their_shapes_s": at_shapes,
                     "transient_mib": transients[name] / 2**20})
    floor = sum(alone.values()) + phases["score_s"]
    # the rest, step by step (a difference of medians can come out negative when steps vary)
    rest = float((metrics.step_time_s - metrics[timed_in_loop].sum(axis=1)).iloc[1:].median())
    rest -= 0.0 if "fwd_s" in metrics else seconds["rollout forward"]  # older code: not in the loop's columns
    rows.append({"phase": "score (reward model)", "time_s": phases["score_s"]})
    rows.append({"phase": "the rest (GAE, KL and entropy statistics, bookkeeping)", "time_s": rest})
    if device == "cuda":
        memory["CUDA max_memory_allocated"] = torch.cuda.max_memory_allocated()
    return {"profile": profile.name, "dtype": str(dtype).replace("torch.", ""), "batch": config.batch_size,
            "mini_batch": config.mini_batch_size, "ppo_epochs": config.ppo_epochs, "query_tokens": ro.query_len,
            "generated_tokens": generated, "step_s": step, "rollouts_per_s": config.batch_size / step,
            "loop_phases_s": phases, "phases": rows, "peak_flops": peak, "read_bandwidth_bytes_per_s": bandwidth,
            "weight_bytes": model_bytes(model), "memory_bytes": memory, "memory_split_bytes": split,
            "phases_alone_s": alone, "step_over_floor": step / floor, "path": path, "machine": signature()}


# --- printing, and one fresh process per (profile, dtype) ---------------------------------------------


def report(result: dict) -> str:
    import pandas as pd

    r = result
    head = (f"{r['profile']} {r['dtype']}, {r.get('path', 'reference')} path: batch {r['batch']}, {r['ppo_epochs']} epochs x minibatch {r['mini_batch']}, "
            f"query {r['query_tokens']} + {r['generated_tokens']} generated tokens; step {r['step_s']:.2f} s "
            f"({r['rollouts_per_s']:.2f} rollouts/s); peak {r['peak_flops'] / 1e9:.0f} GFLOP/s, read bandwidth "
            f"{r['read_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s, weights {r['weight_bytes'] / GIB:.2f} GiB")
    table = pd.DataFrame(r["phases"]).set_index("phase").round(3).astype(object).fillna("").to_string()
    split = r.get("memory_split_bytes", {})
    memory = "\n".join(f"  {k:58s} {v / GIB:6.2f} GiB" + (f"  (anonymous {split[k]['anon'] / GIB:.2f}, file-backed "
                                                         f"{split[k]['file'] / GIB:.2f})" if k in split else "")
                       for k, v in r["memory_bytes"].items())
    return (f"{head}\n{table}\nstep / floor (the step against its own parts timed alone): "
            f"{r['step_over_floor']:.2f}\nmemory (resident):\n{memory}\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", action="append", help="profile(s) to measure (default: tiny and smol)")
    parser.add_argument("--dtype", action="append", choices=["float32", "bfloat16", "auto"],
                        help="compute dtype(s) (default: float32)")
    parser.add_argument("--steps", type=int, default=4, help="PPO steps timed after one warm-up step")
    parser.add_argument("--repeats", type=int, default=3, help="repeats of each phase timed alone")
    parser.add_argument("--batch", type=int, help="rollouts per step (default: the profile's)")
    parser.add_argument("--mini-batch", type=int, help="minibatch size (default: the profile's)")
    parser.add_argument("--epochs", type=int, help="PPO epochs (default: the profile's)")
    parser.add_argument("--json", help="also write the figures, with the machine, to this file")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one profile x dtype
    args = parser.parse_args()
    overrides = dict(batch_size=args.batch, mini_batch_size=args.mini_batch, ppo_epochs=args.epochs)
    if args.one:
        print(json.dumps(bench(args.profile[0], args.dtype[0], args.steps, args.repeats, **overrides)))
        return
    results = []
    for profile in args.profile or ["tiny", "smol"]:
        for dtype in args.dtype or ["float32"]:
            child = [sys.executable, __file__, "--one", "--profile", profile, "--dtype", dtype, "--steps",
                     str(args.steps), "--repeats", str(args.repeats)]
            for flag, value in [("--batch", args.batch), ("--mini-batch", args.mini_batch), ("--epochs", args.epochs)]:
                child += [flag, str(value)] if value is not None else []
            done = subprocess.run(child, stdout=subprocess.PIPE, text=True, env=os.environ)
            if done.returncode:
                sys.exit(done.returncode)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(report(results[-1]), flush=True)
    if args.json:
        from datetime import date

        from helpers.artifacts import write_json

        command = ".venv/bin/python benchmarks/ppo_step.py " + " ".join(a for a in sys.argv[1:])
        if os.environ.get("PYTHONPATH"):  # another checkout's code: say so, and which commit it is
            src = os.environ["PYTHONPATH"]
            commit = subprocess.run(["git", "-C", src, "rev-parse", "--short=7", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() or "unknown"
            command = f"PYTHONPATH=<a checkout of {commit}>/src " + command
        write_json(args.json, {"command": command, "date": date.today().isoformat(), "results": results})


if __name__ == "__main__":
    main()
