"""Numeric precision chosen by the hardware: `auto` means bf16 only where the device computes it natively.

bf16 autocast on a CPU without bf16 instructions is emulated by PyTorch and is far slower than fp32
(measured on a 2-core AMD EPYC Zen 3 with AVX2 only: ClinicalFMamba-2D forward 28x slower at 128x128
and 53x slower at 256x256). Native bf16 means: a CUDA device that supports it, or a CPU with AMX-BF16
or AVX512-BF16 (asked from torch's CPU feature probes, falling back to the kernel's /proc/cpuinfo flags).

`NEUROFUSE_PRECISION=fp32|bf16` fixes what `auto` resolves to (the test suite sets fp32, so results do
not depend on the machine's instruction set); an explicit `bf16` or `fp32` always wins.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Any

PRECISIONS = ("auto", "fp32", "bf16")
_ENV = "NEUROFUSE_PRECISION"
_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
_SLOWDOWN = "28-53x slower than fp32 for ClinicalFMamba-2D on an AVX2-only AMD EPYC"


def cpu_info() -> tuple[str, set[str]]:
    """(model name, flags) of the first processor in /proc/cpuinfo; empty where there is no such file."""
    model, flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and not model:
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return model, flags


def _proc_cpu_flags() -> set[str]:
    """The `flags` of the first processor in /proc/cpuinfo (empty where there is no such file)."""
    return cpu_info()[1]


def _torch_cpu_bf16() -> bool | None:
    """torch's own probe for AMX tiles or AVX512-BF16, or None where this torch has no such probe."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    probes = [p for p in probes if p is not None]
    if not probes:
        return None
    return any(bool(p()) for p in probes)


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bf16 in hardware (AMX-BF16 or AVX512-BF16)."""
    from_torch = _torch_cpu_bf16()
    if from_torch is not None:
        return from_torch
    return bool(_proc_cpu_flags() & set(_CPU_FLAGS))


def native_bf16(device_type: str) -> bool:
    """Whether bf16 is native on a device of this type (`cpu` or `cuda`)."""
    if device_type == "cuda":
        import torch

        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type == "cpu":
        return cpu_has_native_bf16()
    return False


def resolve_precision(precision: str, device: Any = "cpu", warn: bool = True) -> str:
    """`fp32` or `bf16` for a requested `auto|fp32|bf16` on `device` (a torch.device or its type name).

    `auto` picks bf16 where it is native and fp32 elsewhere (or what NEUROFUSE_PRECISION says).
    An explicit `bf16` where it is not native is kept, with one warning saying how much slower it is.
    """
    from neurofuse.errors import UsageError

    if precision not in PRECISIONS:
        raise UsageError(f"precision {precision!r}: use auto, fp32 or bf16")
    device_type = getattr(device, "type", None) or str(device).split(":", 1)[0]
    if precision == "auto":
        forced = os.environ.get(_ENV, "").strip().lower()
        if forced:
            if forced not in ("fp32", "bf16"):
                raise UsageError(f"{_ENV}={forced!r}: use fp32 or bf16")
            return forced
        return "bf16" if native_bf16(device_type) else "fp32"
    if precision == "bf16" and warn and not native_bf16(device_type):
        _warn_emulated(device_type)
    return precision


@functools.cache
def _warn_emulated(device_type: str) -> None:
    """One warning per process and device type for bf16 that the hardware does not compute natively."""
    what = "this CPU has neither AMX-BF16 nor AVX512-BF16" if device_type == "cpu" else f"{device_type} lacks bf16"
    warnings.warn(f"precision bf16: {what}, so bf16 is emulated and much slower (measured {_SLOWDOWN}); "
                  "use precision auto or fp32", RuntimeWarning, stacklevel=3)
