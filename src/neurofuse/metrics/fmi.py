"""Feature mutual information, Haghighat's fast FMI (2014), on stride-trick windows with a numba kernel.

In each w x w window the feature values of a source and of F (min-max normalised, then divided by
their sum) are read as two marginal PDFs over the l = w^2 window positions (column-major, as MATLAB
`(:)`). Their joint PDF is Nelsen's mix of the Frechet bound and independence that matches the
Pearson correlation c of the PDFs; the window score is 2 MI / (H_S + H_F). FMI is the mean over
windows of the mean of the A-F and B-F scores. `fmi_ref` is the direct per-window loop.
"""

from __future__ import annotations

import numba
import numpy as np
import pywt
from numpy.lib.stride_tricks import sliding_window_view
from scipy import fft as sfft
from scipy import ndimage

from neurofuse.errors import InputError, UsageError
from neurofuse.metrics.registry import register_metric

FEATURES = ("pixel", "edge", "edge_octave", "dct", "wavelet", "gradient")


def _rerange(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    return np.ones_like(x) if hi == lo else (x - lo) / (hi - lo)


def sobel_edges(x: np.ndarray) -> np.ndarray:
    """Binary Sobel edge map as MATLAB `edge(I)`: threshold sqrt(4 mean(g^2)), directional thinning."""
    x = np.asarray(x, dtype=np.float64)
    k = np.array([[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]) / 8.0
    by = ndimage.correlate(x, k, mode="nearest")
    bx = ndimage.correlate(x, k.T, mode="nearest")
    mag = bx * bx + by * by
    cutoff = 4.0 * mag.mean()
    pad = np.pad(mag, 1, mode="constant")
    left, right = pad[1:-1, :-2], pad[1:-1, 2:]
    up, down = pad[:-2, 1:-1], pad[2:, 1:-1]
    horiz = (np.abs(bx) >= np.abs(by)) & (mag > left) & (mag >= right)
    vert = (np.abs(by) >= np.abs(bx)) & (mag > up) & (mag >= down)
    return ((mag > cutoff) & (horiz | vert)).astype(np.float64)


def sobel_edges_octave(x: np.ndarray) -> np.ndarray:
    """Binary Sobel edge map as GNU Octave's image package `edge(I)` (2.14): threshold 4 mean(g^2) on
    g^2 (Sobel / 8, replicated border), values at or below it zeroed, then a pixel is an edge if it
    is strictly above both horizontal or both vertical neighbours (zero outside the image)."""
    x = np.asarray(x, dtype=np.float64)
    k = np.array([[-1.0, -2.0, -1.0], [0.0, 0.0, 0.0], [1.0, 2.0, 1.0]]) / 8.0
    s = ndimage.correlate(x, k, mode="nearest") ** 2 + ndimage.correlate(x, k.T, mode="nearest") ** 2
    s = np.where(s <= 4.0 * s.mean(), 0.0, s)
    pad = np.pad(s, 1, mode="constant")
    horiz = (s > pad[1:-1, :-2]) & (s > pad[1:-1, 2:])
    vert = (s > pad[:-2, 1:-1]) & (s > pad[2:, 1:-1])
    return (horiz | vert).astype(np.float64)


def extract_feature(x: np.ndarray, feature: str) -> np.ndarray:
    """The feature image FMI compares: pixels, binary edges, 2D DCT, dmey wavelet mosaic or x-gradient."""
    x = np.asarray(x, dtype=np.float64)
    if feature == "pixel":
        return x
    if feature == "edge":
        return sobel_edges(x)
    if feature == "edge_octave":
        return sobel_edges_octave(x)
    if feature == "dct":
        return sfft.dctn(x, norm="ortho")
    if feature == "wavelet":
        ca, (ch, cv, cd) = pywt.dwt2(x, "dmey", mode="symmetric")
        return _rerange(np.block([[ca, ch], [cv, cd]]))
    if feature == "gradient":
        return np.gradient(x, axis=1)
    raise UsageError(f"FMI feature must be one of {', '.join(FEATURES)}, got {feature!r}")


@numba.njit(cache=True)
def _window_pdf(x, w, out) -> None:
    """Min-max normalise a window and divide by its sum (a constant window gives the uniform PDF).

    The sum is taken as MATLAB's sum(sum(X)) (column sums, then their sum) so that the rounding, and
    with it every later exact test of the reference code (c == 0, c >= 0), is the same.
    """
    lo, hi = x.min(), x.max()
    for k in range(x.size):
        out[k] = 1.0 if hi == lo else (x[k] - lo) / (hi - lo)
    tot = 0.0
    for col in range(x.size // w):
        cs = 0.0
        for r in range(w):
            cs += out[col * w + r]
        tot += cs
    for k in range(x.size):
        out[k] /= tot


@numba.njit(cache=True)
def _fmi_window(s, f, w, ps, pf, cs, cf, bnd) -> float:
    """Normalised FMI of one window pair, in the reference code's (Haghighat's fmi.m) operation order."""
    l = s.size
    _window_pdf(s, w, ps)
    _window_pdf(f, w, pf)
    acc_s, acc_f, sum_s, sum_f = 0.0, 0.0, 0.0, 0.0
    for k in range(l):
        acc_s += ps[k]
        acc_f += pf[k]
        cs[k], cf[k] = acc_s, acc_f
        sum_s += ps[k]
        sum_f += pf[k]
    ms, mf = sum_s / l, sum_f / l
    num, vs, vf = 0.0, 0.0, 0.0
    e1s, e2s, e1f, e2f, hs, hf = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    for k in range(l):
        ts, tf = ps[k] - ms, pf[k] - mf
        num += ts * tf
        vs += ts * ts
        vf += tf * tf
        e1s += (k + 1) * ps[k]
        e2s += (k + 1) ** 2 * ps[k]
        e1f += (k + 1) * pf[k]
        e2f += (k + 1) ** 2 * pf[k]
    c = 0.0 if num == 0 else num / np.sqrt(vs * vf)
    sd_s = np.sqrt(max(e2s - e1s * e1s, 0.0))
    sd_f = np.sqrt(max(e2f - e1f * e1f, 0.0))
    upper = c >= 0
    for i in range(l):  # Frechet bound CDF: upper 0.5(x+y-|x-y|), lower 0.5(x+y-1+|x+y-1|)
        for j in range(l):
            if upper:
                bnd[i, j] = 0.5 * (cf[i] + cs[j] - abs(cf[i] - cs[j]))
            else:
                bnd[i, j] = 0.5 * (cf[i] + cs[j] - 1 + abs(cf[i] + cs[j] - 1))
    mix = 0.0
    if not ((upper and c == 0) or sd_s == 0 or sd_f == 0):
        cov = 0.0
        for i in range(l):
            for j in range(l):
                cov = cov + bnd[i, j] - cf[i] * cs[j]
        mix = c / (cov / (sd_f * sd_s))
    hj = 0.0
    # corner, then the i boundary, the j boundary and the interior, as the reference accumulates them
    q = mix * bnd[0, 0] + (1.0 - mix) * pf[0] * ps[0]
    if q != 0:
        hj -= q * np.log2(abs(q))
    for i in range(1, l):
        q = mix * (bnd[i, 0] - bnd[i - 1, 0]) + (1.0 - mix) * pf[i] * ps[0]
        if q != 0:
            hj -= q * np.log2(abs(q))
    for j in range(1, l):
        q = mix * (bnd[0, j] - bnd[0, j - 1]) + (1.0 - mix) * pf[0] * ps[j]
        if q != 0:
            hj -= q * np.log2(abs(q))
    for i in range(1, l):
        for j in range(1, l):
            d = bnd[i, j] - bnd[i - 1, j] - bnd[i, j - 1] + bnd[i - 1, j - 1]
            q = mix * d + (1.0 - mix) * pf[i] * ps[j]
            if q != 0:
                hj -= q * np.log2(abs(q))
    for k in range(l):
        if ps[k] != 0:
            hs -= ps[k] * np.log2(ps[k])
        if pf[k] != 0:
            hf -= pf[k] * np.log2(pf[k])
    mi = hs + hf - hj
    return 0.0 if mi == 0 else 2.0 * mi / (hs + hf)


@numba.njit(cache=True)
def _fmi_windows(s, f, fcmp, w):
    """Normalised FMI of each window pair; s, f are (P, l) raw feature windows (compiled loop).

    A window scores 1 where s equals fcmp (the F window the reference code compares with: see
    `fmi_fast`), else `_fmi_window(s, f)`.
    """
    npos, l = s.shape
    out = np.empty(npos)
    ps, pf, cs, cf = np.empty(l), np.empty(l), np.empty(l), np.empty(l)
    bnd = np.empty((l, l))
    for p in range(npos):
        if np.all(s[p] == fcmp[p]):
            out[p] = 1.0
        else:
            out[p] = _fmi_window(s[p], f[p], w, ps, pf, cs, cf, bnd)
    return out


def _b_comparison(wa: np.ndarray, wf: np.ndarray) -> np.ndarray:
    """The F windows Haghighat's fmi.m compares B with: its A step overwrites fSub with the min-max
    normalised window (ones if constant) unless A's window equals F's, so B is compared with that."""
    lo, hi = wf.min(1, keepdims=True), wf.max(1, keepdims=True)
    span = hi - lo
    norm = np.where(span == 0, 1.0, (wf - lo) / np.where(span == 0, 1.0, span))
    same = np.all(wa == wf, axis=1, keepdims=True)
    return np.where(same, wf, norm)


def _windows(x: np.ndarray, w: int) -> np.ndarray:
    """All w x w windows as (P, w*w) in column-major order within each window."""
    v = sliding_window_view(x, (w, w))
    return np.ascontiguousarray(v.transpose(0, 1, 3, 2)).reshape(-1, w * w)


def _check(a, b, f, feature: str, window: int):
    if a.ndim != 2:
        raise InputError(f"FMI is defined on 2D images, got shape {a.shape}")
    if window < 1 or window % 2 == 0 or window > min(a.shape):
        raise UsageError(f"FMI window must be an odd size <= the image side, got {window}")
    return [extract_feature(x, feature) for x in (a, b, f)]


def fmi_fast(a, b, f, feature: str = "pixel", window: int = 3) -> float:
    """Fast FMI (see module docstring): stride-trick windows, compiled per-window kernel.

    As the published fmi.m: a window pair scores 1 when the source window equals F's; for B the F
    window compared is the one A's step left behind (normalised unless A's window equalled F's), so
    e.g. an edge-free window of B and F still scores ~0 where A has edges.
    """
    fa, fb, ff = _check(np.asarray(a), np.asarray(b), np.asarray(f), feature, window)
    wa, wb, wf = (_windows(x, window) for x in (fa, fb, ff))
    v = _fmi_windows(wa, wf, wf, window) + _fmi_windows(wb, wf, _b_comparison(wa, wf), window)
    return float(0.5 * v.mean())


def _fmi_window_ref(s: np.ndarray, f: np.ndarray, skip_equal: bool = True) -> float:
    """One window pair, written out as the published per-element loops (slow reference)."""
    if skip_equal and np.array_equal(s, f):
        return 1.0
    w = int(round(np.sqrt(len(s))))

    def pdf(x):  # min-max, then divided by MATLAB's sum(sum(X)) (column sums first), in plain floats
        lo, hi = min(x), max(x)
        v = [1.0 if hi == lo else (t - lo) / (hi - lo) for t in x]
        tot = 0.0
        for col in range(len(v) // w):
            cs_ = 0.0
            for t in v[col * w : (col + 1) * w]:
                cs_ += t
            tot += cs_
        return [t / tot for t in v]

    ps, pf = pdf(list(map(float, s))), pdf(list(map(float, f)))
    l = len(ps)
    cs, cf = np.cumsum(ps), np.cumsum(pf)
    ms, mf = sum(ps) / l, sum(pf) / l
    ts, tf = [p - ms for p in ps], [p - mf for p in pf]
    num = sum(x * y for x, y in zip(ts, tf, strict=True))
    c = 0.0 if num == 0 else num / np.sqrt(sum(x * x for x in ts) * sum(y * y for y in tf))

    def sd(pp):  # population standard deviation of the index under the PDF
        e1 = sum((k + 1) * p for k, p in enumerate(pp))
        return np.sqrt(max(sum((k + 1) ** 2 * p for k, p in enumerate(pp)) - e1**2, 0.0))

    sd_s, sd_f = sd(ps), sd(pf)

    def bound(i: int, j: int) -> float:
        if i < 0 or j < 0:
            return 0.0
        if c >= 0:
            return 0.5 * (cf[i] + cs[j] - abs(cf[i] - cs[j]))
        return 0.5 * (cf[i] + cs[j] - 1 + abs(cf[i] + cs[j] - 1))

    cov = 0.0
    for i in range(l):
        for j in range(l):
            cov = cov + bound(i, j) - cf[i] * cs[j]
    if sd_s == 0 or sd_f == 0 or (c >= 0 and c == 0):
        mix = 0.0
    else:
        mix = c / (cov / (sd_f * sd_s))
    hj = 0.0
    for i in range(l):
        for j in range(l):
            d = bound(i, j) - bound(i - 1, j) - bound(i, j - 1) + bound(i - 1, j - 1)
            p = mix * d + (1 - mix) * pf[i] * ps[j]
            if p != 0:
                hj -= p * np.log2(abs(p))
    hs = -sum(p * np.log2(p) for p in ps if p != 0)
    hf = -sum(p * np.log2(p) for p in pf if p != 0)
    mi = hs + hf - hj
    return 0.0 if mi == 0 else 2 * mi / (hs + hf)


def fmi_ref(a, b, f, feature: str = "pixel", window: int = 3) -> float:
    """Slow per-window reference of `fmi_fast` (small images only)."""
    fa, fb, ff = _check(np.asarray(a), np.asarray(b), np.asarray(f), feature, window)
    wa, wb, wf = (_windows(x, window) for x in (fa, fb, ff))
    fcmp = _b_comparison(wa, wf)
    vals = [
        0.5 * (_fmi_window_ref(wa[p], wf[p]) + (1.0 if np.array_equal(wb[p], fcmp[p]) else
                                                 _fmi_window_ref(wb[p], wf[p], skip_equal=False)))
        for p in range(len(wa))
    ]
    return float(np.mean(vals))


@register_metric(
    "FMI",
    "Fast feature mutual information (Haghighat 2014): normalised MI of local feature PDFs, mean of A-F, B-F",
    "Haghighat & Razian 2014, IEEE AICT (fast-FMI); Haghighat et al. 2011, Comput. Electr. Eng. 37(5):744",
)
def fmi(a, b, f, feature: str = "pixel", window: int = 3) -> float:
    """FMI with `feature` in pixel, edge, dct, wavelet, gradient and a `window` x `window` sliding window."""
    return fmi_fast(a, b, f, feature, window)


def _register_feature(feature: str, what: str) -> None:
    def fn(a, b, f, window: int = 3) -> float:
        return fmi_fast(a, b, f, feature, window)

    fn.__doc__ = f"FMI on {what}, 3x3 windows by default."
    register_metric(
        f"FMI_{feature}",
        f"Fast FMI (Haghighat 2014) on {what}: mean over windows of the mean of the A-F and B-F scores",
        "Haghighat & Razian 2014, IEEE AICT (fast-FMI); Tang's analysis_fmi.m",
    )(fn)


for _feature, _what in (
    ("pixel", "raw pixels (analysis_fmi 'none')"),
    ("edge", "binary Sobel edges as MATLAB edge(I) (analysis_fmi's default feature)"),
    ("edge_octave", "binary Sobel edges as GNU Octave's edge(I) (analysis_fmi's default run under Octave)"),
    ("dct", "the orthonormal 2D DCT (dct2)"),
    ("wavelet", "the dmey dwt2 mosaic, rescaled to [0, 1]"),
    ("gradient", "the x-gradient (MATLAB gradient)"),
):
    _register_feature(_feature, _what)
