"""Compiled causal depthwise conv1d + SiLU kernels (numba), forward and backward, for `neurofuse.ssm.conv`.

Imported lazily by `neurofuse.ssm.conv` (compiles, or loads from numba's cache). One parallel work
item is one (batch, channel) row of L samples, C-contiguous; tap k is one unit-stride shifted
multiply-add over the row (a loop LLVM vectorises), zero padding is the loops' bounds, and SiLU runs
in place on the row while it is in L1 cache. The backward recomputes the pre-activation row.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from neurofuse.ssm._numba_kernels import _FASTMATH, _sigmoid


def _sig(kind: str, ft: str) -> str:
    rows, taps, vec = f"{ft}[:,::1]", f"{ft}[:,::1]", f"{ft}[::1]"
    if kind == "fwd":  # x, weight, bias, reverse, y
        return f"void({rows}, {taps}, {vec}, b1, {rows})"
    # x, weight, bias, reverse, dy, dx, dweight_rows, dbias_rows
    return f"void({rows}, {taps}, {vec}, b1, {rows}, {rows}, {taps}, {vec})"


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy", inline="always")
def _taps(x, w, bias, reverse, acc):
    """acc[j] = bias + sum_k w[k] x[j - (K-1-k)] (reverse: x[j + (K-1-k)]), zero outside the row; 1D rows."""
    n, n_taps = x.shape[0], w.shape[0]
    for j in range(n):
        acc[j] = bias
    for k in range(n_taps):
        s = n_taps - 1 - k
        wk = w[k]
        if reverse:
            for j in range(n - s):
                acc[j] += wk * x[j + s]
        else:
            for j in range(s, n):
                acc[j] += wk * x[j - s]


@njit([_sig("fwd", "f4"), _sig("fwd", "f8")], parallel=True, cache=True, fastmath=_FASTMATH,
      error_model="numpy")  # fmt: skip
def conv_silu_fwd(x, w, bias, reverse, y):
    """y = silu(causal depthwise conv of x). x, y (rows, L), row r is channel r % C; w (C, K); bias (C,)."""
    n_ch = w.shape[0]
    for r in prange(x.shape[0]):
        c = r % n_ch
        yr = y[r]
        _taps(x[r], w[c], bias[c], reverse, yr)
        for j in range(x.shape[1]):
            p = yr[j]
            yr[j] = p * _sigmoid(p)


@njit([_sig("bwd", "f4"), _sig("bwd", "f8")], parallel=True, cache=True, fastmath=_FASTMATH,
      error_model="numpy")  # fmt: skip
def conv_silu_bwd(x, w, bias, reverse, dy, dx, dw_rows, db_rows):
    """Gradients of `conv_silu_fwd`: dx (rows, L); per-row dw_rows (rows, K), db_rows (rows,) to sum over batch.

    The input gradient is the transposed conv of d(pre-activation): the same taps, the other direction.
    """
    n_ch, n_taps = w.shape
    n = x.shape[1]
    zero = bias[0] * 0
    for r in prange(x.shape[0]):
        c = r % n_ch
        xr = x[r]
        g = np.empty(n, dtype=x.dtype)
        _taps(xr, w[c], bias[c], reverse, g)
        total = zero
        for j in range(n):  # d pre = dy * silu'(pre), silu'(p) = s (1 + p (1 - s))
            p = g[j]
            s = _sigmoid(p)
            v = dy[r, j] * s * (1 + p * (1 - s))
            g[j] = v
            total += v
        db_rows[r] = total
        for k in range(n_taps):
            s = n_taps - 1 - k
            acc = zero
            if reverse:
                for j in range(n - s):
                    acc += g[j] * xr[j + s]
            else:
                for j in range(s, n):
                    acc += g[j] * xr[j - s]
            dw_rows[r, k] = acc
        _taps(g, w[c], zero, not reverse, dx[r])
