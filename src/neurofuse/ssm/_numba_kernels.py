"""Compiled sequential selective-scan kernels (numba), forward and backward.

Imported lazily by `neurofuse.ssm.cpu` (importing this module compiles the kernels, or loads them from
numba's on-disk cache). One parallel work item is a block of up to 32 channels of one batch element
and group; the channels are the SIMD lanes, and the d_state hidden states live in a small (d_state, 32)
buffer (L1 cache) that is never materialised over the sequence. u, delta and z are read in place through
their strides (any view, including transposed grids); the `reverse` flag walks the sequence from its
end. Two precisions: float32 (with a vectorisable polynomial 2**x in place of libm's exp) and float64
(libm exp, used for gradient checks).
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
# error_model="numpy": float division follows IEEE (no ZeroDivisionError branch that blocks SIMD).

_F = np.float32
_ZERO, _ONE, _TWENTY = _F(0.0), _F(1.0), _F(20.0)
_LOG2E = _F(1.4426950408889634)
_LOG2E_64 = 1.4426950408889634  # A * log2(e) is rounded once, to the kernel's precision
_TWO = _F(2.0)
_W = 32  # channels per work item: the SIMD (innermost) dimension of the recurrence
_L3, _L5, _L7, _L9, _L11, _L13, _L15 = (_F(1.0 / k) for k in range(3, 16, 2))
# 2**x: x clamped to [-127, 128]; k = round(x) by the 1.5 * 2**23 shifter, whose low mantissa bits then
# hold k + 127, so shifting them into the exponent field gives 2**k exactly (k = -127 -> +0.0,
# k = 128 -> +inf, which is how underflow and overflow come out); 2**f on |f| <= 1/2 by a degree-6
# minimax polynomial (relative error 2e-9, under 1e-7 after float32 rounding).
_X2_LO, _X2_HI = _F(-127.0), _F(128.0)
_SHIFTER = _F(1.5 * 2**23 + 127)
_NEG_SHIFTER = -_SHIFTER
_P1, _P2, _P3, _P4, _P5, _P6 = (
    _F(c)
    for c in (0.6931472028552522, 0.24022647913611067, 0.05550332470701976, 0.009618437358486246,
              0.0013398874588578225, 0.00015353362064808785)
)  # fmt: skip


@intrinsic
def _fadd_strict(typingctx, a, b):
    """a + b without fast-math flags, so (x + S) - S is not reassociated back to x."""
    if a != types.float32 or b != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.fadd(args[0], args[1])

    return types.float32(a, b), codegen


@intrinsic
def _shifted_to_pow2(typingctx, t):
    """2**k from t = _SHIFTER + k (k integer in [-127, 128]): t's bits shifted left by 23."""
    if t != types.float32:
        return None

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.shl(builder.bitcast(args[0], i32), ir.Constant(i32, 23))
        return builder.bitcast(bits, ir.FloatType())

    return types.float32(t), codegen


def _exp2(x):
    """2**x; in compiled float32 code a branch-free polynomial version LLVM can vectorise."""
    return math.exp2(x)


@overload(_exp2)
def _exp2_overload(x):
    if x == types.float32:

        def exp2_f32(x):
            xc = min(max(x, _X2_LO), _X2_HI)  # NaN passes through (Python min/max semantics)
            t = _fadd_strict(xc, _SHIFTER)
            f = xc - _fadd_strict(t, _NEG_SHIFTER)
            p = _P6
            p = p * f + _P5
            p = p * f + _P4
            p = p * f + _P3
            p = p * f + _P2
            p = p * f + _P1
            p = p * f + _ONE
            return p * _shifted_to_pow2(t)

        return exp2_f32
    return lambda x: math.exp2(x)


def _exp(x):
    """exp(x) = 2**(x log2 e): the rounding of x log2 e gives a relative error up to |x| * 6e-8 (< 6e-6)."""
    return math.exp(x)


@overload(_exp)
def _exp_overload(x):
    if x == types.float32:
        return lambda x: _exp2(x * _LOG2E)
    return lambda x: math.exp(x)


def _log1p_small(w):
    """log1p(w) for 0 <= w <= 1; in compiled float32 code a vectorisable series."""
    return math.log1p(w)


