"""FSIM (Zhang, Zhang, Mou & Zhang 2011) with Kovesi phase congruency, vectorised over filters.

All log-Gabor x angular filters of one image are applied in one batched FFT. Fusion FSIM is the
mean of FSIM(A, F) and FSIM(B, F). Two conventions:
- `fsim` (standard): the published FSIM: 4 scales, 4 orientations, sigmaOnf 0.55, gradient with
  the Scharr kernel / 16, T1 = 0.85, T2 = 160 on 0-255 images, PC = total energy / total amplitude.
- ClinicalFMamba's table (`orientations=6, sigma_onf=0.5978, gradient="scharr_cv2",
  pc_mode="sum_orientations"`), on [0, 1] images with the same 0-255 constants: the convention of
  the `image-similarity-measures` package it used. Approximation: our phase congruency is
  Kovesi's phasecong2 energy per orientation (no phasecong3 frequency-spread weighting).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from neurofuse.errors import InputError, UsageError
from neurofuse.metrics.registry import combine, register_metric


def _grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    def rng(n):
        return (np.arange(n) - (n - 1) / 2.0) / (n - 1) if n % 2 else (np.arange(n) - n / 2) / n

    x, y = np.meshgrid(rng(cols), rng(rows))
    return np.fft.ifftshift(x), np.fft.ifftshift(y)


@functools.lru_cache(maxsize=8)
def _filter_bank(rows: int, cols: int, scales: int, orientations: int, min_wavelength: float, mult: float,
                 sigma_onf: float, d_theta_on_sigma: float):
    """Log-Gabor x angular-spread filters (O, S, H, W) and the image-independent noise-model sums."""
    x, y = _grid(rows, cols)
    radius = np.sqrt(x * x + y * y)
    theta = np.arctan2(-y, x)
    radius[0, 0] = 1.0
    lowpass = 1.0 / (1.0 + (radius / 0.45) ** 30)
    wl = min_wavelength * mult ** np.arange(scales)
    log_gabor = np.exp(-(np.log(radius[None] * wl[:, None, None]) ** 2) / (2 * np.log(sigma_onf) ** 2))
    log_gabor *= lowpass
    log_gabor[:, 0, 0] = 0.0
    angl = np.arange(orientations) * np.pi / orientations
    sin_t, cos_t = np.sin(theta)[None], np.cos(theta)[None]
    ds = sin_t * np.cos(angl)[:, None, None] - cos_t * np.sin(angl)[:, None, None]
    dc = cos_t * np.cos(angl)[:, None, None] + sin_t * np.sin(angl)[:, None, None]
    theta_sigma = np.pi / orientations / d_theta_on_sigma
    spread = np.exp(-(np.abs(np.arctan2(ds, dc)) ** 2) / (2 * theta_sigma**2))
    filters = spread[:, None] * log_gabor[None]
    em_n = (filters[:, 0] ** 2).sum((1, 2))
    ifft_f = np.fft.ifft2(filters).real * np.sqrt(rows * cols)
    sum_an2 = (ifft_f**2).sum((1, 2, 3))
    sum_aiaj = 0.5 * ((ifft_f.sum(1) ** 2).sum((1, 2)) - sum_an2)
    filters = filters.astype(np.complex64)
    filters.setflags(write=False)
    return filters, em_n, sum_an2, sum_aiaj


def phase_congruency(
    img: np.ndarray, scales: int = 4, orientations: int = 4, min_wavelength: float = 6.0, mult: float = 2.0,
    sigma_onf: float = 0.55, d_theta_on_sigma: float = 1.2, k: float = 2.0, eps: float = 1e-4,
    pc_mode: str = "overall",
) -> np.ndarray:
    """Kovesi's phase congruency (phasecong2, as FSIM uses it) of a 2D image.

    pc_mode 'overall': sum_o Energy_o / sum_o Amplitude_o (FSIM); 'sum_orientations':
    sum_o Energy_o / (Amplitude_o + eps) (per-orientation PC maps summed).
    """
    img = np.asarray(img, dtype=np.float64)
    filters, em_n, sum_an2, sum_aiaj = _filter_bank(
        *img.shape, scales, orientations, min_wavelength, mult, sigma_onf, d_theta_on_sigma
    )
    spec = sfft.fft2(img.astype(np.float32))
    eo = sfft.ifft2(spec[None, None] * filters, workers=-1)  # (O, S, H, W) complex64
    e, o = eo.real.astype(np.float64), eo.imag.astype(np.float64)
    amp = np.hypot(e, o)
    sum_e, sum_o = e.sum(1), o.sum(1)
    sum_an = amp.sum(1)  # (O, H, W)
    xenergy = np.sqrt(sum_e**2 + sum_o**2) + eps
    mean_e, mean_o = (sum_e / xenergy)[:, None], (sum_o / xenergy)[:, None]
    energy = (e * mean_e + o * mean_o - np.abs(e * mean_o - o * mean_e)).sum(1)
    # noise threshold from the smallest scale's median energy (Rayleigh model), per orientation
    median_e2n = np.median((amp[:, 0] ** 2).reshape(orientations, -1), axis=1)
    noise_power = (-median_e2n / np.log(0.5)) / em_n
    tau = np.sqrt((2 * noise_power * sum_an2 + 4 * noise_power * sum_aiaj) / 2)
    thresh = (tau * np.sqrt(np.pi / 2) + k * np.sqrt((2 - np.pi / 2) * tau**2)) / 1.7
    energy = np.maximum(energy - thresh[:, None, None], 0.0)
    if pc_mode == "overall":
        an = sum_an.sum(0)
        return np.where(an > 0, energy.sum(0) / np.where(an > 0, an, 1.0), 0.0)
    if pc_mode == "sum_orientations":
        return (energy / (sum_an + eps)).sum(0)
    raise UsageError(f"pc_mode must be 'overall' or 'sum_orientations', got {pc_mode!r}")


_SCHARR = np.array([[3.0, 0.0, -3.0], [10.0, 0.0, -10.0], [3.0, 0.0, -3.0]])


def gradient_magnitude(img: np.ndarray, gradient: str = "fsim") -> np.ndarray:
    """Scharr gradient magnitude: 'fsim' = kernel / 16, zero padding; 'scharr_cv2' = unscaled, reflect-101."""
    img = np.asarray(img, dtype=np.float64)
    if gradient == "fsim":
        kx, mode = _SCHARR / 16.0, "constant"
    elif gradient == "scharr_cv2":
        kx, mode = _SCHARR, "mirror"
    else:
        raise UsageError(f"gradient must be 'fsim' or 'scharr_cv2', got {gradient!r}")
    gx = ndimage.correlate(img, kx, mode=mode)
    gy = ndimage.correlate(img, kx.T, mode=mode)
    return np.hypot(gx, gy)


def _downsample(img: np.ndarray) -> np.ndarray:
    """FSIM's pre-filter: average over F x F blocks, F = max(1, round(min side / 256))."""
    fac = max(1, round(min(img.shape) / 256))
    if fac == 1:
        return img
    img = ndimage.uniform_filter(img, fac, mode="constant")
    return img[::fac, ::fac]


