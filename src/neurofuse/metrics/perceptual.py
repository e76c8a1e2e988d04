"""Human-perception-based metrics: Qcb (Chen & Blum 2009) and Qcv (Chen & Varshney 2007).

Both follow VIFB's metricsQcb.m / metricsQcv.m (Zhang et al. 2020; the same code as Liu's toolbox and
MEFB) step by step: a contrast sensitivity function (CSF) applied in the frequency domain on a
MATLAB `freqspace` grid, complex intermediate values kept as the reference keeps them.

Round-off matters here, and is reproduced. Far (about 25 px) from any non-zero pixel the CSF-filtered
image is below the FFT's round-off, and Qcb's local contrast there, filter2(G2, x) ./ filter2(G4, x) - 1,
is a ratio of round-off values: on the PET-MRI fixtures (black backgrounds) about 10% of the pixels.
The toolbox value thus depends on the last bits of the CSF response and on the FFT library: Octave's
own Qcb moves by up to 2.1e-3 (relative) when the three images are flipped or transposed, and numpy's,
scipy's and FFTW's transforms differ from each other by as much. So the CSF response is computed in the
toolbox's operation order with the C library's exp and pow (numpy's SIMD exp differs in the last bit)
and the filter runs through FFTW (pyFFTW) planned and laid out as MATLAB/Octave call it: the
column-major array, a real-to-complex forward transform with the other half filled by conjugates, a
complex backward transform, each component divided by the number of pixels. That reproduces Octave's
filtered images bit for bit and its Qcb to ~1e-13. Without pyFFTW numpy's FFT is used (agreement then
~1e-3 on images with large black backgrounds, ~1e-7 otherwise).
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import ndimage

from neurofuse.errors import InputError
from neurofuse.metrics.registry import register_metric


def _libm(fn, x: np.ndarray, *args: float) -> np.ndarray:
    """fn (math.exp, math.pow) applied element by element through the C library, as MATLAB/Octave do."""
    return np.frompyfunc(lambda v: fn(v, *args), 1, 1)(x).astype(np.float64)


def _freq_radius(rows: int, cols: int, scale: float) -> np.ndarray:
    """Radial frequency of MATLAB freqspace([rows, cols], 'meshgrid'), axes scaled by size/`scale`.

    In the toolboxes' order: u = (cols/scale) * u (not u * cols / scale, which rounds differently).
    """

    def fs(n):
        return (np.arange(n) - np.floor(n / 2)) * (2.0 / n)

    u, v = np.meshgrid((cols / scale) * fs(cols), (rows / scale) * fs(rows))
    return np.sqrt(u * u + v * v)


@functools.cache
def _pyfftw():
    try:
        import pyfftw
    except ImportError:  # pragma: no cover - pyfftw is a dependency; numpy is the fallback
        return None
    return pyfftw


def _csf_filter(img: np.ndarray, response: np.ndarray) -> np.ndarray:
    """Filter img by a centred (fftshifted) frequency response: MATLAB `ifft2(ifftshift(fftshift(fft2(x)).*H))`.

    The result is complex (imaginary parts of round-off size) and is kept so: Qcb takes magnitudes of
    ratios of it, Qcv squares it. FFTW as MATLAB/Octave run it where pyFFTW is installed (module doc).
    """
    fftw = _pyfftw()
    h = np.fft.ifftshift(response)
    if fftw is None:
        return np.fft.ifft2(np.fft.fft2(img) * h)
    rows, cols = img.shape
    flags = ("FFTW_ESTIMATE",)
    # MATLAB arrays are column-major: the C-order array FFTW sees is the transpose.
    x = fftw.empty_aligned((cols, rows), dtype="float64")
    half = fftw.empty_aligned((cols, rows // 2 + 1), dtype="complex128")
    forward = fftw.FFTW(x, half, axes=(0, 1), flags=flags, threads=1)
    x[...] = img.T
    forward()
    spec = fftw.empty_aligned((cols, rows), dtype="complex128")
    out = fftw.empty_aligned((cols, rows), dtype="complex128")
    backward = fftw.FFTW(spec, out, axes=(0, 1), direction="FFTW_BACKWARD", flags=flags, threads=1)
    spec[:, : rows // 2 + 1] = half
    j = np.arange(rows // 2 + 1, rows)
    spec[:, j] = np.conj(half[(-np.arange(cols)[:, None]) % cols, (rows - j)[None, :]])
    spec *= h.T
    backward(normalise_idft=False)
    parts = out.view(np.float64) / float(rows * cols)  # real and imaginary parts each divided, as Octave
    return parts.view(np.complex128).T


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
    csf = _libm(math.exp, -((r / f0) ** 2)) - amp * _libm(math.exp, -((r / f1) ** 2))
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
    csf = 2.6 * (0.0192 + 0.144 * r) * _libm(math.exp, -_libm(math.pow, 0.144 * r, 1.1))
    da = _block_reduce(_csf_filter(a - f, csf) ** 2, block, np.sum) / block**2
    db = _block_reduce(_csf_filter(b - f, csf) ** 2, block, np.sum) / block**2
    den = float((lam_a + lam_b).sum())
    if den == 0:
        raise InputError("Qcv undefined: both sources have no edges (constant images)")
    return float(((lam_a * da + lam_b * db).sum() / den).real)
