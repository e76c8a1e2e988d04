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


# ------------------------------------------------------------------ bf16 kernels that compute wrongly
# Measured on a 2-core Sapphire Rapids-class KVM guest (AMX-BF16; torch 2.13.0+cpu and its oneDNN): bf16
# Conv2d 16->C (C = 16, 32, 64) with a 4x4 stride-4 kernel, 8->C and 16->C with 8x8 kernels and Conv3d
# 16->C 4x4x4 stride 4 return results 110-125% off fp32 (relative L2) once the output has 3 or more
# positions per axis; neighbouring shapes are at the usual 0.3%. MambaDFuse's patch embedding is such a
# layer: its val SSIM fell from 0.754 (fp32) to 0.732 under bf16 on that machine, and its training loss
# rose a third. The fault depends on the kernel oneDNN picks for a shape on a CPU, so it is probed, not
# listed: each distinct convolution / linear layer shape is run once in bf16 autocast and in fp32 on a
# random input (forward; for training also the input and weight gradients), and a layer whose bf16
# result is off by more than `BF16_TOLERANCE` runs in fp32 (autocast off inside it), the rest in bf16.
BF16_TOLERANCE = 0.05  # bf16 rounds to 2**-9 relative; a working kernel's layer error is about 0.3%
_PROBED: dict[tuple, float] = {}


def _layer_signature(module: Any) -> tuple | None:
    """What decides which kernel a layer gets: its type and shape parameters (None: not a probed layer)."""
    import torch.nn as nn

    if isinstance(module, nn.Linear):
        return ("Linear", module.in_features, module.out_features, module.bias is not None)
    if isinstance(module, nn.modules.conv._ConvNd):
        cls = getattr(type(module), "_fp32_base", type(module))  # a pinned layer keeps its kernel's signature
        return (cls.__name__, module.in_channels, module.out_channels, module.kernel_size, module.stride,
                module.padding, module.dilation, module.groups, module.output_padding, module.padding_mode,
                module.bias is not None)
    return None


def _probe_input(module: Any, device: Any) -> Any:
    """A random input the layer accepts: 64 rows of features, or one image / volume with at least four
    output positions per axis (the faulty kernels above are picked from three on)."""
    import torch
    import torch.nn as nn

    gen = torch.Generator().manual_seed(0)
    if isinstance(module, nn.Linear):
        return torch.randn(64, module.in_features, generator=gen).to(device)
    nd = len(module.kernel_size)
    reach = max((k - 1) * d + 1 for k, d in zip(module.kernel_size, module.dilation, strict=True))
    size = max({1: 64, 2: 16, 3: 8}[nd], reach + 3 * max(module.stride))
    return torch.randn(1, module.in_channels, *([size] * nd), generator=gen).to(device)


def bf16_layer_error(module: Any, device: Any = "cpu", backward: bool = True) -> float:
    """Largest relative L2 error against fp32 of `module`'s bf16-autocast output (and, with `backward`,
    of its input and weight gradients) on a random input; runs on a copy, `module` is not touched."""
    import copy

    import torch

    device = torch.device(device)
    results = []
    with torch.inference_mode(False), torch.enable_grad():  # callable from no_grad / inference code
        layer = copy.deepcopy(module).to(device).float().train().requires_grad_(backward)
        if isinstance(layer, _Fp32Layer):  # probe the kernel itself, not the pinned fp32 version
            layer.__class__ = type(layer)._fp32_base
        x = _probe_input(layer, device)
        for amp in (False, True):
            xi = x.clone().requires_grad_(backward)
            layer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                y = layer(xi).float()
            out = [y.detach()]
            if backward:
                g = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device)
                (y * g).sum().backward()
                out += [xi.grad.float(), layer.weight.grad.float()]
            results.append(out)
    return max(float((got - ref).norm() / ref.norm().clamp_min(1e-30)) for ref, got in zip(*results, strict=True))


class _Fp32Layer:
    """Mixin for a layer pinned to fp32: autocast is off inside its forward and its input is cast to fp32."""

    def forward(self, x, *args, **kwargs):  # noqa: D102
        import torch

        with torch.autocast(x.device.type, enabled=False):
            return super().forward(x.float(), *args, **kwargs)


@functools.cache
def _fp32_class(cls: type) -> type:
    """`cls` with `_Fp32Layer` in front (one class per layer type, so deep copies and EMA copies keep it)."""
    return type(f"Fp32{cls.__name__}", (_Fp32Layer, cls), {"__module__": __name__, "_fp32_base": cls})


def guard_bf16(model: Any, device: Any = "cpu", backward: bool = False,
               tolerance: float = BF16_TOLERANCE) -> list[str]:
    """Pin to fp32 every layer of `model` whose bf16 kernel on `device` is off by more than `tolerance`.

    Call it on a model about to run under bf16 autocast (`backward=True` when it will be trained). Each
    distinct layer shape is probed once per process (about 0.1-0.4 s for a 2D model's forward); one
    warning per faulty shape. Parameters, state dict keys and fp32 results are unchanged. Returns the
    names of the pinned layers.
    """
    import torch

    device = torch.device(device)
    pinned = []
    for name, module in model.named_modules():
        sig = _layer_signature(module)
        if sig is None:
            continue
        key = (*sig, device.type, backward)
        if key not in _PROBED:
            _PROBED[key] = err = bf16_layer_error(module, device, backward)
            if err > tolerance:
                warnings.warn(f"bf16 on this {device.type} computes {_describe(module)} {err:.0%} off fp32 (a faulty "
                              "kernel for this shape); layers of this shape run in fp32", RuntimeWarning, stacklevel=2)
        if _PROBED[key] > tolerance:
            if not isinstance(module, _Fp32Layer):
                module.__class__ = _fp32_class(type(module))
            pinned.append(name)
    return pinned


def _describe(module: Any) -> str:
    """E.g. "Conv2d 16->32 kernel 4x4 stride 4x4"."""
    import torch.nn as nn

    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}->{module.out_features}"
    k, s = ("x".join(map(str, v)) for v in (module.kernel_size, module.stride))
    return f"{_layer_signature(module)[0]} {module.in_channels}->{module.out_channels} kernel {k} stride {s}"
