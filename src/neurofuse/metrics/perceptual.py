"""Human-perception-based metrics: Qcb (Chen & Blum 2009) and Qcv (Chen & Varshney 2007).

Both follow VIFB's metricsQcb.m / metricsQcv.m (Zhang et al. 2020; the same code as Liu's toolbox and
MEFB) step by step: a contrast sensitivity function (CSF) applied in the frequency domain on a
MATLAB `freqspace` grid, complex intermediate values kept as the reference keeps them.
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
    """Filter img by a centred (fftshifted) frequency response: MATLAB `ifft2(ifftshift(fftshift(fft2(x)).*H))`.

    The result is complex: on an even-sized freqspace grid the response is not conjugate-symmetric,
    and the reference code keeps the complex values (Qcb takes magnitudes, Qcv squares them).
    """
    return np.fft.ifft2(np.fft.fft2(img) * np.fft.ifftshift(response))


def _normalize255(x: np.ndarray) -> np.ndarray:
    """VIFB's normalize1: min-max to [0, 255] and round (an all-zero image is kept)."""
    x = np.asarray(x, dtype=np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi == lo:
        if hi == 0:
            return x
        raise InputError("Qcb/Qcv undefined: constant image (min-max normalisation divides by zero)")
    return np.floor((x - lo) / (hi - lo) * 255.0 + 0.5)  # MATLAB round: half away from zero (x >= 0)


def _filter2_same(x: np.ndarray, k1d: np.ndarray) -> np.ndarray:
    """MATLAB filter2(k1d' * k1d, x, 'same') with zero padding, for real or complex x (separable kernel)."""

    def real(y):
        return ndimage.correlate1d(ndimage.correlate1d(y, k1d, axis=0, mode="constant"), k1d, axis=1, mode="constant")

    return real(x.real) + 1j * real(x.imag) if np.iscomplexobj(x) else real(x)


def _qcb_gauss(sigma: float) -> np.ndarray:
    """1D factor of VIFB's gaussian2d: the 31x31 grid exp(-(x^2+y^2)/(2 s^2)) / (2 pi s^2), unnormalised."""
    t = np.arange(-15, 16, dtype=np.float64)
    return np.exp(-(t * t) / (2 * sigma * sigma)) / np.sqrt(2 * np.pi * sigma * sigma)


@register_metric(
    "Qcb",
    "Chen-Blum: CSF-filtered local contrast preservation of each source in F, saliency-weighted, in [0, 1]",
    "Chen & Blum 2009, Image Vis. Comput. 27(10):1421; as VIFB's metricsQcb.m",
)
def qcb(a, b, f) -> float:
    """Mean over pixels of lambda_A Q_AF + lambda_B Q_BF, exactly as VIFB's metricsQcb.m.

    Images min-max to 0-255 and rounded; DoG CSF (f0 15.3870, f1 1.3456, a 0.7622) on a freqspace
    grid scaled by size/30 (complex result kept); contrast filter2(G_2, I) ./ filter2(G_4, I) - 1 with
    31x31 unnormalised Gaussians (sigma 2, 4) and zero padding, magnitude, masked C^3/(C^2 + 1e-4).
    """
    a, b, f = (_normalize255(x) for x in (a, b, f))
    rows, cols = f.shape
    r = _freq_radius(rows, cols, 30.0)
    f0, f1, amp = 15.3870, 1.3456, 0.7622
    csf = np.exp(-((r / f0) ** 2)) - amp * np.exp(-((r / f1) ** 2))
    g2, g4 = _qcb_gauss(2.0), _qcb_gauss(4.0)

    def contrast(x):
        xf = _csf_filter(x, csf)
        with np.errstate(divide="ignore", invalid="ignore"):
            c = np.abs(_filter2_same(xf, g2) / _filter2_same(xf, g4) - 1.0)
        return c**3 / (c**2 + 1e-4)

    ca, cb_, cf = contrast(a), contrast(b), contrast(f)
    with np.errstate(divide="ignore", invalid="ignore"):
        qaf = np.where(ca < cf, ca / cf, cf / ca)
        qbf = np.where(cb_ < cf, cb_ / cf, cf / cb_)
        lam_a = ca**2 / (ca**2 + cb_**2)
        q = lam_a * qaf + (cb_**2 / (ca**2 + cb_**2)) * qbf
    if not np.all(np.isfinite(q)):
        raise InputError("Qcb undefined: a contrast map is zero where the ratios divide by it")
    return float(np.mean(q))


def _block_reduce(x: np.ndarray, block: int, fn) -> np.ndarray:
    """Apply a reduction over non-overlapping block x block tiles (zero padded at the far edges, as blkproc)."""
    rows, cols = x.shape
    pr, pc = (-rows) % block, (-cols) % block
    x = np.pad(x, ((0, pr), (0, pc)))
    t = x.reshape(x.shape[0] // block, block, x.shape[1] // block, block)
    return fn(t, axis=(1, 3))


@register_metric(
    "Qcv",
    "Chen-Varshney: saliency-weighted CSF-filtered squared difference of F to each source (16x16 blocks)",
    "Chen & Varshney 2007, Inf. Fusion 8(2):193; as VIFB's metricsQcv.m",
    higher_is_better=False,
)
def qcv(a, b, f, block: int = 16, alpha: float = 5.0) -> float:
    """sum(lambda_A D_A + lambda_B D_B) / sum(lambda_A + lambda_B), exactly as VIFB's metricsQcv.m.

    Images min-max to 0-255 and rounded; lambda = per block sum of |Sobel|^alpha (filter2, zero
    padding); D = per block mean of the squared (complex) Mannos-Sakrison-filtered difference S - F
    on a freqspace grid scaled by size/8; the real part of the result (the reference's is complex).
    """
    a, b, f = (_normalize255(x) for x in (a, b, f))
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
    return float(((lam_a * da + lam_b * db).sum() / den).real)
