"""Run a learned fusion model on numpy arrays (the learned methods of `neurofuse.learned` call this).

`fuse_with_model` pads each input to a multiple of the model's total stride and crops back. With
`crop=True` (the default of learned 3D fusion) it fuses only the union foreground box of the two
inputs (`foreground_box`) and pastes the result back into the full grid. The box (or the whole input)
runs in one pass when it has at most `max_voxels` voxels; a larger one, or any input larger than an
explicit `window`, is fused with the fewest overlapping windows that fit (`plan_windows`), blended by
a tapered Gaussian (`blend_profile`: MONAI's importance map falling to zero at interior window edges,
so windows hand over without a step). Note that a model with global context (Mamba) sees less
context in a window, or only the box, so windowed, cropped and whole-volume outputs agree only
approximately; for a purely local model they agree exactly.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from neurofuse.errors import InputError, UsageError
from neurofuse.precision import guard_bf16, resolve_precision


def resolve_device(device: str) -> torch.device:
    """`"cpu"` or `"cuda"` (or `"cuda:N"`) as a torch device; UsageError if unavailable."""
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine")
        return torch.device(device)
    raise UsageError(f"--device {device!r}: use cpu or cuda")


def _autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` (auto|fp32|bf16) on `device`; None means plain fp32."""
    return torch.bfloat16 if resolve_precision(precision, device) == "bf16" else None


