"""Fusion quality metrics with explicit conventions (`compute_metrics`, `METRICS`, presets).

Inputs are float arrays in [0, 1] (2D gray/Y images or 3D volumes); a preset decides how each
metric sees them (8-bit levels or [0, 1]), how the two sources combine and which variant a name
means. See docs/metrics.md for every formula and convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from neurofuse.errors import InputError, UsageError
from neurofuse.metrics import fmi, fsim, information, perceptual, statistics, structural, vif  # noqa: F401
from neurofuse.metrics.inputs import channel_triplets, is_color, to_gray
from neurofuse.metrics.presets import FLAGS, PRESETS, Convention, Preset, describe, get_preset
from neurofuse.metrics.registry import METRICS, MetricSpec, check_triplet, get_metric, register_metric

SLICE_AXES = {"sagittal": 0, "coronal": 1, "axial": 2}
_RANGE_TOL = 1e-3


def _prepare(x: np.ndarray, conv: Convention) -> np.ndarray:
    y = np.asarray(x, dtype=np.float64) * conv.scale
    return np.round(y) if conv.quantize else y


def _slicewise(spec: MetricSpec, a, b, f, axis: int, options: dict) -> float:
    """Mean of a 2D metric over the slices along `axis` that hold signal in A or B."""
    vals = []
    for i in range(a.shape[axis]):
        sa, sb, sf = (np.take(x, i, axis=axis) for x in (a, b, f))
        if np.ptp(sa) == 0 and np.ptp(sb) == 0:
            continue
        try:
            vals.append(spec.fn(sa, sb, sf, **options))
        except InputError:  # a slice where the metric is undefined (e.g. one source empty) is skipped
            continue
    if not vals:
        raise InputError(f"{spec.name}: no slice along axis {axis} where the metric is defined")
    return float(np.mean(vals))


def compute_metrics(
    a: np.ndarray,
    b: np.ndarray,
    f: np.ndarray,
    metrics: Sequence[str] | None = None,
    preset: str = "standard",
    slicewise: str | None = None,
    per_slice: Sequence[str] = (),
) -> dict[str, float]:
    """Metrics of fused F against sources A and B, all float arrays in [0, 1] of one 2D or 3D shape.

    metrics: names from `METRICS` (None: the preset's default list for the input's dimension).
    slicewise: for 3D input, compute 2D-only metrics as the mean over 'axial' (last axis), 'coronal'
    or 'sagittal' (first axis) slices; without it a 2D-only metric on a volume is a UsageError.
    per_slice: metrics that, on 3D input, are computed slice-wise too although they have a 3D form
    (e.g. SSIM per axial slice, as 2D tables report it); needs `slicewise`. 2D input ignores it.
    """
    a, b, f = (np.asarray(x) for x in (a, b, f))
    check_triplet(a, b, f)
    for arr, nm in ((a, "A"), (b, "B"), (f, "F")):
        if arr.min() < -_RANGE_TOL or arr.max() > 1 + _RANGE_TOL:
            raise InputError(f"{nm}: values must lie in [0, 1], got [{arr.min():.4g}, {arr.max():.4g}]")
    p: Preset = get_preset(preset)
    names = list(metrics) if metrics is not None else list(p.default_2d if a.ndim == 2 else p.default_3d)
    if slicewise is not None and slicewise not in SLICE_AXES:
        raise UsageError(f"slicewise must be one of {', '.join(SLICE_AXES)}, got {slicewise!r}")
    if a.ndim == 3 and per_slice and slicewise is None:
        raise UsageError(f"per_slice {', '.join(per_slice)} needs slicewise='axial', 'coronal' or 'sagittal'")
    cache: dict[tuple[float, bool], tuple[np.ndarray, ...]] = {}
    out: dict[str, float] = {}
    for name in names:
        spec = get_metric(name)
        conv = p.convention(name)
        key = (conv.scale, conv.quantize)
        if key not in cache:
            cache[key] = tuple(_prepare(np.clip(x, 0.0, 1.0), conv) for x in (a, b, f))
        xa, xb, xf = cache[key]
        opts = dict(conv.options)
        if a.ndim in spec.spatial_dims and not (a.ndim == 3 and name in per_slice):
            out[name] = float(spec.fn(xa, xb, xf, **opts))
        elif a.ndim == 3 and slicewise is not None:
            out[name] = _slicewise(spec, xa, xb, xf, SLICE_AXES[slicewise], opts)
        else:
            raise UsageError(
                f"metric {name} is defined on {'/'.join(f'{d}D' for d in spec.spatial_dims)} input only; "
                "use slicewise='axial' (CLI: --slicewise axial) for volumes"
            )
    return out


def compute_metrics_image(
    a: np.ndarray,
    b: np.ndarray,
    f: np.ndarray,
    metrics: Sequence[str] | None = None,
    preset: str = "standard",
    slicewise: str | None = None,
) -> dict[str, float]:
    """`compute_metrics` for images that may be colour ((H, W, 3) RGB in [0, 1], 8-bit files / 255).

    Colour is handled as the preset's toolbox does (`Preset.gray`): converted to gray by its rule, or
    for `vifb` every metric on each RGB channel (a gray source with every channel) and the mean over
    channels, except SF, which VIFB computes on the three planes side by side.
    """
    p = get_preset(preset)
    arrs = [np.asarray(x, dtype=np.float64) for x in (a, b, f)]
    if not any(is_color(x) for x in arrs):
        return compute_metrics(*arrs, metrics, preset, slicewise)
    if p.gray != "per_channel":
        return compute_metrics(*(to_gray(x, p.gray) for x in arrs), metrics, preset, slicewise)
    chans = channel_triplets(*arrs)
    names = list(metrics) if metrics is not None else list(p.default_2d)
    per = [compute_metrics(*t, [m for m in names if m != "SF"], preset, slicewise) for t in chans]
    out = {}
    for m in names:
        if m == "SF":
            planes = [np.concatenate([t[i] for t in chans], axis=1) for i in range(3)]
            out[m] = compute_metrics(*planes, ["SF"], preset)["SF"]
        else:
            out[m] = float(np.mean([v[m] for v in per]))
    return out


def metric_conventions(names: Sequence[str], preset: str = "standard") -> dict[str, str]:
    """For each metric name, the one-line convention the preset computes it with (and any flag)."""
    p = get_preset(preset)
    out = {}
    for m in names:
        text = describe(m, get_metric(m).fn, p.convention(m))
        if p.gray != "luma":
            text += f"; colour: {p.gray}"
        out[m] = text + (f"; FLAG: {FLAGS[m]}" if m in FLAGS else "")
    return out


__all__ = [
    "METRICS",
    "PRESETS",
    "Convention",
    "MetricSpec",
    "Preset",
    "compute_metrics",
    "compute_metrics_image",
    "metric_conventions",
    "get_metric",
    "get_preset",
    "register_metric",
]
