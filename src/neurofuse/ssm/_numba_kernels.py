"""Compiled sequential selective-scan kernels (numba), forward and backward.

Imported lazily by `neurofuse.ssm.cpu` (importing this module compiles the kernels, or loads them from
numba's on-disk cache). One parallel work item is one (batch, channel) pair; the d_state hidden states
live in a small per-item buffer (L1 cache / registers) and are never materialised over the sequence.
u, delta and z are read in place through their strides (any view, including transposed grids); the
`reverse` flag walks the sequence from its end. Two precisions: float32 (with a vectorisable exp) and
float64 (with libm exp, used for gradient checks).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

# Only reassociation (so LLVM can vectorise the sum over d_state) and FMA contraction; no
# finite-math assumptions, so inf/nan from very large inputs behave as in PyTorch.
_FASTMATH = {"reassoc", "contract"}

_F = np.float32
_ZERO, _ONE, _HALF, _TWENTY = _F(0.0), _F(1.0), _F(0.5), _F(20.0)
_LOG2E = _F(1.4426950408889634)
_LN2_HI = _F(0.693359375)  # 9 significant bits: k * _LN2_HI is exact for |k| <= 127
_LN2_LO = _F(-2.12194440e-4)
_EXP_LO = _F(-87.33)  # below: result flushed to 0 (the exact value is subnormal, < 1.2e-38)
_EXP_HI = _F(88.3)  # above: +inf (exact values up to exp(88.72) are finite; irrelevant for decays)
_INF = _F(np.inf)
# Taylor coefficients 1/k! of exp on |r| <= ln2/2; truncation error r^8/8! < 1e-8 relative.
_C2, _C3, _C4, _C5, _C6, _C7 = (_F(1.0 / math.factorial(k)) for k in range(2, 8))


@intrinsic
def _bits_to_f32(typingctx, bits):
    """Reinterpret the low 32 bits of an integer as a float32 (an LLVM bitcast, vectorisable)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = args[0]
        if bits.bitwidth > 32:
            value = builder.trunc(value, ir.IntType(32))
        return builder.bitcast(value, ir.FloatType())

    return types.float32(bits), codegen


def _exp(x):
    """exp(x); in compiled float32 code a branch-free polynomial version LLVM can vectorise."""
    return math.exp(x)


@overload(_exp)
def _exp_overload(x):
    if x == types.float32:

        def exp_f32(x):
            xc = min(max(x, _EXP_LO), _EXP_HI)
            k = np.floor(xc * _LOG2E + _HALF)
            r = (xc - k * _LN2_HI) - k * _LN2_LO
            p = _C7
            p = p * r + _C6
            p = p * r + _C5
            p = p * r + _C4
            p = p * r + _C3
            p = p * r + _C2
            p = p * r + _ONE
            p = p * r + _ONE
            res = p * _bits_to_f32((np.int64(k) + 127) << 23)
            if x < _EXP_LO:
                res = _ZERO
            if x > _EXP_HI:
                res = _INF
            if x != x:
                res = x
            return res

        return exp_f32
    return lambda x: math.exp(x)


def _signature(kind: str, ft: str) -> str:
    a3, a2, a1 = f"{ft}[:,:,:]", f"{ft}[:,:]", f"{ft}[::1]"
    c3, c4 = f"{ft}[:,:,::1]", f"{ft}[:,:,:,::1]"
    common = f"{a3}, {a3}, {a2}, {c4}, {c4}, {a1}, {a3}, {a1}, b1, b1, b1, i8"
    if kind == "fwd":  # ..., save_ck, y, last, ck
        return f"void({common}, b1, {c3}, {c3}, {c4})"
    # ..., ck, dy, dlast, du, ddelta, dz, dA_part, dD_part, dB_part, dC_part
    c5 = f"{ft}[:,:,:,:,::1]"
    return f"void({common}, {c4}, {a3}, {a3}, {c3}, {c3}, {c3}, {c3}, {ft}[:,::1], {c5}, {c5})"


@njit(
    [_signature("fwd", "f4"), _signature("fwd", "f8")],
    parallel=True,
    cache=True,
    fastmath=_FASTMATH,
)
def scan_fwd(u, delta, A, Bw, Cw, Dv, z, bias, softplus, has_z, reverse, K, save_ck, y, last, ck):
    """y = scan output (+ D u, * silu(z)); last = final state; ck[.., c, :] = state after (c+1)K steps.

    Shapes: u, delta, z (batch, d_inner, L) any strides; A (d_inner, N); Bw, Cw (batch, G, L, N);
    Dv, bias (d_inner,); y (batch, d_inner, L); last (batch, d_inner, N); ck (batch, d_inner, nck, N).
    """
    batch, d_inner, L = u.shape
    n_state = A.shape[1]
    per_group = d_inner // Bw.shape[1]
    for item in prange(batch * d_inner):
        b = item // d_inner
        d = item - b * d_inner
        g = d // per_group
        h = np.zeros(n_state, dtype=y.dtype)
        a_row = np.empty(n_state, dtype=y.dtype)
        for n in range(n_state):
            a_row[n] = A[d, n]
        bias_d = bias[d]
        skip_d = Dv[d]
        for s in range(L):
            t = L - 1 - s if reverse else s
            dt = delta[b, d, t] + bias_d
            if softplus and dt <= _TWENTY:
                dt = math.log1p(math.exp(dt))
            ut = u[b, d, t]
            x = dt * ut
            acc = _ZERO
            for n in range(n_state):
                hn = _exp(dt * a_row[n]) * h[n] + x * Bw[b, g, t, n]
                h[n] = hn
                acc += hn * Cw[b, g, t, n]
            out = acc + skip_d * ut
            if has_z:
                zt = z[b, d, t]
                out = out * zt / (_ONE + math.exp(-zt))
            y[b, d, t] = out
            if save_ck and (s + 1) % K == 0:
                c = (s + 1) // K - 1
                for n in range(n_state):
                    ck[b, d, c, n] = h[n]
        for n in range(n_state):
            last[b, d, n] = h[n]


