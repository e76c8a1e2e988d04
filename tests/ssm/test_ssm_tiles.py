"""The numba scan's tile copies (`_gather`, `_scatter`) against plain numpy indexing.

Full channel blocks go through the blocked (8 x 8) transpose and the rest through the per-channel loop,
so the cases cover both, and their seams: a sequence over a 2D grid whose rows are shorter and longer
than a block, transposed (column-major) views, reversed order, a chunk that starts mid-row, and short
channel blocks."""

from __future__ import annotations

import numpy as np
import pytest

from neurofuse.ssm.cpu import load_kernels

k = load_kernels()
W = k._W


def _steps(L: int, s0: int, m: int, reverse: bool) -> np.ndarray:
    t = s0 + np.arange(m)
    return L - 1 - t if reverse else t


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("wn", [W, 20])
@pytest.mark.parametrize("grid,s0,m", [((1, 200), 0, 64), ((1, 200), 136, 64), ((13, 21), 5, 64), ((13, 21), 250, 23),
                                       ((40, 3), 17, 64)])
def test_gather_and_scatter_match_indexing(reverse, transposed, wn, grid, s0, m):
    rng = np.random.default_rng(0)
    batch, d_inner, b, d0 = 2, 72, 1, 32
    base = rng.standard_normal((batch, d_inner, *grid)).astype(np.float32)
    src = base.transpose(0, 1, 3, 2) if transposed else base  # a strided view, as the scan is handed
    L = src.shape[2] * src.shape[3]
    seq = np.ascontiguousarray(src).reshape(batch, d_inner, L)
    t = _steps(L, s0, m, reverse)

    tile = np.full((64, W), 7.0, np.float32)
    k._gather(src, b, d0, wn, s0, m, reverse, tile)
    np.testing.assert_array_equal(tile[:m, :wn], seq[b, d0 : d0 + wn][:, t].T)
    assert np.all(tile[m:] == 7.0) and np.all(tile[:, wn:] == 7.0)  # nothing outside the m x wn corner

    dst = np.zeros((batch, d_inner, src.shape[2], src.shape[3]), np.float32)
    k._scatter(tile, b, d0, wn, s0, m, reverse, dst)
    expect = np.zeros((batch, d_inner, L), np.float32)
    expect[b, d0 : d0 + wn][:, t] = seq[b, d0 : d0 + wn][:, t]
    np.testing.assert_array_equal(dst.reshape(batch, d_inner, L), expect)
