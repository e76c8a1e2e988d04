"""Pixel statistics metrics: SD, SF, AG, CC, SCD, PSNR (2D and 3D)."""

from __future__ import annotations

import numpy as np

from neurofuse.errors import InputError, UsageError
from neurofuse.metrics.registry import combine, register_metric


def pearson(x: np.ndarray, y: np.ndarray, what: str = "CC") -> float:
    """Pearson correlation of two arrays; InputError if either is constant (undefined)."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    x = x - x.mean()
    y = y - y.mean()
    den = np.sqrt((x * x).sum() * (y * y).sum())
    if den == 0:
        raise InputError(f"{what} undefined: correlation with a constant image")
    return float((x * y).sum() / den)


@register_metric(
    "SD",
    "Standard deviation of the fused image (population, over all pixels)",
    "Rao 1997, Measurement 21(3):89 (contrast of the fused image)",
    spatial_dims=(2, 3),
)
def sd(a, b, f) -> float:
    """sqrt(mean((F - mean F)^2))."""
    return float(np.std(np.asarray(f, dtype=np.float64)))


@register_metric(
    "SF",
    "Spatial frequency sqrt(sum over axes of mean squared first differences) of F",
    "Eskicioglu & Fisher 1995, IEEE Trans. Commun. 43(12):2959",
    spatial_dims=(2, 3),
)
def sf(a, b, f, mean_over: str = "differences") -> float:
    """sqrt(RF^2 + CF^2 (+ SliceF^2)), each the RMS of first differences along one axis.

    mean_over 'differences': each sum of squared differences over the number of differences;
    'pixels' (VIFB's metricsSpatial_frequency): over the number of pixels.
    """
    f = np.asarray(f, dtype=np.float64)
    if mean_over not in ("differences", "pixels"):
        raise UsageError(f"SF mean_over must be 'differences' or 'pixels', got {mean_over!r}")
    terms = [np.diff(f, axis=ax) ** 2 for ax in range(f.ndim)]
    if mean_over == "pixels":
        return float(np.sqrt(sum(t.sum() for t in terms) / f.size))
    return float(np.sqrt(sum(np.mean(t) for t in terms)))


@register_metric(
    "AG",
    "Average gradient mean(sqrt(sum_k g_k^2 / ndim)) of F, central differences (numpy/MATLAB gradient)",
    "Cui et al. 2015, Opt. Commun. 341:199",
    spatial_dims=(2, 3),
)
def ag(a, b, f, mean_over: str = "pixels") -> float:
    """Mean over pixels of the RMS of the per-axis gradients of F.

    mean_over 'pixels': divide the sum by the number of pixels (CDDFuse's Evaluator.AG);
    'interior' (VIFB's metricsAvg_gradient, Tang's AG_evaluation): by prod(side - 1).
    """
    f = np.asarray(f, dtype=np.float64)
    s = np.sqrt(sum(g * g for g in np.gradient(f)) / f.ndim).sum()
    if mean_over == "pixels":
        return float(s / f.size)
    if mean_over == "interior":
        return float(s / np.prod([n - 1 for n in f.shape]))
    raise UsageError(f"AG mean_over must be 'pixels' or 'interior', got {mean_over!r}")


@register_metric(
    "CC",
    "Correlation coefficient (corr(A,F) + corr(B,F)) / 2",
    "Deshmukh & Bhosale 2010, Int. J. Image Process. 4(5):484",
    spatial_dims=(2, 3),
)
def cc(a, b, f, how: str = "mean") -> float:
    """Mean Pearson correlation of F with each source."""
    return combine(pearson(a, f), pearson(b, f), how)


@register_metric(
    "SCD",
    "Sum of correlations of differences corr(F-B, A) + corr(F-A, B)",
    "Aslantas & Bendes 2015, AEU Int. J. Electron. Commun. 69(12):1890",
    spatial_dims=(2, 3),
)
def scd(a, b, f) -> float:
    """How much of each source's information F carries beyond the other source."""
    a, b, f = (np.asarray(x, dtype=np.float64) for x in (a, b, f))
    return pearson(f - b, a, "SCD") + pearson(f - a, b, "SCD")


def psnr_pair(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Textbook PSNR 10 log10(range^2 / MSE); +inf for identical arrays."""
    mse = float(np.mean((np.asarray(x, dtype=np.float64) - np.asarray(y, dtype=np.float64)) ** 2))
    return float("inf") if mse == 0 else float(10.0 * np.log10(data_range**2 / mse))


def _vifb_rms(x: np.ndarray, f: np.ndarray) -> float:
    """VIFB's `mse(a, b)`: sqrt(sum((a - b)^2)) / N (the root of the summed squares over the pixel count)."""
    return float(np.sqrt(np.sum((x - f) ** 2)) / x.size)


@register_metric(
    "PSNR",
    "10 log10(peak^2 / ((MSE(A,F) + MSE(B,F)) / 2)) in dB ('mse_mean'); or mean of the two PSNRs",
    "Jagalingam & Hegde 2015, Aquatic Procedia 4:133; ClinicalFMamba table uses 'psnr_mean'",
    spatial_dims=(2, 3),
)
def psnr(a, b, f, data_range: float | str = 255.0, mode: str = "mse_mean") -> float:
    """PSNR of F against both sources.

    mode 'mse_mean': one PSNR from the mean MSE; 'psnr_mean': mean of PSNR(F,A) and PSNR(F,B);
    'vifb': VIFB's metricsPsnr, 20 log10(peak / sqrt(m)) with m the mean over sources of
    sqrt(SSE)/N (not an MSE). data_range 'max_f': the peak is max(F) (CDDFuse's Evaluator.PSNR).
    """
    a, b, f = (np.asarray(x, dtype=np.float64) for x in (a, b, f))
    peak = float(f.max()) if data_range == "max_f" else float(data_range)
    if mode == "mse_mean":
        mse = 0.5 * (np.mean((f - a) ** 2) + np.mean((f - b) ** 2))
        return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))
    if mode == "psnr_mean":
        return 0.5 * (psnr_pair(f, a, peak) + psnr_pair(f, b, peak))
    if mode == "vifb":
        m = 0.5 * (_vifb_rms(a, f) + _vifb_rms(b, f))
        return float("inf") if m == 0 else float(20.0 * np.log10(peak / np.sqrt(m)))
    raise UsageError(f"PSNR mode must be 'mse_mean', 'psnr_mean' or 'vifb', got {mode!r}")


@register_metric(
    "MSE",
    "Mean squared error (MSE(A,F) + MSE(B,F)) / 2",
    "textbook; Tang's MSE_evaluation (on [0, 1]), CDDFuse's Evaluator.MSE (on 0-255)",
    higher_is_better=False,
    spatial_dims=(2, 3),
)
def mse(a, b, f) -> float:
    """Mean over the two sources of the mean squared difference to F."""
    a, b, f = (np.asarray(x, dtype=np.float64) for x in (a, b, f))
    return float(0.5 * (np.mean((f - a) ** 2) + np.mean((f - b) ** 2)))


@register_metric(
    "RMSE_vifb",
    "VIFB's RMSE: mean over sources of sqrt(sum((S - F)^2)) / N (as published; not a root mean square)",
    "Zhang, Ye & Xiao 2020, VIFB (CVPRW), metricsRmse.m",
    higher_is_better=False,
    spatial_dims=(2, 3),
)
def rmse_vifb(a, b, f) -> float:
    """VIFB's metricsRmse value."""
    a, b, f = (np.asarray(x, dtype=np.float64) for x in (a, b, f))
    return 0.5 * (_vifb_rms(a, f) + _vifb_rms(b, f))