@overload(_log1p_small)
def _log1p_small_overload(w):
    if w == types.float32:

        def log1p_f32(w):
            # log1p(w) = 2 atanh(s), s = w / (2 + w) in [0, 1/3]; odd series to s^15 (error < 2e-9).
            s = w / (_TWO + w)
            s2 = s * s
            p = _L15
            p = p * s2 + _L13
            p = p * s2 + _L11
            p = p * s2 + _L9
            p = p * s2 + _L7
            p = p * s2 + _L5
            p = p * s2 + _L3
            p = p * s2 + _ONE
            return _TWO * s * p

        return log1p_f32
    return lambda w: math.log1p(w)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy", inline="always")
def _softplus(v):
    """log(1 + exp(v)), = v above 20 (PyTorch's threshold)."""
    res = max(v, _ZERO) + _log1p_small(_exp(-abs(v)))
    if v > _TWENTY:
        res = v
    return res


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy", inline="always")
def _sigmoid(x):
    return _ONE / (_ONE + _exp(-x))


def _signature(kind: str, ft: str) -> str:
    """Sequences (u, delta, z, dy) are any-stride 4D (batch, d_inner, L1, L2); the rest C-contiguous."""
    a4, a2, a1 = f"{ft}[:,:,:,:]", f"{ft}[:,:]", f"{ft}[::1]"
    c3, c4 = f"{ft}[:,:,::1]", f"{ft}[:,:,:,::1]"
    common = f"{a4}, {a4}, {a2}, {c4}, {c4}, {a1}, {a4}, {a1}, b1, b1, b1, i8"
    if kind == "fwd":  # ..., save_ck, y, last, ck
        return f"void({common}, b1, {c4}, {c3}, {c4})"
    # ..., ck, dy, dlast, du, ddelta, dz, dA_part, dD_part, dB_part, dC_part
    c5 = f"{ft}[:,:,:,:,::1]"
    return f"void({common}, {c4}, {a4}, {c3}, {c4}, {c4}, {c4}, {c3}, {ft}[:,::1], {c5}, {c5})"


@njit(cache=True, inline="always")
def _segment(shape2, shape3, s0, j, m, reverse):
    """Grid row i, column k of step s0 + j, and how many of the remaining m - j steps stay in row i.

    The sequence is the last two axes (L1, L2) = (shape2, shape3) read row-major, from the end when
    reverse; steps inside one row are consecutive columns (k + q, or k - q when reverse).
    """
    L = shape2 * shape3
    t = L - 1 - (s0 + j) if reverse else s0 + j
    i = t // shape3
    k = t - i * shape3
    n = min(m - j, k + 1) if reverse else min(m - j, shape3 - k)
    return i, k, n


_T = 8  # side of the square blocks in which full channel blocks are transposed into and out of tiles


@njit(cache=True, inline="always")
def _tile_copy(seq, b, d0, wn, s0, m, reverse, tile, to_tile):
    """tile[j, w] = seq[b, d0 + w, t_j] (to_tile) or the reverse copy, for w < wn and the m steps from
    step s0 (t_j counts down when reverse).

    seq is (batch, d_inner, L1, L2): the sequence is its last two axes read row-major through their
    strides, so a transposed (column-major) grid view needs no copy. Work goes one grid-row segment at
    a time. A full block of channels (wn == _W) is transposed in _T x _T squares (_T steps of _T
    channels, which LLVM turns into vector loads and shuffles: the scan's forward 2.1x faster than
    element by element on Zen 3); what is left of a segment, and short blocks, run along each channel's
    steps, so each cache line of seq is used up (or filled) before the next channel's. Going across
    channels step by step instead touches 32 lines one channel stride apart per step; with strides of a
    multiple of 4 KiB (L = 1024 or 4096 in float32) those all fall in the same cache sets and evict each
    other before reuse (1.3-1.4x slower when storing).
    """
    j = 0
    while j < m:
        i, k, n = _segment(seq.shape[2], seq.shape[3], s0, j, m, reverse)
        q0 = 0
        if wn == _W:
            while q0 + _T <= n:
                for w0 in range(0, _W, _T):
                    for a in range(_T):
                        for q in range(_T):
                            col = k - q0 - q if reverse else k + q0 + q
                            if to_tile:
                                tile[j + q0 + q, w0 + a] = seq[b, d0 + w0 + a, i, col]
                            else:
                                seq[b, d0 + w0 + a, i, col] = tile[j + q0 + q, w0 + a]
                q0 += _T
        for w in range(wn):
            row = seq[b, d0 + w, i]
            for q in range(q0, n):
                col = k - q if reverse else k + q
                if to_tile:
                    tile[j + q, w] = row[col]
                else:
                    row[col] = tile[j + q, w]
        j += n