@njit(
    [_signature("bwd", "f4"), _signature("bwd", "f8")],
    parallel=True,
    cache=True,
    fastmath=_FASTMATH,
)
def scan_bwd(
    u, delta, A, Bw, Cw, Dv, z, bias, softplus, has_z, reverse, K,
    ck, dy, dlast, du, ddelta, dz, dA_part, dD_part, dB_part, dC_part,
):  # fmt: skip
    """Reverse-time adjoint of `scan_fwd`, chunk by chunk from the checkpoints `ck`.

    Per chunk of K steps the states (and decays) are recomputed from the checkpoint into a (K+1, N)
    buffer, then walked backwards with the adjoint g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}.
    ddelta is the gradient w.r.t. the raw delta (softplus derivative included). Per-item results:
    dA_part (batch, d_inner, N), dD_part (batch, d_inner); B/C gradients are accumulated per worker
    into dB_part, dC_part (workers, batch, G, L, N) so no two threads write the same element.
    """
    batch, d_inner, L = u.shape
    n_state = A.shape[1]
    per_group = d_inner // Bw.shape[1]
    n_chunks = (L + K - 1) // K
    workers = dB_part.shape[0]
    total = batch * d_inner
    span = (total + workers - 1) // workers
    for w in prange(workers):
        hbuf = np.empty((K + 1, n_state), dtype=du.dtype)
        abuf = np.empty((K, n_state), dtype=du.dtype)
        dt_buf = np.empty(K, dtype=du.dtype)
        dsp_buf = np.empty(K, dtype=du.dtype)
        y_buf = np.empty(K, dtype=du.dtype)
        gst = np.empty(n_state, dtype=du.dtype)
        dA_acc = np.empty(n_state, dtype=du.dtype)
        a_row = np.empty(n_state, dtype=du.dtype)
        for item in range(w * span, min(total, (w + 1) * span)):
            b = item // d_inner
            d = item - b * d_inner
            g = d // per_group
            for n in range(n_state):
                a_row[n] = A[d, n]
                gst[n] = dlast[b, d, n]
                dA_acc[n] = 0
            bias_d = bias[d]
            skip_d = Dv[d]
            dD_acc = _ZERO
            for c in range(n_chunks - 1, -1, -1):
                s0 = c * K
                m = min(s0 + K, L) - s0
                for n in range(n_state):
                    hbuf[0, n] = ck[b, d, c - 1, n] if c > 0 else 0
                for j in range(m):
                    t = L - 1 - (s0 + j) if reverse else s0 + j
                    v = delta[b, d, t] + bias_d
                    dt = v
                    dsp = _ONE
                    if softplus and v <= _TWENTY:
                        e = math.exp(v)
                        dt = math.log1p(e)
                        dsp = e / (_ONE + e)
                    dt_buf[j] = dt
                    dsp_buf[j] = dsp
                    x = dt * u[b, d, t]
                    acc = _ZERO
                    for n in range(n_state):
                        a = _exp(dt * a_row[n])
                        abuf[j, n] = a
                        hn = a * hbuf[j, n] + x * Bw[b, g, t, n]
                        hbuf[j + 1, n] = hn
                        acc += hn * Cw[b, g, t, n]
                    y_buf[j] = acc
                for j in range(m - 1, -1, -1):
                    t = L - 1 - (s0 + j) if reverse else s0 + j
                    ut = u[b, d, t]
                    dt = dt_buf[j]
                    gy = dy[b, d, t]
                    if has_z:
                        zt = z[b, d, t]
                        sg = _ONE / (_ONE + math.exp(-zt))
                        dz[b, d, t] = gy * (y_buf[j] + skip_d * ut) * sg * (_ONE + zt * (_ONE - sg))
                        gy = gy * zt * sg
                    dD_acc += gy * ut
                    x = dt * ut
                    sum_gb = _ZERO
                    sum_da = _ZERO
                    for n in range(n_state):
                        gn = gst[n] + gy * Cw[b, g, t, n]
                        dC_part[w, b, g, t, n] += gy * hbuf[j + 1, n]
                        dB_part[w, b, g, t, n] += gn * x
                        sum_gb += gn * Bw[b, g, t, n]
                        da = gn * hbuf[j, n] * abuf[j, n]
                        sum_da += da * a_row[n]
                        dA_acc[n] += da * dt
                        gst[n] = gn * abuf[j, n]
                    du[b, d, t] = gy * skip_d + dt * sum_gb
                    ddelta[b, d, t] = (ut * sum_gb + sum_da) * dsp_buf[j]
            for n in range(n_state):
                dA_part[b, d, n] = dA_acc[n]
            dD_part[b, d] = dD_acc
