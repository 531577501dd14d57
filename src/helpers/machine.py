"""What machine this is: the facts a measured figure is quoted with, and what its hardware runs natively."""

from __future__ import annotations

import platform

import torch

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