@njit(cache=True, inline="always")
def _gather(src, b, d0, wn, s0, m, reverse, tile):
    """tile[j, w] = src[b, d0 + w, t_j]: a chunk of the sequence into a (K, _W) tile (`_tile_copy`)."""
    _tile_copy(src, b, d0, wn, s0, m, reverse, tile, True)


@njit(cache=True, inline="always")
def _scatter(tile, b, d0, wn, s0, m, reverse, dst):
    """dst[b, d0 + w, t_j] = tile[j, w], the inverse of `_gather`, for our C-contiguous outputs."""
    _tile_copy(dst, b, d0, wn, s0, m, reverse, tile, False)


@njit(cache=True)
def _block(item, d_inner, n_groups):
    """Work item -> (batch index, group, first channel, number of channels) of a channel block."""
    per_group = d_inner // n_groups
    blocks = (per_group + _W - 1) // _W
    b = item // (n_groups * blocks)
    rest = item - b * n_groups * blocks
    g = rest // blocks
    blk = rest - g * blocks
    return b, g, g * per_group + blk * _W, min(_W, per_group - blk * _W)


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy", inline="never")
def _prework(dt_buf, u_buf, x_buf, dsp_buf, bias_blk, softplus, want_dsp):
    """On (K, _W) tiles: dt = softplus?(delta + bias) in place (dt_buf holds delta on entry); x = dt * u;
    when want_dsp, dsp = d dt / d delta (the softplus derivative, sigmoid(delta + bias), or 1)."""
    for j in range(dt_buf.shape[0]):
        for w in range(_W):
            v = dt_buf[j, w] + bias_blk[w]
            dt = _softplus(v) if softplus else v
            dt_buf[j, w] = dt
            x_buf[j, w] = dt * u_buf[j, w]
            if want_dsp:
                dsp_buf[j, w] = _sigmoid(v) if softplus else _ONE


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy", inline="never")
def _epilogue(y_buf, u_buf, z_buf, skip_blk, has_z):
    """In place on (K, _W) tiles: y = (y + D u) * silu(z)."""
    for j in range(y_buf.shape[0]):
        for w in range(_W):
            o = y_buf[j, w] + skip_blk[w] * u_buf[j, w]
            if has_z:
                zz = z_buf[j, w]
                o = o * zz * _sigmoid(zz)
            y_buf[j, w] = o


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy", inline="never")
def _gate_grads(m, y_buf, u_buf, z_buf, g_buf, skip_blk, dD_acc, has_z):
    """Backward of `_epilogue` on (K, _W) tiles, in place: g_buf holds dy on entry and the gradient of
    the scan output (dy * silu(z)) on exit, z_buf the gradient of z; dD_acc += sum over steps of g u."""
    for j in range(m):
        for w in range(_W):
            g = g_buf[j, w]
            if has_z:
                zz = z_buf[j, w]
                sg = _sigmoid(zz)
                out = y_buf[j, w] + skip_blk[w] * u_buf[j, w]
                z_buf[j, w] = g * out * sg * (_ONE + zz * (_ONE - sg))
                g = g * zz * sg
            g_buf[j, w] = g
            dD_acc[w] += g * u_buf[j, w]


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy", inline="never")
def _recurrence(m, t0, step, dt_buf, x_buf, a2_blk, Bt, Ct, h, y_buf):
    """m steps of h = exp(dt A) h + (dt u) B_t, y = C_t h for a block of channels (the SIMD lanes).

    A separate function so LLVM optimises the hot loop on its own. a2_blk holds A log2(e), so the
    decay is one `_exp2`. Bt, Ct: (L, N) of one batch and group; step t0 + j * step; dt_buf, x_buf,
    y_buf (K, _W); a2_blk, h (N, _W). All _W lanes run (a constant trip count); past a short block
    they hold zeros (zero-filled buffers, A = 0, x = 0), so they stay zero and are never scattered.
    """
    n_state = a2_blk.shape[0]
    for j in range(m):
        t = t0 + j * step
        for w in range(_W):
            y_buf[j, w] = 0
        for n in range(n_state):
            bn = Bt[t, n]
            cn = Ct[t, n]
            for w in range(_W):
                hn = _exp2(dt_buf[j, w] * a2_blk[n, w]) * h[n, w] + x_buf[j, w] * bn
                h[n, w] = hn
                y_buf[j, w] += hn * cn


