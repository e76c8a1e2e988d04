"""Classical fusion baselines, as the fusion literature implements them, for 2D and 3D arrays.

All take float arrays in [0, 1] of one shape (H, W) or (D, H, W) and return the fused array. The
multiscale rules follow the usual choice of the literature: average the low-pass band (it carries
intensity), keep the larger-magnitude coefficient in every detail band (it carries edges).
- `pca`: weights from the principal eigenvector of the 2x2 covariance of the sources (Naidu 2008).
- `dwt`: n-dimensional discrete wavelet transform (PyWavelets `wavedecn`, Li et al. 1995).
- `laplacian`: Burt-Adelson Laplacian pyramid with the 5-tap binomial kernel (Burt & Adelson 1983).
"""

from __future__ import annotations

import numpy as np

from neurofuse.errors import UsageError
from neurofuse.fusion import register_method


@register_method("average", "Pixel-wise mean of the two sources.")
def fuse_average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 0.5 * (a + b)


@register_method("maximum", "Pixel-wise maximum of the two sources.")
def fuse_maximum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.maximum(a, b)


def _cov2(a: np.ndarray, b: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """np.cov of the two flattened arrays (ddof 1), in float64 over chunks: no full-size float64 copies."""
    a, b = a.ravel(), b.ravel()
    n = a.size
    mean = [sum(float(x[i : i + chunk].sum(dtype=np.float64)) for i in range(0, n, chunk)) / n for x in (a, b)]
    acc = np.zeros((2, 2))
    for i in range(0, n, chunk):
        block = np.stack([a[i : i + chunk], b[i : i + chunk]]).astype(np.float64)
        block -= np.array(mean)[:, None]
        acc += block @ block.T
    return acc / max(n - 1, 1)


def pca_weights(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Normalised components of the principal eigenvector of cov([a, b])."""
    cov = _cov2(a, b)
    _, vecs = np.linalg.eigh(cov)
    v = np.abs(vecs[:, -1])
    return float(v[0] / v.sum()), float(v[1] / v.sum())


@register_method("pca", "Weighted mean with weights from the principal component of the two sources.")
def fuse_pca(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    wa, wb = pca_weights(a, b)
    return wa * a + wb * b


def _levels(method: str, levels: int | None, default: int, most: int, shape: tuple[int, ...]) -> int:
    """The number of decomposition levels: `default` capped to what the shape allows when not given;
    a given value must be an integer in 1..most (UsageError otherwise)."""
    most = max(1, most)
    if levels is None:
        return min(default, most)
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)):
        raise UsageError(f"{method}: levels must be an integer, got {levels!r}")
    if not 1 <= levels <= most:
        size = "x".join(map(str, shape))
        raise UsageError(f"{method}: levels={levels} is out of range: a {size} input allows 1 to {most}")
    return int(levels)


def _max_abs_into(x: np.ndarray, y: np.ndarray) -> None:
    """x = the larger-magnitude coefficient of x and y (x on ties), in place."""
    take = np.abs(y) > np.abs(x)
    np.copyto(x, y, where=take)


@register_method("dwt", "Wavelet fusion: average approximation, max-abs details (options: wavelet, levels).")
def fuse_dwt(
    a: np.ndarray, b: np.ndarray, wavelet: str = "db2", levels: int | None = None, mode: str = "symmetric"
) -> np.ndarray:
    """`levels` defaults to 3 (fewer when the input is too small for 3)."""
    import pywt

    if not isinstance(wavelet, str) or wavelet not in pywt.wavelist(kind="discrete"):
        raise UsageError(f"unknown discrete wavelet {wavelet!r} (e.g. haar, db2, sym4, bior2.2)")
    if mode not in pywt.Modes.modes:
        raise UsageError(f"dwt: unknown signal extension mode {mode!r}; use one of {', '.join(pywt.Modes.modes)}")
    levels = _levels("dwt", levels, 3, pywt.dwtn_max_level(a.shape, wavelet), a.shape)
    # Fused in place in a's coefficients, b's freed before the inverse: peak memory ~3x one input's.
    ca = pywt.wavedecn(a, wavelet, mode=mode, level=levels)
    cb = pywt.wavedecn(b, wavelet, mode=mode, level=levels)
    ca[0] += cb[0]
    ca[0] *= 0.5
    for da, db in zip(ca[1:], cb[1:], strict=True):
        for k in da:
            _max_abs_into(da[k], db[k])
    del cb
    out = pywt.waverecn(ca, wavelet, mode=mode)
    return out[tuple(slice(0, s) for s in a.shape)]


_BINOMIAL5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0


def _blur(x: np.ndarray, gain: float = 1.0) -> np.ndarray:
    from scipy import ndimage  # here, not at import: listing methods and `average` stay cheap

    for ax in range(x.ndim):
        x = ndimage.convolve1d(x, _BINOMIAL5 * gain, axis=ax, mode="reflect")
    return x


def _reduce(x: np.ndarray) -> np.ndarray:
    return _blur(x)[tuple(slice(None, None, 2) for _ in range(x.ndim))]


def _expand(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    up = np.zeros(shape, dtype=x.dtype)
    up[tuple(slice(None, None, 2) for _ in range(x.ndim))] = x
    return _blur(up, gain=2.0)  # 2 per axis restores the mean lost by zero insertion


def laplacian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    """[detail_0, ..., detail_{n-1}, base]: band-pass levels, finest first, then the low-pass top."""
    pyr, cur = [], x.astype(np.promote_types(x.dtype, np.float32))  # float32 stays float32 (memory)
    for _ in range(levels):
        if min(cur.shape) < 4:
            break
        down = _reduce(cur)
        pyr.append(cur - _expand(down, cur.shape))
        cur = down
    pyr.append(cur)
    return pyr


def reconstruct_laplacian(pyr: list[np.ndarray]) -> np.ndarray:
    cur = pyr[-1]
    for detail in reversed(pyr[:-1]):
        cur = detail + _expand(cur, detail.shape)
    return cur


@register_method("laplacian", "Laplacian pyramid fusion: average base, max-abs details (option: levels).")
def fuse_laplacian(a: np.ndarray, b: np.ndarray, levels: int | None = None) -> np.ndarray:
    """`levels` defaults to 4 (fewer when the input is too small: a level needs every side >= 4)."""
    most, side = 0, min(a.shape)
    while side >= 4:
        most, side = most + 1, (side + 1) // 2
    levels = _levels("laplacian", levels, 4, most, a.shape)
    pa, pb = laplacian_pyramid(a, levels), laplacian_pyramid(b, levels)
    for x, y in zip(pa[:-1], pb[:-1], strict=True):  # fused in place in a's pyramid (memory)
        _max_abs_into(x, y)
    pa[-1] = 0.5 * (pa[-1] + pb[-1])
    del pb
    return reconstruct_laplacian(pa).astype(np.float32, copy=False)
