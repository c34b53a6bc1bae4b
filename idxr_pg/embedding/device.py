"""Choosing the device and the inference precision for a model."""

from __future__ import annotations

from functools import cache
from pathlib import Path

__all__ = ["choose_device", "choose_precision", "cpu_has_fast_bf16"]

# CPU flags of native bfloat16 arithmetic (AVX-512 BF16, Intel AMX). Without them PyTorch
# emulates bf16 and it is slower than float32.
FAST_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@cache
def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has native bf16 instructions, from the kernel's CPU flags."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(FAST_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def choose_device(requested: str | None) -> str:
    """The requested device, else CUDA when present, else the CPU."""
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_precision(device: str, requested: str) -> str:
    """'float32' or 'bfloat16'. For 'auto': bf16 on a GPU that supports it and on a CPU with
    native bf16 instructions (measured 2-3x faster than float32 for MiniLM; see
    docs/benchmarks.md), float32 elsewhere."""
    if requested in ("float32", "bfloat16"):
        return requested
    if requested != "auto":
        raise ValueError(f"unknown precision {requested!r} (use auto, float32 or bfloat16)")
    kind = device.split(":", 1)[0]
    if kind == "cuda":
        import torch

        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    if kind == "cpu":
        return "bfloat16" if cpu_has_fast_bf16() else "float32"
    return "float32"
