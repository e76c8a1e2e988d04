"""Human-perception-based metrics: Qcb (Chen & Blum 2009) and Qcv (Chen & Varshney 2007).

Both filter images with a contrast sensitivity function (CSF) in the frequency domain on a
`freqspace`-style grid, as the VIFB toolbox (Zhang et al. 2020) does.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from neurofuse.errors import InputError
from neurofuse.metrics.registry import register_metric


def _freq_radius(rows: int, cols: int, scale: float) -> np.ndarray:
    """Radial frequency of MATLAB freqspace([rows, cols], 'meshgrid'), axes scaled by size/`scale`."""

    def fs(n):
        return (np.arange(n) - np.floor(n / 2)) * (2.0 / n)

    u, v = np.meshgrid(fs(cols) * cols / scale, fs(rows) * rows / scale)
    return np.sqrt(u * u + v * v)


def _csf_filter(img: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Filter img by a centred (fftshifted) frequency response; real part of the result."""
    return np.fft.ifft2(np.fft.fft2(img) * np.fft.ifftshift(response)).real


def _normalize255(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return x if hi == lo else np.round((x - lo) / (hi - lo) * 255.0)


def _safe_ratio(num: np.ndarray, den: np.ndarray, both_zero: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / den
    return np.where((num == 0) & (den == 0), both_zero, np.where(den == 0, 0.0, r))


@register_metric(
    "Qcb",
    "Chen-Blum: CSF-filtered local contrast preservation of each source in F, saliency-weighted, in [0, 1]",
    "Chen & Blum 2009, Image Vis. Comput. 27(10):1421",
)
def qcb(a, b, f) -> float:
    """Mean over pixels of lambda_A Q_AF + lambda_B Q_BF (DoG CSF; Gaussians sigma 2 and 4)."""
    a, b, f = (_normalize255(np.asarray(x, dtype=np.float64)) for x in (a, b, f))
    rows, cols = f.shape
    r = _freq_radius(rows, cols, 30.0)
    f0, f1, amp = 15.3870, 1.3456, 0.7622
    csf = np.exp(-((r / f0) ** 2)) - amp * np.exp(-((r / f1) ** 2))

    def contrast(x):
        xf = _csf_filter(x, csf)
        g1 = ndimage.gaussian_filter(xf, 2.0, mode="constant", truncate=4.0)
        g2 = ndimage.gaussian_filter(xf, 4.0, mode="constant", truncate=4.0)
        c = np.abs(_safe_ratio(g1, g2, 1.0) - 1.0)
        return c**3 / (c**2 + 1e-4)

    ca, cb_, cf = contrast(a), contrast(b), contrast(f)
    qaf = _safe_ratio(np.minimum(ca, cf), np.maximum(ca, cf), 1.0)
    qbf = _safe_ratio(np.minimum(cb_, cf), np.maximum(cb_, cf), 1.0)
    lam_a = _safe_ratio(ca**2, ca**2 + cb_**2, 0.5)
    return float(np.mean(lam_a * qaf + (1.0 - lam_a) * qbf))


def _block_reduce(x: np.ndarray, block: int, fn) -> np.ndarray:
    """Apply a reduction over non-overlapping block x block tiles (zero padded at the far edges)."""
    rows, cols = x.shape
    pr, pc = (-rows) % block, (-cols) % block
    x = np.pad(x, ((0, pr), (0, pc)))
    t = x.reshape(x.shape[0] // block, block, x.shape[1] // block, block)
    return fn(t, axis=(1, 3))


@register_metric(
    "Qcv",
    "Chen-Varshney: saliency-weighted CSF-filtered squared difference of F to each source (16x16 blocks)",
    "Chen & Varshney 2007, Inf. Fusion 8(2):193",
    higher_is_better=False,
)
def qcv(a, b, f, block: int = 16, alpha: float = 5.0) -> float:
    """sum(lambda_A D_A + lambda_B D_B) / sum(lambda_A + lambda_B); lambda = sum of |Sobel|^alpha per block."""
    a, b, f = (np.asarray(x, dtype=np.float64) for x in (a, b, f))
    sx = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])

    def saliency(x):
        g = np.hypot(ndimage.correlate(x, sx, mode="constant"), ndimage.correlate(x, sx.T, mode="constant"))
        return _block_reduce(g**alpha, block, np.sum)

    lam_a, lam_b = saliency(a), saliency(b)
    rows, cols = f.shape
    r = _freq_radius(rows, cols, 8.0)
    csf = 2.6 * (0.0192 + 0.144 * r) * np.exp(-((0.144 * r) ** 1.1))
    da = _block_reduce(_csf_filter(a - f, csf) ** 2, block, np.sum) / block**2
    db = _block_reduce(_csf_filter(b - f, csf) ** 2, block, np.sum) / block**2
    den = float((lam_a + lam_b).sum())
    if den == 0:
        raise InputError("Qcv undefined: both sources have no edges (constant images)")
    return float((lam_a * da + lam_b * db).sum() / den)