@njit(cache=True, inline="always")
def _block_params(A, bias, Dv, d0, wn, a2_blk, bias_blk, skip_blk):
    """A channel block's parameters into (N, _W) / (_W,) buffers; a2 = A log2(e); lanes past wn get 0."""
    for w in range(_W):
        bias_blk[w] = bias[d0 + w] if w < wn else 0
        skip_blk[w] = Dv[d0 + w] if w < wn else 0
    for n in range(A.shape[1]):
        for w in range(_W):
            a2_blk[n, w] = A[d0 + w, n] * _LOG2E_64 if w < wn else 0


@njit(cache=True, inline="always")
def _clear_lanes(tile, wn):
    """Zero the lanes wn.._W of a (K, _W) tile, which `_gather` leaves as they were."""
    for j in range(tile.shape[0]):
        for w in range(wn, _W):
            tile[j, w] = 0


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy", inline="never")
def _recompute(m, t0, step, dt_buf, x_buf, a2_blk, Bt, Ct, hbuf, abuf, y_buf):
    """The forward's recurrence (`_recurrence`), keeping every decay and state of the chunk.

    abuf[j] = exp(dt_j A), hbuf[j + 1] = state after step j (hbuf[0] holds the chunk's initial state),
    y_buf[j] = C_t h (before skip and gate). Shapes: abuf (K, N, _W), hbuf (K + 1, N, _W). Not one
    function with `_recurrence` behind a flag: that made the forward's recurrence 3-13% slower (Zen 4).
    """
    n_state = a2_blk.shape[0]
    for j in range(m):
        t = t0 + j * step
        for w in range(_W):
            y_buf[j, w] = 0
        for n in range(n_state):
            bn = Bt[t, n]
            cn = Ct[t, n]
            for w in range(_W):
                a = _exp2(dt_buf[j, w] * a2_blk[n, w])
                abuf[j, n, w] = a
                hn = a * hbuf[j, n, w] + x_buf[j, w] * bn
                hbuf[j + 1, n, w] = hn
                y_buf[j, w] += hn * cn


@njit(cache=True, fastmath=_FASTMATH, error_model="numpy", inline="never")
def _adjoint(m, t0, step, dt_buf, x_buf, u_buf, g_buf, dsp_buf, y_buf, skip_blk, a_blk, Bt, Ct, hbuf, abuf,
             gst, dA_acc, sum_gb, sum_da, dBt, dCt):  # fmt: skip
    """The adjoint g_t = C_t dy_t + exp(dt_{t+1} A) g_{t+1} over one chunk, backwards in time.

    g_buf holds the scan output's gradient, gst (N, _W) the adjoint state carried between chunks.
    Accumulates dA_acc (N, _W) and dBt, dCt (L, N) of one batch and group; writes du into y_buf and
    the gradient w.r.t. the raw delta into x_buf (both free by now). Lanes past the block's channels
    hold zeros (see `scan_bwd`), so they add nothing to the sums over lanes.
    """
    n_state = a_blk.shape[0]
    for j in range(m - 1, -1, -1):
        t = t0 + j * step
        for w in range(_W):
            sum_gb[w] = 0
            sum_da[w] = 0
        for n in range(n_state):
            bn = Bt[t, n]
            cn = Ct[t, n]
            db = _ZERO
            dc = _ZERO
            for w in range(_W):
                gn = gst[n, w] + g_buf[j, w] * cn
                dc += g_buf[j, w] * hbuf[j + 1, n, w]
                db += gn * x_buf[j, w]
                sum_gb[w] += gn * bn
                da = gn * hbuf[j, n, w] * abuf[j, n, w]
                sum_da[w] += da * a_blk[n, w]
                dA_acc[n, w] += da * dt_buf[j, w]
                gst[n, w] = gn * abuf[j, n, w]
            dBt[t, n] += db
            dCt[t, n] += dc
        for w in range(_W):
            y_buf[j, w] = g_buf[j, w] * skip_blk[w] + dt_buf[j, w] * sum_gb[w]
            x_buf[j, w] = (u_buf[j, w] * sum_gb[w] + sum_da[w]) * dsp_buf[j, w]


