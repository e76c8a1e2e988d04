"""The numba kernels' vectorisable float32 math (2**x, exp, softplus, sigmoid) against float64 numpy.

These replace libm inside the scan's hot loops, so they are checked on their own: accuracy over the
whole float32 range and the special values (underflow to 0, overflow to inf, NaN in -> NaN out).
"""

from __future__ import annotations

import numpy as np
import pytest

from neurofuse.ssm.cpu import load_kernels

k = load_kernels()
_FM = {"reassoc", "contract"}  # the kernels' fast-math flags


def _vectorised(fn):
    from numba import njit

    @njit(fastmath=_FM, error_model="numpy")
    def apply(x, out):
        for i in range(x.size):  # the loop LLVM vectorises, as in the kernels
            out[i] = fn(x[i])

    def call(x):
        x = np.ascontiguousarray(x, dtype=np.float32)
        out = np.empty_like(x)
        apply(x, out)
        return out

    return call


exp2, exp, softplus, sigmoid = (_vectorised(f) for f in (k._exp2, k._exp, k._softplus, k._sigmoid))
RNG = np.random.default_rng(0)


def rel_err(got, want):
    return float(np.max(np.abs(got.astype(np.float64) / want - 1.0)))


def test_exp2_is_float32_accurate_over_the_normal_range():
    x = np.concatenate([RNG.uniform(-126, 127.4, 200_000), RNG.uniform(-1, 1, 50_000), np.arange(-126, 128)])
    x = x.astype(np.float32)
    assert rel_err(exp2(x), np.exp2(x.astype(np.float64))) < 2e-7  # about 3 ulp
    assert np.all(exp2(np.arange(-126, 128, dtype=np.float32)) == np.exp2(np.arange(-126, 128.0)))


def test_exp_accuracy():
    x = RNG.uniform(-87, 88, 200_000).astype(np.float32)
    assert rel_err(exp(x), np.exp(x.astype(np.float64))) < 5e-6  # x log2(e) is rounded once
    small = RNG.uniform(-20, 20, 200_000).astype(np.float32)
    assert rel_err(exp(small), np.exp(small.astype(np.float64))) < 1.5e-6


@pytest.mark.parametrize(
    "x, want",
    [(np.nan, np.nan), (np.inf, np.inf), (-np.inf, 0.0), (-1e30, 0.0), (1e30, np.inf), (-130.0, 0.0),
     (129.0, np.inf), (0.0, 1.0)],
)  # fmt: skip
def test_exp2_special_values(x, want):
    got = exp2(np.full(37, x))  # 37: the vector body and the scalar remainder both run
    np.testing.assert_array_equal(got, np.full(37, want, dtype=np.float32))


def test_exp_special_values():
    got = exp(np.array([np.nan, -np.inf, np.inf, -1000.0, 1000.0, 0.0] * 8))
    np.testing.assert_array_equal(got, np.array([np.nan, 0, np.inf, 0, np.inf, 1] * 8, dtype=np.float32))


def test_softplus_and_sigmoid():
    v = np.concatenate([RNG.uniform(-30, 30, 100_000), [-100.0, 100.0, 0.0]]).astype(np.float32)
    v64 = v.astype(np.float64)
    want_sp = np.logaddexp(0.0, v64)
    assert np.max(np.abs(softplus(v) - want_sp) / np.maximum(want_sp, 1e-30)) < 2e-6
    want_sg = 1.0 / (1.0 + np.exp(-v64))
    assert np.max(np.abs(sigmoid(v) - want_sg)) < 2e-7
