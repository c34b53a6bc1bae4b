"""Choosing the device, the inference backend and the precision for a model.

Every automatic choice is made from what this machine reports (CUDA, the kernel's CPU
flags), never assumed: machines of the same kind differ (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = [
    "NumericPath",
    "choose_backend",
    "choose_device",
    "choose_precision",
    "cpu_flags",
    "cpu_has_fast_bf16",
    "cpu_has_fast_int8",
]

# CPU flags of native bfloat16 arithmetic (AVX-512 BF16, Intel AMX). Without them PyTorch
# emulates bf16 and it is slower than float32.
FAST_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# CPU flags of int8 dot-product instructions (VNNI, AMX-INT8) that ONNX Runtime's int8
# kernels use. Without them int8 matrix products go through 16-bit intermediates that can
# saturate (ONNX Runtime then recommends reduce_range, which costs quality).
FAST_INT8_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@dataclass(frozen=True, slots=True)
class NumericPath:
    """How vectors are computed: ``backend`` (torch | onnx) and ``precision``."""

    backend: str
    precision: str

    def __str__(self) -> str:
        return f"{self.backend}-{self.precision}"


@cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's flags as the kernel reports them (empty where it cannot be read)."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has native bf16 instructions, from the kernel's CPU flags."""
    return bool(FAST_BF16_FLAGS & cpu_flags(cpuinfo))


def cpu_has_fast_int8(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has int8 dot-product instructions (VNNI / AMX-INT8)."""
    return bool(FAST_INT8_FLAGS & cpu_flags(cpuinfo))


def choose_device(requested: str | None) -> str:
    """The requested device, else CUDA when present, else the CPU."""
    if requested:
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def choose_precision(device: str, requested: str) -> str:
    """The torch precision, 'float32' or 'bfloat16'. For 'auto': bf16 on a GPU that supports
    it and on a CPU with native bf16 instructions (measured 2-3x faster than float32 for
    MiniLM; see docs/benchmarks.md), float32 elsewhere."""
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


def choose_backend(
    device: str,
    backend: str,
    precision: str,
    flags: Collection[str] | None = None,
) -> NumericPath:
    """The backend and precision to run, from the settings (``auto`` or a value) and the CPU.

    ``auto`` picks, on a CPU, the fastest path whose vectors pass the quality bar (p1 cosine
    to torch float32 >= 0.99 in bench/embed.py, and nDCG@10 within 0.01 of torch float32 on
    every figure of bench/quality.py; docs/benchmarks.md): torch bfloat16 where the CPU has
    native bf16 (AVX-512 BF16 / AMX), else torch float32. ONNX Runtime int8 is 1.4x faster than
    torch float32 and passes the cosine bar but not the retrieval one (truncated vector search
    0.017 below float32), so it runs only when asked for (``precision: int8`` or ``backend:
    onnx`` on a CPU with int8 dot products). On a GPU: torch, bf16 where supported. A value set
    in the config always wins; combinations that do not exist (torch int8, onnx bfloat16, onnx
    on a GPU) are refused with the fix.
    """
    cpu = flags if flags is not None else cpu_flags()
    kind = device.split(":", 1)[0]
    if backend not in ("auto", "torch", "onnx"):
        raise ValueError(f"unknown embedding.backend {backend!r} (use auto, torch or onnx)")
    if precision not in ("auto", "float32", "bfloat16", "int8"):
        raise ValueError(
            f"unknown embedding.precision {precision!r} (use auto, float32, bfloat16 or int8)"
        )
    if backend == "auto":  # ONNX only for int8; torch then picks the precision below
        backend = "onnx" if precision == "int8" else "torch"
    if backend == "onnx":
        if kind != "cpu":
            raise ValueError(
                f"embedding.backend onnx runs on the CPU only, but the device is {device!r}: "
                "set embedding.device to cpu, or embedding.backend to torch"
            )
        if precision == "bfloat16":
            raise ValueError(
                "embedding.precision bfloat16 does not exist for backend onnx: use float32 or int8"
            )
        if precision == "auto":
            precision = "int8" if FAST_INT8_FLAGS & set(cpu) else "float32"
        return NumericPath("onnx", precision)
    if precision == "int8":
        raise ValueError(
            "embedding.precision int8 does not exist for backend torch: use float32 or "
            "bfloat16, or set embedding.backend to onnx"
        )
    if precision == "auto" and kind == "cpu":
        return NumericPath("torch", "bfloat16" if FAST_BF16_FLAGS & set(cpu) else "float32")
    return NumericPath("torch", choose_precision(device, precision))