@njit(
    [_signature("fwd", "f4"), _signature("fwd", "f8")],
    parallel=True,
    cache=True,
    fastmath=_FASTMATH,
    error_model="numpy",
)
def scan_fwd(u, delta, A, Bw, Cw, Dv, z, bias, softplus, has_z, reverse, K, save_ck, y, last, ck):
    """y = scan output (+ D u, * silu(z)); last = final state; ck[.., c, :] = state after (c+1)K steps.

    Shapes: u, delta, z (batch, d_inner, L) any strides; A (d_inner, N); Bw, Cw (batch, G, L, N);
    Dv, bias (d_inner,); y (batch, d_inner, L); last (batch, d_inner, N); ck (batch, d_inner, nck, N).
    A work item is a block of up to _W channels of one group: the innermost loops run over the
    block's channels (SIMD lanes, B_t and C_t broadcast), the states sit in an (N, _W) buffer.
    Time goes in blocks of K steps. Per block: u, delta (and z) are gathered into (K, _W) tiles
    (lanes = channels), the element-wise prework (softplus, delta*u) runs as one flat vectorised
    pass over the tiles, then the recurrence, then the epilogue (skip, gate) pass, and the tile is
    scattered to y. Transcendental math inside strided copy loops does not vectorise; on flat tiles
    it does.
    """
    batch, d_inner = u.shape[0], u.shape[1]
    L = u.shape[2] * u.shape[3]
    n_state = A.shape[1]
    n_groups = Bw.shape[1]
    items = batch * n_groups * ((d_inner // n_groups + _W - 1) // _W)
    for item in prange(items):
        b, g, d0, wn = _block(item, d_inner, n_groups)
        ft = y.dtype
        h = np.zeros((n_state, _W), dtype=ft)
        # zero-filled so the lanes past a short last block (wn < _W) hold finite values
        a2_blk = np.zeros((n_state, _W), dtype=ft)
        dt_buf = np.zeros((K, _W), dtype=ft)
        x_buf = np.zeros((K, _W), dtype=ft)
        u_buf = np.zeros((K, _W), dtype=ft)
        z_buf = np.zeros((K, _W), dtype=ft)
        y_buf = np.zeros((K, _W), dtype=ft)
        bias_blk = np.zeros(_W, dtype=ft)
        skip_blk = np.zeros(_W, dtype=ft)
        _block_params(A, bias, Dv, d0, wn, a2_blk, bias_blk, skip_blk)
        for s0 in range(0, L, K):
            m = min(K, L - s0)
            _gather(delta, b, d0, wn, s0, m, reverse, dt_buf)
            _gather(u, b, d0, wn, s0, m, reverse, u_buf)
            if has_z:
                _gather(z, b, d0, wn, s0, m, reverse, z_buf)
            _prework(dt_buf, u_buf, x_buf, y_buf, bias_blk, softplus, False)  # no dsp: y_buf is not written
            t0 = L - 1 - s0 if reverse else s0
            _recurrence(m, t0, -1 if reverse else 1, dt_buf, x_buf, a2_blk, Bw[b, g], Cw[b, g], h, y_buf)
            _epilogue(y_buf, u_buf, z_buf, skip_blk, has_z)
            _scatter(y_buf, b, d0, wn, s0, m, reverse, y)
            if save_ck and m == K:
                for w in range(wn):
                    for n in range(n_state):
                        ck[b, d0 + w, s0 // K, n] = h[n, w]
        for w in range(wn):
            for n in range(n_state):
                last[b, d0 + w, n] = h[n, w]


@njit(
    [_signature("bwd", "f4"), _signature("bwd", "f8")],
    parallel=True,
    cache=True,
    fastmath=_FASTMATH,
    error_model="numpy",
)
def scan_bwd(
    u, delta, A, Bw, Cw, Dv, z, bias, softplus, has_z, reverse, K,
    ck, dy, dlast, du, ddelta, dz, dA_part, dD_part, dB_part, dC_part,
):  # fmt: skip
    """Reverse-time adjoint of `scan_fwd`, chunk by chunk from the checkpoints `ck`.

    Per chunk of K steps the inputs are gathered into (K, _W) tiles as in the forward, the states
    (and decays, computed exactly as the forward did) are recomputed from the checkpoint into a
    (K+1, N, _W) buffer, then walked backwards with the adjoint
    g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}. ddelta is the gradient w.r.t. the raw delta (softplus
    derivative included). Per-channel results: dA_part (batch, d_inner, N), dD_part (batch, d_inner);
    B/C gradients are accumulated per worker into dB_part, dC_part (workers, batch, G, L, N) so no two
    threads write the same element.
    """
    batch, d_inner = u.shape[0], u.shape[1]
    L = u.shape[2] * u.shape[3]
    n_state = A.shape[1]
    n_groups = Bw.shape[1]
    n_chunks = (L + K - 1) // K
    workers = dB_part.shape[0]
    items = batch * n_groups * ((d_inner // n_groups + _W - 1) // _W)
    span = (items + workers - 1) // workers
    step = -1 if reverse else 1
    for wk in prange(workers):
        ft = du.dtype
        hbuf = np.zeros((K + 1, n_state, _W), dtype=ft)
        abuf = np.zeros((K, n_state, _W), dtype=ft)
        dt_buf = np.zeros((K, _W), dtype=ft)
        dsp_buf = np.zeros((K, _W), dtype=ft)
        x_buf = np.zeros((K, _W), dtype=ft)
        y_buf = np.zeros((K, _W), dtype=ft)
        g_buf = np.zeros((K, _W), dtype=ft)
        u_buf = np.zeros((K, _W), dtype=ft)
        z_buf = np.zeros((K, _W), dtype=ft)
        gst = np.zeros((n_state, _W), dtype=ft)
        dA_acc = np.zeros((n_state, _W), dtype=ft)
        a_blk = np.zeros((n_state, _W), dtype=ft)
        a2_blk = np.zeros((n_state, _W), dtype=ft)
        bias_blk = np.zeros(_W, dtype=ft)
        skip_blk = np.zeros(_W, dtype=ft)
        sum_gb = np.zeros(_W, dtype=ft)
        sum_da = np.zeros(_W, dtype=ft)
        dD_acc = np.zeros(_W, dtype=ft)
        for item in range(wk * span, min(items, (wk + 1) * span)):
            b, g, d0, wn = _block(item, d_inner, n_groups)
            # The loops run all _W lanes; past a short block every input lane is zero (A, u, dy, the
            # states), so those lanes stay zero, even after a wider block ran in this worker's buffers.
            _block_params(A, bias, Dv, d0, wn, a2_blk, bias_blk, skip_blk)
            if wn < _W:
                for tile in (dt_buf, u_buf, g_buf, z_buf):
                    _clear_lanes(tile, wn)
            for n in range(n_state):
                for w in range(_W):
                    a_blk[n, w] = A[d0 + w, n] if w < wn else 0
                    gst[n, w] = dlast[b, d0 + w, n] if w < wn else 0
                    dA_acc[n, w] = 0
            for w in range(_W):
                dD_acc[w] = 0
            for c in range(n_chunks - 1, -1, -1):
                s0 = c * K
                m = min(s0 + K, L) - s0
                t0 = L - 1 - s0 if reverse else s0
                for n in range(n_state):
                    for w in range(_W):
                        hbuf[0, n, w] = ck[b, d0 + w, c - 1, n] if c > 0 and w < wn else 0
                _gather(delta, b, d0, wn, s0, m, reverse, dt_buf)
                _gather(u, b, d0, wn, s0, m, reverse, u_buf)
                _prework(dt_buf, u_buf, x_buf, dsp_buf, bias_blk, softplus, True)
                _recompute(m, t0, step, dt_buf, x_buf, a2_blk, Bw[b, g], Cw[b, g], hbuf, abuf, y_buf)
                _gather(dy, b, d0, wn, s0, m, reverse, g_buf)
                if has_z:
                    _gather(z, b, d0, wn, s0, m, reverse, z_buf)
                _gate_grads(m, y_buf, u_buf, z_buf, g_buf, skip_blk, dD_acc, has_z)
                if has_z:
                    _scatter(z_buf, b, d0, wn, s0, m, reverse, dz)
                _adjoint(m, t0, step, dt_buf, x_buf, u_buf, g_buf, dsp_buf, y_buf, skip_blk, a_blk, Bw[b, g],
                         Cw[b, g], hbuf, abuf, gst, dA_acc, sum_gb, sum_da, dB_part[wk, b, g], dC_part[wk, b, g])
                _scatter(y_buf, b, d0, wn, s0, m, reverse, du)
                _scatter(x_buf, b, d0, wn, s0, m, reverse, ddelta)
            for w in range(wn):
                for n in range(n_state):
                    dA_part[b, d0 + w, n] = dA_acc[n, w]
                dD_part[b, d0 + w] = dD_acc[w]
