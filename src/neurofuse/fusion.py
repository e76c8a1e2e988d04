"""Registry of fusion methods (classical and learned) and the `fuse` entry point.

A method is a function `(a, b, **options) -> f` on float arrays in [0, 1] of the same shape, 2D
(H, W) or 3D (D, H, W); it returns the fused array in [0, 1] with that shape. Classical methods live
in `neurofuse.baselines`, learned ones in `neurofuse.learned` (neither imports torch: a learned
method loads its model when it runs).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from neurofuse.errors import InputError, UsageError

FuseFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class FusionMethod:
    """A registered fusion method: its name, one-line description and implementation."""

    name: str
    description: str
    fn: FuseFn
    kind: str = "classical"
    spatial_dims: tuple[int, ...] = (2, 3)
    models: dict[int, str] = field(default_factory=dict)  # learned: spatial_dims -> registered model name


_METHODS: dict[str, FusionMethod] = {}
_PROVIDERS = ("neurofuse.baselines", "neurofuse.learned")


def register_method(
    name: str,
    description: str,
    kind: str = "classical",
    spatial_dims: tuple[int, ...] = (2, 3),
    models: dict[int, str] | None = None,
) -> Callable[[FuseFn], FuseFn]:
    """Decorator: register `fn` as fusion method `name` (`models`: the networks a learned method runs)."""

    def deco(fn: FuseFn) -> FuseFn:
        if name in _METHODS:
            raise ValueError(f"fusion method {name!r} registered twice")
        _METHODS[name] = FusionMethod(name, description, fn, kind, spatial_dims, dict(models or {}))
        return fn

    return deco


def _load_providers() -> None:
    for mod in _PROVIDERS:
        importlib.import_module(mod)


def list_methods(kind: str | None = None) -> list[FusionMethod]:
    """All registered methods (optionally one kind: "classical" or "learned"), sorted by name."""
    _load_providers()
    return sorted((m for m in _METHODS.values() if kind in (None, m.kind)), key=lambda m: m.name)


def get_method(name: str) -> FusionMethod:
    """The method registered as `name`, or a UsageError listing the available ones."""
    _load_providers()
    if name not in _METHODS:
        raise UsageError(f"unknown fusion method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def check_pair(a: np.ndarray, b: np.ndarray, names: tuple[str, str] = ("A", "B")) -> None:
    """Raise InputError unless a and b are finite, non-constant arrays of one 2D/3D shape."""
    for arr, nm in zip((a, b), names, strict=True):
        if arr.ndim not in (2, 3):
            raise InputError(f"{nm}: expected a 2D image or 3D volume, got {arr.ndim}D shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{nm}: contains NaN or Inf values")
        if arr.size == 0 or float(arr.max()) == float(arr.min()):
            raise InputError(f"{nm}: image is empty or constant")
    if a.shape != b.shape:
        raise InputError(f"{names[0]} and {names[1]}: shape mismatch {a.shape} vs {b.shape} (use `resample=True`)")


def _checked_method(a: np.ndarray, b: np.ndarray, method: str, options: dict) -> FusionMethod:
    """The method `method` after checking the pair, its dimensionality and the option names."""
    check_pair(a, b)
    m = get_method(method)
    if a.ndim not in m.spatial_dims:
        raise UsageError(f"method {method!r} supports {m.spatial_dims}D input, got {a.ndim}D")
    accepted = inspect.signature(m.fn).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(options) - set(list(accepted)[2:]))
        if unknown:
            raise UsageError(
                f"method {method!r} has no option {', '.join(unknown)}; it takes {list(accepted)[2:] or 'none'}"
            )
    return m


def fuse(a: np.ndarray, b: np.ndarray, method: str = "average", **options) -> np.ndarray:
    """Fuse two co-registered arrays in [0, 1] (same 2D or 3D shape) with a registered method."""
    m = _checked_method(a, b, method, options)
    out = m.fn(a.astype(np.float32, copy=False), b.astype(np.float32, copy=False), **options)
    return np.clip(np.asarray(out, dtype=np.float32), 0.0, 1.0)


def fuse_many(pairs: Sequence[tuple[np.ndarray, np.ndarray]], method: str = "average", **options) -> list[np.ndarray]:
    """`fuse` for several pairs of one shape: a method with a batch form (`fn.batch`, the learned ones)
    runs them together (one forward pass for 2D), any other pair by pair. Same results as `fuse`."""
    pairs = list(pairs)
    m = get_method(method)
    batch = getattr(m.fn, "batch", None)
    if batch is None or len(pairs) < 2:
        return [fuse(a, b, method, **options) for a, b in pairs]
    for a, b in pairs:
        _checked_method(a, b, method, options)
        if a.shape != pairs[0][0].shape:
            raise UsageError(f"fuse_many: pairs of one shape only, got {pairs[0][0].shape} and {a.shape}")
    stack_a = np.stack([a.astype(np.float32, copy=False) for a, _ in pairs])
    stack_b = np.stack([b.astype(np.float32, copy=False) for _, b in pairs])
    out = batch(stack_a, stack_b, **options)
    return [np.clip(np.asarray(f, dtype=np.float32), 0.0, 1.0) for f in out]


def fuse_axial(a: np.ndarray, b: np.ndarray, method: str, **options) -> np.ndarray:
    """Fuse two volumes in [0, 1] axial slice by axial slice (third axis) with a 2D fusion method.

    Slices where both inputs are constant (outside the brain) stay 0; where only one is, the fused slice
    is the other one (there is nothing to fuse it with).
    """
    out = np.zeros_like(a, dtype=np.float32)
    for k in range(a.shape[2]):
        sa, sb = a[:, :, k], b[:, :, k]
        flat_a, flat_b = sa.max() == sa.min(), sb.max() == sb.min()
        if flat_a and flat_b:
            continue
        out[:, :, k] = sb if flat_a else sa if flat_b else fuse(sa, sb, method, **options)
    return out
