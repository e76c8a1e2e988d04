"""Metric registry: every fusion quality metric with its definition, direction and reference.

A metric is a function `fn(a, b, f, **convention) -> float` on arrays of one shape in the range its
convention declares (the presets in `neurofuse.metrics.presets` decide the range and options).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from neurofuse.errors import InputError, UsageError

MetricFn = Callable[..., float]


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: name, implementation, one-line definition, direction and reference."""

    name: str
    fn: MetricFn
    definition: str
    higher_is_better: bool
    reference: str
    spatial_dims: tuple[int, ...] = (2,)

    @property
    def direction(self) -> str:
        """'higher' or 'lower' (which way is better)."""
        return "higher" if self.higher_is_better else "lower"


METRICS: dict[str, MetricSpec] = {}


def register_metric(
    name: str, definition: str, reference: str, higher_is_better: bool = True, spatial_dims=(2,)
) -> Callable[[MetricFn], MetricFn]:
    """Decorator: register `fn` as metric `name` (names are unique)."""

    def deco(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} registered twice")
        METRICS[name] = MetricSpec(name, fn, definition, higher_is_better, reference, tuple(spatial_dims))
        return fn

    return deco


def get_metric(name: str) -> MetricSpec:
    """The metric registered as `name`, or a UsageError listing the known ones."""
    if name not in METRICS:
        raise UsageError(f"unknown metric {name!r}; available: {', '.join(METRICS)}")
    return METRICS[name]


def check_triplet(a: np.ndarray, b: np.ndarray, f: np.ndarray, dims: tuple[int, ...] = (2, 3)) -> None:
    """Raise InputError unless a, b, f are finite arrays of one shape with a supported dimension."""
    if not (a.shape == b.shape == f.shape):
        raise InputError(f"shape mismatch: A {a.shape}, B {b.shape}, F {f.shape}")
    if a.ndim not in dims:
        raise InputError(f"expected a {' or '.join(f'{d}D' for d in dims)} array, got shape {a.shape}")
    for arr, nm in ((a, "A"), (b, "B"), (f, "F")):
        if not np.all(np.isfinite(arr)):
            raise InputError(f"{nm}: contains NaN or Inf values")


def combine(v_a: float, v_b: float, how: str) -> float:
    """Combine the A-F and B-F values of a per-source metric: 'mean' or 'sum'."""
    if how == "mean":
        return 0.5 * (v_a + v_b)
    if how == "sum":
        return v_a + v_b
    raise UsageError(f"combine must be 'mean' or 'sum', got {how!r}")
