"""Information-theoretic fusion metrics: EN, EN_unique, MI, NMI.

Histograms follow the fusion toolboxes: 256 bins of unit width over 8-bit gray levels [0, 256).
"""

from __future__ import annotations

import numpy as np

from neurofuse.errors import InputError
from neurofuse.metrics.registry import combine, register_metric

_LOG = {"bits": np.log2, "nats": np.log}


def _log_fn(unit: str):
    if unit not in _LOG:
        raise InputError(f"unit must be 'bits' or 'nats', got {unit!r}")
    return _LOG[unit]


def _bin_index(x: np.ndarray, bins: int, value_range: tuple[float, float]) -> np.ndarray:
    lo, hi = value_range
    idx = np.floor((np.asarray(x, dtype=np.float64).ravel() - lo) * (bins / (hi - lo))).astype(np.int64)
    return np.clip(idx, 0, bins - 1)


def _entropy_of_counts(counts: np.ndarray, unit: str) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * _log_fn(unit)(p)).sum())


def entropy(x: np.ndarray, bins: int = 256, value_range=(0.0, 256.0), unit: str = "bits") -> float:
    """Shannon entropy of the `bins`-bin histogram of x over `value_range`."""
    return _entropy_of_counts(np.bincount(_bin_index(x, bins, value_range), minlength=bins), unit)


def mutual_information(
    x: np.ndarray, y: np.ndarray, bins: int = 256, value_range=(0.0, 256.0), unit: str = "bits",
    joint_saturate: bool = False,
) -> tuple[float, float, float]:
    """(MI(x, y), H(x), H(y)) from the joint `bins` x `bins` histogram.

    joint_saturate: the joint histogram merges the top level into the one below, as Tang's Hab.m does
    (its `uint8 + 1` index saturates at 255), while the marginal entropies keep every level.
    """
    ix, iy = _bin_index(x, bins, value_range), _bin_index(y, bins, value_range)
    joint = np.bincount(ix * bins + iy, minlength=bins * bins).reshape(bins, bins)
    hx = _entropy_of_counts(joint.sum(1), unit)
    hy = _entropy_of_counts(joint.sum(0), unit)
    if joint_saturate:
        jx, jy = np.minimum(ix, bins - 2), np.minimum(iy, bins - 2)
        joint = np.bincount(jx * bins + jy, minlength=bins * bins)
    hxy = _entropy_of_counts(joint.ravel(), unit)
    mi = hx + hy - hxy
    return (mi if joint_saturate else max(mi, 0.0)), hx, hy


@register_metric(
    "EN",
    "Shannon entropy of the fused image's 256-bin gray-level histogram (bits)",
    "Roberts, Van Aardt & Ahmed 2008, J. Appl. Remote Sens. 2:023522",
    spatial_dims=(2, 3),
)
def en(a, b, f, bins: int = 256, value_range=(0.0, 256.0), unit: str = "bits") -> float:
    """EN(F): -sum p log p over a fixed-bin histogram of F (8-bit levels by default)."""
    return entropy(f, bins, value_range, unit)


@register_metric(
    "EN_unique",
    "Shannon entropy over the distinct float values of the fused image (bits); ClinicalFMamba's EN",
    "ClinicalFMamba (MLMI 2025) evaluation code; ceiling log2(number of pixels)",
    spatial_dims=(2, 3),
)
def en_unique(a, b, f, unit: str = "bits") -> float:
    """Entropy of the empirical distribution of F's distinct values (no binning)."""
    _, counts = np.unique(np.asarray(f).ravel(), return_counts=True)
    return _entropy_of_counts(counts, unit)


@register_metric(
    "MI",
    "Mutual information MI(A,F) + MI(B,F) from 256-bin joint histograms (bits)",
    "Qu, Zhang & Yan 2002, Electron. Lett. 38(7):313",
    spatial_dims=(2, 3),
)
def mi(
    a, b, f, bins: int = 256, value_range=(0.0, 256.0), unit: str = "bits", how: str = "sum", rescale: bool = False,
    joint_saturate: bool = False,
) -> float:
    """MI of each source with F, combined by `how` ('sum' as Qu et al.; 'mean' optional).

    rescale: first min-max each image to 0-255 and round half away from zero (VIFB's metricsMutinf,
    `int16(x * 255)`); a constant image becomes 0.
    """
    if rescale:
        a, b, f = (_rescale255(x) for x in (a, b, f))
    return combine(
        mutual_information(a, f, bins, value_range, unit, joint_saturate)[0],
        mutual_information(b, f, bins, value_range, unit, joint_saturate)[0],
        how,
    )


def _rescale255(x: np.ndarray) -> np.ndarray:
    """Min-max to [0, 255], rounded half away from zero (MATLAB int16); constant -> zeros."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        return np.zeros_like(x)
    y = (x - lo) / (hi - lo) * 255.0
    return np.floor(y + 0.5)


@register_metric(
    "CE",
    "Cross entropy (mean over sources) of F's 256-bin histogram to each source's, bits, lower better",
    "VIFB (Zhang, Ye & Xiao 2020) metricsCross_entropy.m",
    higher_is_better=False,
    spatial_dims=(2, 3),
)
def ce(a, b, f, bins: int = 256, value_range=(0.0, 256.0)) -> float:
    """(CE(A,F) + CE(B,F)) / 2, CE(S,F) = sum over levels where both are non-zero of p_S log2(p_S / p_F)."""

    def one(s):
        ps = np.bincount(_bin_index(s, bins, value_range), minlength=bins) / np.asarray(s).size
        pf = np.bincount(_bin_index(f, bins, value_range), minlength=bins) / np.asarray(f).size
        m = (ps != 0) & (pf != 0)
        return float((ps[m] * np.log2(ps[m] / pf[m])).sum())

    return 0.5 * (one(a) + one(b))


@register_metric(
    "NMI",
    "Normalised MI: 2 [MI(A,F)/(H(A)+H(F)) + MI(B,F)/(H(B)+H(F))], in [0, 2]",
    "Hossny, Nahavandi & Creighton 2008, Electron. Lett. 44(18):1066",
    spatial_dims=(2, 3),
)
def nmi(a, b, f, bins: int = 256, value_range=(0.0, 256.0)) -> float:
    """Hossny's normalised MI; undefined (InputError) when a source and F are both constant."""
    total = 0.0
    for src, nm in ((a, "A"), (b, "B")):
        m, hs, hf = mutual_information(src, f, bins, value_range)
        if hs + hf == 0:
            raise InputError(f"NMI undefined: {nm} and F are both constant")
        total += m / (hs + hf)
    return 2.0 * total
