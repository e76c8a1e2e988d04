"""Compiled causal depthwise conv1d + SiLU kernels (numba), forward and backward, for `neurofuse.ssm.conv`.

Imported lazily by `neurofuse.ssm.conv` (compiles, or loads from numba's cache). One parallel work
item is one (batch, channel) row of L samples, C-contiguous: the row is copied into a zero-padded
buffer of its own, tap k is one unit-stride shifted multiply-add over it (a loop LLVM vectorises), and
SiLU runs on the result while it is in L1 cache. The backward recomputes the pre-activation row.
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


@njit(cache=True, inline="always")
def _padded(x, n_taps, reverse, buf):
    """buf (L + K - 1) = the row with K - 1 zeros before it (causal) or after it (reverse)."""
    n, pad = x.shape[0], n_taps - 1
    if reverse:
        buf[:n] = x
        buf[n:] = 0
    else:
        buf[:pad] = 0
        buf[pad:] = x


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy", inline="always")
def _row_conv(buf, w, bias, reverse, out):
    """out[j] = bias + sum_k w[k] x[j - (K-1-k)] (reverse: x[j + (K-1-k)]), from `_padded`'s buf.

    buf and out are the work item's own arrays, so LLVM knows they do not overlap and vectorises the
    taps' loops; on the caller's rows it did not (2-3x slower).
    """
    n, n_taps = out.shape[0], w.shape[0]
    for j in range(n):
        out[j] = bias
    for k in range(n_taps):
        wk = w[n_taps - 1 - k] if reverse else w[k]
        for j in range(n):
            out[j] += wk * buf[j + k]


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy", inline="always")
def _pre_activation(x, r, w, bias, reverse, buf, out):
    """out = the conv of row r of x (channel r % C) before SiLU; buf is left holding the padded row."""
    c = r % w.shape[0]
    _padded(x[r], w.shape[1], reverse, buf)
    _row_conv(buf, w[c], bias[c], reverse, out)


@njit([_sig("fwd", "f4"), _sig("fwd", "f8")], parallel=True, cache=True, fastmath=_FASTMATH,
      error_model="numpy")  # fmt: skip
def conv_silu_fwd(x, w, bias, reverse, y):
    """y = silu(causal depthwise conv of x). x, y (rows, L), row r is channel r % C; w (C, K); bias (C,)."""
    n, n_taps = x.shape[1], w.shape[1]
    for r in prange(x.shape[0]):
        buf = np.empty(n + n_taps - 1, dtype=x.dtype)
        out = np.empty(n, dtype=x.dtype)
        _pre_activation(x, r, w, bias, reverse, buf, out)
        for j in range(n):
            p = out[j]
            out[j] = p * _sigmoid(p)
        y[r] = out


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
        buf = np.empty(n + n_taps - 1, dtype=x.dtype)
        g = np.empty(n, dtype=x.dtype)
        _pre_activation(x, r, w, bias, reverse, buf, g)
        total = zero
        for j in range(n):  # d pre = dy * silu'(pre), silu'(p) = s (1 + p (1 - s))
            p = g[j]
            s = _sigmoid(p)
            v = dy[r, j] * s * (1 + p * (1 - s))
            g[j] = v
            total += v
        db_rows[r] = total
        for k in range(n_taps):
            off = n_taps - 1 - k if reverse else k
            acc = zero
            for j in range(n):
                acc += g[j] * buf[j + off]
            dw_rows[r, k] = acc
        _padded(g, n_taps, not reverse, buf)
        _row_conv(buf, w[c], zero, not reverse, g)
        dx[r] = g