def _run(
    model: nn.Module, a: torch.Tensor, b: torch.Tensor, stride: int, amp: torch.dtype | None, lowmem: bool = True
) -> torch.Tensor:
    """Model on a batch (N, 1, *S): pad to a stride multiple (replicate), crop back, float32 output.

    `lowmem`: use the model's `forward_lowmem` where it has one (same output, less memory)."""
    size = a.shape[2:]
    pad: list[int] = []
    for s in reversed(size):
        extra = -s % stride
        pad += [extra // 2, extra - extra // 2]
    if any(pad):
        a, b = F.pad(a, pad, mode="replicate"), F.pad(b, pad, mode="replicate")
    with torch.autocast(a.device.type, dtype=amp, enabled=amp is not None):
        forward = getattr(model, "forward_lowmem", None) if lowmem else None
        f = (forward or model)(a, b).float()
    crop = tuple(slice(pad[2 * i], pad[2 * i] + s) for i, s in zip(reversed(range(len(size))), size, strict=True))
    return f[(slice(None), slice(None), *crop)]


def gaussian_importance(window: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian weight map for one window (peak 1 at the centre, floor 1e-3), MONAI-style.

    MONAI's `compute_importance_map(mode="gaussian")` clamps the same map to at least 1e-3; at an
    interior window edge that floor is several percent of the neighbouring window's weight, which
    leaves a step (a seam) wherever the two windows' outputs differ. `blend="gaussian"` uses it; the
    default `blend="taper"` uses `blend_profile` instead.
    """
    w = np.ones((), dtype=np.float32)
    for n in window:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        g = np.exp(-(x**2) / (2 * (sigma_scale * n) ** 2))
        w = np.multiply.outer(w, g / g.max())
    return np.maximum(w, 1e-3).astype(np.float32)


def blend_profile(n: int, start: int, size: int, sigma_scale: float = 0.125) -> np.ndarray:
    """1D blending weight of a window of `n` voxels at `start` on an axis of `size` voxels.

    The Gaussian of MONAI's importance map (centred, sigma = sigma_scale * n) minus its value half a
    voxel beyond the window's ends, rescaled to peak 1: it falls continuously to zero just outside the
    window, so overlapping windows hand over without a step, and the last voxel keeps a small positive
    weight. A side that reaches the array's edge has no neighbour to hand over to: there the profile
    stays 1 from the centre to the edge. A window weight map is the outer product of its axes' profiles.
    """
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2
    sigma = sigma_scale * n
    g, edge = np.exp(-(x**2) / (2 * sigma**2)), math.exp(-((n / 2) ** 2) / (2 * sigma**2))
    w = (g - edge) / (1 - edge)
    if start <= 0:
        w[x <= 0] = 1.0
    if start + n >= size:
        w[x >= 0] = 1.0
    return w.astype(np.float32)


def _starts(size: int, win: int, overlap: float) -> list[int]:
    """Evenly spaced window starts covering `size` with windows of `win` overlapping by >= `overlap`."""
    if size <= win:
        return [0]
    step = max(1, int(win * (1 - overlap)))
    n = math.ceil((size - win) / step) + 1
    return sorted({round(i * (size - win) / (n - 1)) for i in range(n)})


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def plan_windows(
    shape: Sequence[int], max_voxels: int, stride: int = 1, overlap: float = 0.25
) -> list[int]:
    """Window size per axis: the fewest windows of at most `max_voxels` voxels (after padding to a
    multiple of `stride`) that tile `shape` with the overlap fraction `overlap`.

    The rule: the whole array is one window when it fits; otherwise each axis i is cut into n_i
    windows of ceil(shape_i / (n_i - (n_i - 1) * overlap)) voxels rounded up to the stride, and the
    (n_0, n_1, ...) with the smallest product whose windows fit is taken (ties: the fewest voxels
    computed). When even stride-sized windows do not fit, those are returned.
    """
    shape = [int(s) for s in shape]
    if math.prod(_round_up(s, stride) for s in shape) <= max_voxels:
        return shape

    def size(s: int, n: int) -> int:
        return s if n == 1 else min(s, _round_up(math.ceil(s / (n - (n - 1) * overlap)), stride))

    options = [sorted({size(s, n) for n in range(1, max(1, s // stride) + 1)}, reverse=True) for s in shape]
    best: tuple[int, int, list[int]] | None = None
    for wins in itertools.product(*options):
        if math.prod(_round_up(w, stride) for w in wins) > max_voxels:
            continue
        count = math.prod(len(_starts(s, w, overlap)) for s, w in zip(shape, wins, strict=True))
        key = (count, count * math.prod(wins), list(wins))
        if best is None or key[:2] < best[:2]:
            best = key
    return best[2] if best is not None else [min(s, stride) for s in shape]


def foreground_box(
    a: np.ndarray, b: np.ndarray, margin: int = 8, threshold: float = 0.02, multiple: int = 1
) -> tuple[slice, ...]:
    """The union foreground box of two arrays as slices: the bounding box of the voxels where either
    exceeds its minimum by more than `threshold` of its range, grown by `margin` voxels on every side
    and then (where the array allows) to a multiple of `multiple` voxels, clipped to the array. The
    whole array when neither has foreground."""
    fg = np.zeros(a.shape, dtype=bool)
    for x in (a, b):
        lo, hi = float(x.min()), float(x.max())
        fg |= x > lo + threshold * (hi - lo)
    box = []
    for axis, n in enumerate(a.shape):
        hits = np.flatnonzero(fg.any(axis=tuple(i for i in range(a.ndim) if i != axis)))
        if not hits.size:
            return tuple(slice(0, s) for s in a.shape)
        lo, hi = max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, n)
        length = min(_round_up(hi - lo, multiple), n)
        lo = min(max(lo - (length - (hi - lo)) // 2, 0), n - length)  # grow both sides, stay inside
        box.append(slice(lo, lo + length))
    return tuple(box)


def fuse_in_box(
    fuse_fn, a: np.ndarray, b: np.ndarray, margin: int = 8, multiple: int = 1, threshold: float = 0.02
) -> np.ndarray:
    """`fuse_fn(a, b)` run on the union foreground box only (`foreground_box`) and pasted back into the
    full grid (so the output has the inputs' shape and geometry); outside the box, where both inputs
    are background, the output is their voxel-wise mean."""
    box = foreground_box(a, b, margin=margin, threshold=threshold, multiple=multiple)
    out = (np.asarray(a, dtype=np.float32) + np.asarray(b, dtype=np.float32)) / 2
    out[box] = fuse_fn(a[box], b[box])
    return out


def window_edges(shape: Sequence[int], wins: Sequence[int], overlap: float = 0.25) -> list[list[int]]:
    """Per axis, the interior planes where a window of the sliding-window grid starts or ends (plane i
    lies between voxels i-1 and i); empty for an axis covered by one window."""
    edges = []
    for s, w in zip(shape, wins, strict=True):
        found = {c for c in _starts(s, w, overlap) if c > 0}
        found |= {c + w for c in _starts(s, w, overlap) if c + w < s}
        edges.append(sorted(found))
    return edges


def _edge_energy_ratio(f: np.ndarray, axis: int, planes: Sequence[int], mask: np.ndarray | None, gap: int) -> float:
    n = f.shape[axis]
    d = np.diff(f.astype(np.float64), axis=axis) ** 2  # d[i] lies across plane i + 1
    valid = np.ones(d.shape, dtype=bool)
    if mask is not None:
        valid = np.take(mask, range(n - 1), axis) & np.take(mask, range(1, n), axis)
    others = tuple(i for i in range(f.ndim) if i != axis)
    energy, count = (d * valid).sum(axis=others), valid.sum(axis=others)
    dist = np.abs(np.arange(1, n)[:, None] - np.asarray(planes)[None, :]).min(axis=1)
    at, away = dist == 0, dist >= gap
    mean_at = energy[at].sum() / max(int(count[at].sum()), 1)
    mean_away = energy[away].sum() / max(int(count[away].sum()), 1)
    return float(mean_at / max(mean_away, 1e-30))


def seam_ratio(
    f: np.ndarray,
    edges: Sequence[Sequence[int]],
    mask: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    gap: int = 3,
) -> float:
    """How visible window seams are in `f`: per axis with edges, the mean squared first difference
    across the window-edge planes over the same mean on the planes at least `gap` voxels from every
    edge (voxel pairs inside `mask` only, if given), divided by that ratio for a seam-free `reference`
    of the same content (e.g. the inputs' mean) so that anatomy that happens to be sharper at the edge
    planes does not count; the largest over the axes. About 1 without a seam; a step between windows
    raises it with the step's size."""
    worst = 0.0
    for axis, planes in enumerate(edges):
        if not planes:
            continue
        r = _edge_energy_ratio(f, axis, planes, mask, gap)
        if reference is not None:
            r /= max(_edge_energy_ratio(reference, axis, planes, mask, gap), 1e-30)
        worst = max(worst, r)
    return worst


BLENDS = ("taper", "gaussian", "constant")
# Peak memory per voxel of one ClinicalFMamba-3D pass, fp32, measured on a 144x176x152 box (a BraTS
# brain): `forward_lowmem` about 280 B, the plain forward about 1,050 B. `max_voxels` defaults of the
# learned 3D method are MEMORY_BUDGET / these.
BYTES_PER_VOXEL = {"lowmem": 300, "plain": 1100}
MEMORY_BUDGET = 2.0e9


@contextlib.contextmanager
def reuse_freed_memory(enabled: bool = True):
    """While active, glibc's malloc keeps freed memory for reuse instead of returning it to the system.

    A 3D pass allocates and frees tensors of tens to hundreds of MB per slab and window; by default
    glibc maps each one afresh (mmap) and unmaps it when freed, so every allocation page-faults its
    memory in again: a third of the CPU time of a BraTS case was the kernel zero-filling pages. Here
    `mallopt(M_MMAP_MAX, 0)` and a 1 GiB `M_TRIM_THRESHOLD` make freed blocks reusable (peak RSS
    about 0.4 GB higher); on exit the defaults are restored and `malloc_trim(0)` hands the memory
    back. A no-op where the C library has no mallopt (not glibc).
    """
    libc = None
    if enabled:
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt, libc.malloc_trim  # noqa: B018 - both must exist
        except (OSError, AttributeError):
            libc = None
    if libc is not None:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield
    finally:
        if libc is not None:
            libc.mallopt(_M_MMAP_MAX, 65536)
            libc.mallopt(_M_TRIM_THRESHOLD, 128 * 1024)
            libc.malloc_trim(0)


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # mallopt parameters (malloc.h)


def _window_weight(corner: Sequence[int], wins: Sequence[int], shape: Sequence[int], blend: str) -> np.ndarray:
    if blend == "constant":
        return np.ones(tuple(wins), dtype=np.float32)
    if blend == "gaussian":
        return gaussian_importance(wins)
    w = np.ones((), dtype=np.float32)
    for c, n, s in zip(corner, wins, shape, strict=True):
        w = np.multiply.outer(w, blend_profile(n, c, s))
    return w


@torch.no_grad()
def fuse_with_model(
    model: nn.Module,
    a: np.ndarray,
    b: np.ndarray,
    device: str = "cpu",
    precision: str = "auto",
    window: int | Sequence[int] | None = None,
    overlap: float = 0.25,
    batch_size: int = 1,
    progress: bool = True,
    crop: bool = False,
    margin: int = 8,
    max_voxels: int | None = None,
    blend: str = "taper",
    lowmem: bool = True,
) -> np.ndarray:
    """Fuse arrays a, b in [0, 1] (2D (H, W) or 3D (D, H, W)) with a fusion model; float32 in [0, 1].

    `crop`: fuse only the union foreground box (`foreground_box` with `margin`, grown to the model's
    stride where the array allows) and paste it back; outside the box, where both inputs are
    background, the output is their voxel-wise mean (3D on a CPU: inside `reuse_freed_memory`). Then
    the box (or the whole input) runs in one
    pass if it has at most `max_voxels` voxels (None: no limit); otherwise in the fewest windows of at
    most that many voxels (`plan_windows`). An explicit `window` (one size per axis, or one for all)
    fixes the window size instead. Windows overlap by the fraction `overlap`, `batch_size` of them run
    at once in reused input buffers, and they are blended by `blend`: "taper" (`blend_profile`, no
    seams), "gaussian" (MONAI's map, floor 1e-3) or "constant". `lowmem`: use the model's
    `forward_lowmem` where it has one (same output, a quarter of the memory).
    """
    if a.shape != b.shape:
        raise UsageError(f"shape mismatch {a.shape} vs {b.shape}")
    if not 0 <= overlap < 1:
        raise UsageError(f"overlap must be in [0, 1), got {overlap}")
    if blend not in BLENDS:
        raise UsageError(f"blend {blend!r}: use {', '.join(BLENDS)}")
    dev = resolve_device(device)
    amp = _autocast_dtype(precision, dev)
    model = model.to(dev).eval()
    if amp is not None:  # a layer whose bf16 kernel is faulty on this device runs in fp32
        guard_bf16(model, dev)
    stride = int(getattr(model, "stride", 1))
    if crop:
        with reuse_freed_memory(dev.type == "cpu" and a.ndim == 3):
            return fuse_in_box(
                lambda x, y: fuse_with_model(
                    model, x, y, device, precision, window, overlap, batch_size, progress,
                    max_voxels=max_voxels, blend=blend, lowmem=lowmem,
                ),
                a, b, margin=margin, multiple=stride,
            )
    nd = a.ndim
    ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))[None, None]
    if window is not None:
        wins = [int(window)] * nd if np.isscalar(window) else [int(w) for w in window]
        if len(wins) != nd or min(wins) < 1:
            raise UsageError(f"window {window}: need one positive size per axis of a {nd}D input")
        wins = [min(w, s) for w, s in zip(wins, a.shape, strict=True)]
    elif max_voxels is not None:
        wins = plan_windows(a.shape, int(max_voxels), stride, overlap)
    else:
        wins = list(a.shape)
    if wins == list(a.shape):
        out = _run(model, ta.to(dev), tb.to(dev), stride, amp, lowmem)
        return out[0, 0].clamp(0, 1).cpu().numpy()

    acc = np.zeros(a.shape, dtype=np.float32)
    norm = np.zeros(a.shape, dtype=np.float32)
    tmp = np.empty(wins, dtype=np.float32)
    corners = list(itertools.product(*(_starts(s, w, overlap) for s, w in zip(a.shape, wins, strict=True))))
    n_buf = min(batch_size, len(corners))
    wa = torch.empty((n_buf, 1, *wins), device=dev)  # input buffers, reused by every batch of windows
    wb = torch.empty_like(wa)
    for i in tqdm(
        range(0, len(corners), batch_size),
        desc="windows",
        unit="batch",
        disable=not progress or len(corners) <= batch_size,
        leave=False,
    ):
        group = corners[i : i + batch_size]
        sl = [tuple(slice(c, c + w) for c, w in zip(corner, wins, strict=True)) for corner in group]
        for j, s in enumerate(sl):
            wa[j, 0].copy_(ta[0, 0][s])
            wb[j, 0].copy_(tb[0, 0][s])
        out = _run(model, wa[: len(sl)], wb[: len(sl)], stride, amp, lowmem)[:, 0].cpu().numpy()
        for corner, s, o in zip(group, sl, out, strict=True):
            weight = _window_weight(corner, wins, a.shape, blend)
            acc[s] += np.multiply(o, weight, out=tmp)
            norm[s] += weight
    np.divide(acc, norm, out=acc)  # in place: the volume-sized arrays are the memory that grows
    del norm
    return np.clip(acc, 0.0, 1.0, out=acc)


def _as_bool(value: bool | str, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"option {name}={value!r}: use true or false")


def window_options(
    ndim: int,
    window: int | str | None = None,
    overlap: float | str = 0.25,
    crop: bool | str | None = None,
    margin: int | str = 8,
    max_voxels: int | str | None = None,
    blend: str = "taper",
) -> dict:
    """`fuse_with_model` keyword arguments from a learned method's options (`-O` strings or values).

    Defaults: 3D input is cropped to its foreground box (`crop=true`, `margin=8`) and runs in one
    pass up to `max_voxels` = MEMORY_BUDGET / BYTES_PER_VOXEL["lowmem"] (about 6.7M voxels, so a
    BraTS brain box of about 3.9M voxels is one pass), in the fewest tapered-Gaussian windows beyond;
    2D input is fused whole. An explicit `window` fixes the window size instead.
    """
    crop = ndim == 3 if crop is None else _as_bool(crop, "crop")
    if max_voxels is None and ndim == 3:
        max_voxels = int(MEMORY_BUDGET / BYTES_PER_VOXEL["lowmem"])
    try:
        opts = {
            "window": None if window is None else int(window),
            "overlap": float(overlap),
            "crop": crop,
            "margin": int(margin),
            "max_voxels": None if max_voxels is None else int(max_voxels),
            "blend": str(blend),
        }
    except ValueError as exc:
        raise UsageError(f"window options: {exc}") from None
    if opts["margin"] < 0 or (opts["max_voxels"] is not None and opts["max_voxels"] < 1):
        raise UsageError("margin must be >= 0 and max_voxels >= 1")
    return opts


def load_model(name: str, weights: str | os.PathLike | None = None, pretrained: str | None = None) -> nn.Module:
    """Model `name` in eval mode with a weights file, a shipped tag, or (neither given) its default
    shipped weights; the architecture overrides stored in the file's metadata are applied.

    Cached (`_cached_model`, keyed by the path as a string), so a folder of pairs (`fuse-dir`) builds and
    loads the model once, and a caller can load it ahead of a timed fusion (`benchmarks/brats3d.py`).
    """
    return _cached_model(name, None if weights is None else os.fspath(weights), pretrained)


@functools.lru_cache(maxsize=4)
def _cached_model(name: str, weights: str | None, pretrained: str | None) -> nn.Module:
    from neurofuse.models.pretrained import default_tag
    from neurofuse.models.registry import create_model, load_weights

    if weights is not None:
        return load_weights(create_model(name, **_trained_overrides(name, weights)), weights).eval()
    if pretrained is None and default_tag(name) is None:
        raise UsageError(f"model {name} has no shipped weights; pass -O weights=FILE.safetensors")
    return create_model(name, pretrained=True if pretrained is None else pretrained).eval()


def _trained_overrides(name: str, weights: str) -> dict:
    """Config overrides a weights file was trained with (`neurofuse train` stores them as metadata).

    So weights of an ablation (e.g. `model_args: {scan: single}`) load into the matching architecture.
    Files without metadata (other tools) get the registered defaults.
    """
    from safetensors import safe_open

    path = Path(weights)
    if not path.is_file():
        raise InputError(f"{path}: weights file not found")
    try:
        with safe_open(str(path), "pt") as fh:
            meta = dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises several types for a damaged or foreign file
        raise InputError(f"{path}: not a readable safetensors file ({exc})") from None
    trained_for = meta.get("model")
    if trained_for and trained_for != name:
        raise InputError(f"{path}: weights were trained for model {trained_for}, not {name}")
    try:
        args = json.loads(meta.get("model_args") or "{}")
    except json.JSONDecodeError:
        raise InputError(f"{path}: unreadable model_args metadata") from None
    return dict(args) if isinstance(args, dict) else {}


@torch.no_grad()
def fuse_batch_with_model(
    model: nn.Module, a: np.ndarray, b: np.ndarray, device: str = "cpu", precision: str = "auto", batch_size: int = 8
) -> np.ndarray:
    """Fuse stacks a, b (N, *S) of same-shape pairs in [0, 1] whole, `batch_size` pairs per forward pass.

    For folders of 2D pairs (`fuse-dir`): 2D input is fused whole, so this equals `fuse_with_model`
    pair by pair (to float rounding) with one model call per batch instead of per pair.
    """
    if a.shape != b.shape or a.ndim < 3:
        raise UsageError(f"expected two (N, *S) stacks of one shape, got {a.shape} and {b.shape}")
    dev = resolve_device(device)
    amp = _autocast_dtype(precision, dev)
    model = model.to(dev).eval()
    if amp is not None:  # a layer whose bf16 kernel is faulty on this device runs in fp32
        guard_bf16(model, dev)
    stride = int(getattr(model, "stride", 1))
    out = []
    for i in range(0, len(a), max(1, int(batch_size))):
        ta = torch.from_numpy(np.ascontiguousarray(a[i : i + batch_size], dtype=np.float32))[:, None].to(dev)
        tb = torch.from_numpy(np.ascontiguousarray(b[i : i + batch_size], dtype=np.float32))[:, None].to(dev)
        out.append(_run(model, ta, tb, stride, amp)[:, 0].clamp(0, 1).cpu().numpy())
    return np.concatenate(out)
