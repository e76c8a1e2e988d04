"""Visual information fidelity: pixel-domain VIF (Sheikh & Bovik) and VIFF (Han et al. 2013).

Both use the four-scale Gaussian pyramid of the pixel-domain VIF: at scale s a normalised
Gaussian of size N = 2^(5-s) + 1 and sigma N/5, 'valid' filtering, and 2x subsampling between scales.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from neurofuse.errors import InputError
from neurofuse.metrics.registry import combine, register_metric


def _gauss1d(n: int) -> np.ndarray:
    sd = n / 5.0
    r = np.arange(n) - (n - 1) / 2.0
    k = np.exp(-(r * r) / (2 * sd * sd))
    return k / k.sum()


def _filter_valid(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Separable 2D filtering keeping only fully-covered pixels (MATLAB filter2 'valid')."""
    r = len(k) // 2
    y = ndimage.correlate1d(ndimage.correlate1d(x, k, axis=0, mode="constant"), k, axis=1, mode="constant")
    return y[r : x.shape[0] - r, r : x.shape[1] - r]


def vif_scales(ref: np.ndarray, dist: np.ndarray, sigma_nsq: float):
    """Per scale (info_distorted_map, info_reference_map, gain_map) of the pixel-domain VIF model.

    The distortion channel is dist = g ref + v (local gain g, noise variance sv^2); the HVS adds
    noise of variance sigma_nsq. Maps are log10(1 + g^2 s1^2/(sv^2 + sn)) and log10(1 + s1^2/sn).
    """
    ref = np.asarray(ref, dtype=np.float64)
    dist = np.asarray(dist, dtype=np.float64)
    eps = 1e-10
    out = []
    for scale in range(1, 5):
        k = _gauss1d(2 ** (4 - scale + 1) + 1)
        if scale > 1:
            ref = _filter_valid(ref, k)[::2, ::2]
            dist = _filter_valid(dist, k)[::2, ::2]
        if min(ref.shape) < len(k):
            raise InputError(f"VIF needs images of at least 41x41 pixels, got {ref.shape} at scale {scale}")
        mu1, mu2 = _filter_valid(ref, k), _filter_valid(dist, k)
        s1 = np.maximum(_filter_valid(ref * ref, k) - mu1 * mu1, 0.0)
        s2 = np.maximum(_filter_valid(dist * dist, k) - mu2 * mu2, 0.0)
        s12 = _filter_valid(ref * dist, k) - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        flat1 = s1 < eps
        g = np.where(flat1, 0.0, g)
        sv = np.where(flat1, s2, sv)
        s1 = np.where(flat1, 0.0, s1)
        flat2 = s2 < eps
        g = np.where(flat2, 0.0, g)
        sv = np.where(flat2, 0.0, sv)
        neg = g < 0
        sv = np.where(neg, s2, sv)
        g = np.where(neg, 0.0, g)
        sv = np.maximum(sv, eps)
        num = np.log10(1.0 + g * g * s1 / (sv + sigma_nsq))
        den = np.log10(1.0 + s1 / sigma_nsq)
        out.append((num, den, g))
    return out


def vif_pair(ref: np.ndarray, dist: np.ndarray, sigma_nsq: float = 2.0) -> float:
    """Pixel-domain VIF(ref -> dist): information kept over information available, all scales."""
    parts = vif_scales(ref, dist, sigma_nsq)
    den = sum(float(d.sum()) for _, d, _ in parts)
    if den == 0:
        raise InputError("VIF undefined: the reference image is constant")
    return sum(float(n.sum()) for n, _, _ in parts) / den


@register_metric(
    "VIF",
    "Pixel-domain visual information fidelity VIF(A,F) + VIF(B,F) (sigma_n^2 = 2 on 0-255)",
    "Sheikh & Bovik 2006, IEEE TIP 15(2):430 (vifp_mscale)",
)
def vif(a, b, f, sigma_nsq: float = 2.0, how: str = "sum") -> float:
    """VIF of F with each source as reference, combined by `how`."""
    return combine(vif_pair(a, f, sigma_nsq), vif_pair(b, f, sigma_nsq), how)


@register_metric(
    "VIFF",
    "Visual information fidelity for fusion: per scale, the source with the smaller gain at each pixel",
    "Han, Cai, Cao & Xu 2013, Information Fusion 14(2):127",
)
def viff(a, b, f, data_range: float = 255.0, c: float = 1e-7, weights=(1.0, 0.0, 0.15, 1.0)) -> float:
    """VIFF: scale-weighted ratio of kept to available information; HVS noise 0.005 * range^2.

    At each pixel of each scale the source whose gain g to F is smaller is used (Han's VIFF_Public).
    """
    sq = 0.005 * data_range**2
    pa, pb = vif_scales(a, f, sq), vif_scales(b, f, sq)
    w = np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    vals = []
    for (na, da, ga), (nb, db, gb) in zip(pa, pb, strict=True):
        use_a = ga < gb
        num = np.where(use_a, na, nb) + c
        den = np.where(use_a, da, db) + c
        vals.append(num.sum() / den.sum())
    return float(np.dot(w, vals))
