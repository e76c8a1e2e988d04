"""Run a learned fusion model on numpy arrays (the learned methods of `neurofuse.learned` call this).

`fuse_with_model` pads each input to a multiple of the model's total stride and crops back; inputs
larger than `window` are fused with overlapping windows blended by a Gaussian importance map (as in
MONAI's sliding-window inference), so device memory is bounded by one batch of windows. Note that a
model with global context (Mamba) sees less context in a window, so windowed and whole-volume outputs
agree only approximately; for a purely local model they agree exactly.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from neurofuse.errors import InputError, UsageError
from neurofuse.precision import resolve_precision


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


def _run(model: nn.Module, a: torch.Tensor, b: torch.Tensor, stride: int, amp: torch.dtype | None) -> torch.Tensor:
    """Model on a batch (N, 1, *S): pad to a stride multiple (replicate), crop back, float32 output."""
    size = a.shape[2:]
    pad: list[int] = []
    for s in reversed(size):
        extra = -s % stride
        pad += [extra // 2, extra - extra // 2]
    if any(pad):
        a, b = F.pad(a, pad, mode="replicate"), F.pad(b, pad, mode="replicate")
    with torch.autocast(a.device.type, dtype=amp, enabled=amp is not None):
        f = model(a, b).float()
    crop = tuple(slice(pad[2 * i], pad[2 * i] + s) for i, s in zip(reversed(range(len(size))), size, strict=True))
    return f[(slice(None), slice(None), *crop)]


def gaussian_importance(window: Sequence[int], sigma_scale: float = 0.125) -> np.ndarray:
    """Separable Gaussian weight map for one window (peak 1 at the centre, floor 1e-3)."""
    w = np.ones((), dtype=np.float32)
    for n in window:
        x = np.arange(n, dtype=np.float64) - (n - 1) / 2
        g = np.exp(-(x**2) / (2 * (sigma_scale * n) ** 2))
        w = np.multiply.outer(w, g / g.max())
    return np.maximum(w, 1e-3).astype(np.float32)


def _starts(size: int, win: int, overlap: float) -> list[int]:
    if size <= win:
        return [0]
    step = max(1, int(win * (1 - overlap)))
    n = math.ceil((size - win) / step) + 1
    return sorted({min(i * step, size - win) for i in range(n)})


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
) -> np.ndarray:
    """Fuse arrays a, b in [0, 1] (2D (H, W) or 3D (D, H, W)) with a fusion model; float32 in [0, 1].

    `window` (one size per axis, or one for all) switches to sliding-window inference when the input
    is larger; windows overlap by the fraction `overlap` and `batch_size` of them run at once.
    """
    if a.shape != b.shape:
        raise UsageError(f"shape mismatch {a.shape} vs {b.shape}")
    if not 0 <= overlap < 1:
        raise UsageError(f"overlap must be in [0, 1), got {overlap}")
    dev = resolve_device(device)
    amp = _autocast_dtype(precision, dev)
    model = model.to(dev).eval()
    stride = int(getattr(model, "stride", 1))
    nd = a.ndim
    ta = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    tb = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))[None, None]
    if window is None:
        wins = list(a.shape)
    else:
        wins = [int(window)] * nd if np.isscalar(window) else [int(w) for w in window]
        if len(wins) != nd or min(wins) < 1:
            raise UsageError(f"window {window}: need one positive size per axis of a {nd}D input")
        wins = [min(w, s) for w, s in zip(wins, a.shape, strict=True)]
    if wins == list(a.shape):
        out = _run(model, ta.to(dev), tb.to(dev), stride, amp)
        return out[0, 0].clamp(0, 1).cpu().numpy()

    weight = gaussian_importance(wins)
    acc = np.zeros(a.shape, dtype=np.float32)
    norm = np.zeros(a.shape, dtype=np.float32)
    corners = list(itertools.product(*(_starts(s, w, overlap) for s, w in zip(a.shape, wins, strict=True))))
    for i in tqdm(
        range(0, len(corners), batch_size),
        desc="windows",
        unit="batch",
        disable=not progress or len(corners) <= batch_size,
        leave=False,
    ):
        group = corners[i : i + batch_size]
        sl = [tuple(slice(c, c + w) for c, w in zip(corner, wins, strict=True)) for corner in group]
        wa = torch.cat([ta[(slice(None), slice(None), *s)] for s in sl]).to(dev)
        wb = torch.cat([tb[(slice(None), slice(None), *s)] for s in sl]).to(dev)
        out = _run(model, wa, wb, stride, amp)[:, 0].cpu().numpy()
        for s, o in zip(sl, out, strict=True):
            acc[s] += o * weight
            norm[s] += weight
    return np.clip(acc / norm, 0.0, 1.0)


@functools.lru_cache(maxsize=4)
def _load_model(name: str, weights: str | None, pretrained: str | None) -> nn.Module:
    """Model `name` with a weights file, a shipped tag, or (neither given) its default shipped weights.

    Cached, so a folder of pairs (`fuse-dir`) builds and loads the model once.
    """
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
    stride = int(getattr(model, "stride", 1))
    out = []
    for i in range(0, len(a), max(1, int(batch_size))):
        ta = torch.from_numpy(np.ascontiguousarray(a[i : i + batch_size], dtype=np.float32))[:, None].to(dev)
        tb = torch.from_numpy(np.ascontiguousarray(b[i : i + batch_size], dtype=np.float32))[:, None].to(dev)
        out.append(_run(model, ta, tb, stride, amp)[:, 0].clamp(0, 1).cpu().numpy())
    return np.concatenate(out)
