"""What machine this is: the facts a measured figure is quoted with, what its hardware runs natively, and
what a run uses of it (peak memory, a progress bar where a learner sees it)."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
import resource
import sys

import torch
from tqdm import tqdm as text_tqdm
from tqdm.auto import tqdm as auto_tqdm

# /proc/cpuinfo flags that decide which matmul kernels run (and so the speed, and low-bit rounding)
CPU_FLAGS = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"]


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line.split(":", 1)[1].split() for line in f if line.startswith("flags")))
    except (OSError, StopIteration):
        return []
    return [flag for flag in CPU_FLAGS if flag in flags]


def cpu_capability() -> str:
    """torch's own view of the CPU's vector ISA: "AVX512", "AVX2", "DEFAULT", ..."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        return "unknown"


def native_bf16(device: torch.device | str | None = None) -> bool:
    """True where bf16 matmuls run natively: a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX (oneDNN's
    bf16 kernels; elsewhere bf16 is emulated and slower than fp32)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))


def signature() -> dict:
    """The machine a figure came from: CPU model, its matmul flags, torch's ISA, threads, torch build, GPU."""
    return {"cpu": cpu_model(), "cpu_flags": cpu_flags(), "cpu_capability": cpu_capability(),
            "threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


# --- the C heap (glibc) --------------------------------------------------------------------------------

M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter number
MMAP_THRESHOLD_BYTES = 4 * 2**20


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, Windows, musl): their allocators keep their own policies
        return None


def fix_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Give every heap block of at least `threshold` bytes its own mapping, handed back to the OS when freed.

    glibc starts at 128 KiB but raises the threshold to the size of each mapped block freed (up to 32 MiB).
    After the first PPO step every vocabulary-sized tensor (logits, log-probabilities: 12-25 MiB on smol) then
    comes from the heap, and the holes they leave stay resident (the peak with and without: the memory table
    of benchmarks/ppo_step.py, run once on each code); time is no different within the machine's noise.
    Fixing the threshold also stops that raising. Values do not change: torch asks for the same alignment
    either way. True where it took effect."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallopt"):
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))


def release_free_memory() -> None:
    """Collect Python's garbage and hand the heap's free pages back to the OS (glibc's malloc_trim): what a
    stage freed (the reviews read to check the reward model's cache, a previous run's models) stops counting
    as resident before the next stage's memory is measured."""
    gc.collect()
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def peak_memory() -> dict:
    """Peak resident memory of this process (CPU) and peak CUDA allocation since the last reset."""
    peak = {"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    peak["peak_cuda_bytes"] = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
    return peak


def progress_bar(iterable, desc: str, disable: bool = False):
    """tqdm: a notebook widget when a learner runs the notebook; under `make tutorial` (papermill) a text bar
    on the terminal instead, so the executed notebook keeps no frozen "0%" widget."""
    if os.environ.get("TUTORIAL_TERMINAL_PROGRESS") == "1" and sys.__stderr__ is not None:
        return text_tqdm(iterable, desc=f"   {desc}", disable=disable, file=sys.__stderr__, dynamic_ncols=True)
    return auto_tqdm(iterable, desc=desc, disable=disable)