def fsim_pair_from_features(pc1, g1, pc2, g2, t1: float = 0.85, t2: float = 160.0) -> float:
    """FSIM from precomputed phase congruency and gradient maps."""
    s = (2 * pc1 * pc2 + t1) / (pc1**2 + pc2**2 + t1) * (2 * g1 * g2 + t2) / (g1**2 + g2**2 + t2)
    pcm = np.maximum(pc1, pc2)
    den = float(pcm.sum())
    if den == 0:
        raise InputError("FSIM undefined: no phase congruency in either image (constant images)")
    return float((s * pcm).sum() / den)


@register_metric(
    "FSIM",
    "Feature similarity (phase congruency x gradient magnitude) of F with each source, averaged",
    "Zhang, Zhang, Mou & Zhang 2011, IEEE TIP 20(8):2378",
)
def fsim(
    a, b, f, orientations: int = 4, scales: int = 4, sigma_onf: float = 0.55, gradient: str = "fsim",
    pc_mode: str = "overall", t1: float = 0.85, t2: float = 160.0, how: str = "mean",
) -> float:
    """Mean (or sum) of FSIM(A,F) and FSIM(B,F); F's features are computed once."""
    feats = []
    for x in (a, b, f):
        x = _downsample(np.asarray(x, dtype=np.float64))
        pc = phase_congruency(x, scales, orientations, sigma_onf=sigma_onf, pc_mode=pc_mode)
        feats.append((pc, gradient_magnitude(x, gradient)))
    (pa, ga), (pb, gb), (pf, gf) = feats
    return combine(
        fsim_pair_from_features(pa, ga, pf, gf, t1, t2), fsim_pair_from_features(pb, gb, pf, gf, t1, t2), how
    )
