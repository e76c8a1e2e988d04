"""The fast CPU backend: numba kernels wrapped in a `torch.autograd.Function`.

Forward runs the compiled sequential scan (parallel over batch x channel blocks) and, when a gradient
is needed, keeps the hidden state every `CHECKPOINT_EVERY` steps; backward recomputes each chunk from
its checkpoint and runs the reverse-time adjoint. u, delta and z are handed to the kernels as strided
numpy views of the tensors' memory: no copy for float32/float64 inputs, whatever their strides,
including a 2-axis sequence such as a transposed (column-major) grid view (batch, d_inner, W, H).
B and C are used in a (batch, groups, L, d_state) layout; a view already laid out that way (what a
`x_proj` linear layer produces) needs no copy, others are repacked once (d_inner/groups times smaller
than u).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

CHECKPOINT_EVERY = 64
_kernels = None


@contextmanager
def _torch_thread_count():
    """Run the kernel on torch's thread count and leave torch's count as it was.

    numba's OpenMP threading layer shares libgomp with torch and sets the OpenMP thread count to numba's
    own (NUMBA_NUM_THREADS, default: every core) when it starts, so without this a process limited to
    one thread (OMP_NUM_THREADS=1, `threads: 1`) ran torch on every core after its first scan.
    """
    import numba

    n = torch.get_num_threads()
    numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def load_kernels():
    """Import (compile, or load from numba's cache) the kernels; raises if numba cannot."""
    global _kernels
    if _kernels is None:
        with _torch_thread_count():  # loading starts numba's threading layer, which resets OpenMP's count
            from neurofuse.ssm import _numba_kernels

        _kernels = _numba_kernels
    return _kernels


def _np(t: torch.Tensor):
    return t.detach().numpy()


def _seq4(t: torch.Tensor) -> torch.Tensor:
    """(batch, d_inner, L) -> (batch, d_inner, 1, L) view; (batch, d_inner, L1, L2) passes through."""
    return t.unsqueeze(2) if t.dim() == 3 else t


def _state_layout(M: torch.Tensor, n_seq: int, ft: torch.dtype) -> torch.Tensor:
    """(batch, [groups,] d_state, *seq) -> (batch, groups, L, d_state) C-contiguous in ft."""
    if M.dim() == 2 + n_seq:
        M = M.unsqueeze(1)
    return M.flatten(3).transpose(-1, -2).to(ft).contiguous()


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
        k = load_kernels()
        ft = torch.float64 if u.dtype == torch.float64 else torch.float32
        n_seq = u.dim() - 2
        u4, d4 = _seq4(u.to(ft)), _seq4(delta.to(ft))
        batch, d_inner, L1, L2 = u4.shape
        n_state = A.shape[1]
        Af = A.to(ft)
        Bw, Cw = _state_layout(B, n_seq, ft), _state_layout(C, n_seq, ft)
        Df = D.to(ft).contiguous() if D is not None else u.new_zeros(d_inner, dtype=ft)
        bf = delta_bias.to(ft).contiguous() if delta_bias is not None else u.new_zeros(d_inner, dtype=ft)
        z4 = _seq4(z.to(ft)) if z is not None else u4
        save = any(ctx.needs_input_grad[:8])
        L = L1 * L2
        n_ck = (L + CHECKPOINT_EVERY - 1) // CHECKPOINT_EVERY if save else 1
        y = torch.empty(batch, d_inner, L1, L2, dtype=ft)
        last = torch.empty(batch, d_inner, n_state, dtype=ft)
        ck = torch.empty(batch, d_inner, n_ck, n_state, dtype=ft)
        with _torch_thread_count():
            k.scan_fwd(
                _np(u4), _np(d4), _np(Af), _np(Bw), _np(Cw), _np(Df), _np(z4), _np(bf),
                bool(delta_softplus), z is not None, bool(reverse), CHECKPOINT_EVERY, save,
                _np(y), _np(last), _np(ck),
            )  # fmt: skip
        if save:
            ctx.save_for_backward(u4, d4, Af, Bw, Cw, Df, z4, bf, ck)
            ctx.flags = (bool(delta_softplus), z is not None, bool(reverse))
            ctx.shapes = (u.shape, B.shape, C.shape, D is not None, delta_bias is not None)
            ctx.dtypes = tuple(t.dtype if t is not None else None for t in (u, delta, A, B, C, D, z, delta_bias))
        return y.view(u.shape).to(u.dtype), last

    @staticmethod
    def backward(ctx, dy, dlast):
        k = load_kernels()
        u4, d4, Af, Bw, Cw, Df, z4, bf, ck = ctx.saved_tensors
        softplus, has_z, reverse = ctx.flags
        u_shape, b_shape, c_shape, has_d, has_bias = ctx.shapes
        ft = u4.dtype
        batch, d_inner = u4.shape[:2]
        groups, L, n_state = Bw.shape[1], Bw.shape[2], Af.shape[1]
        workers = max(1, min(torch.get_num_threads(), _numba_threads(), batch * d_inner))
        dy4 = _seq4(dy.to(ft)) if dy is not None else u4.new_zeros(u4.shape)
        dlf = dlast.to(ft).contiguous() if dlast is not None else u4.new_zeros(batch, d_inner, n_state)
        du, ddelta, dz = (torch.empty(u4.shape, dtype=ft) for _ in range(3))
        dA_part = torch.empty(batch, d_inner, n_state, dtype=ft)
        dD_part = torch.empty(batch, d_inner, dtype=ft)
        dB_part = torch.zeros(workers, batch, groups, L, n_state, dtype=ft)
        dC_part = torch.zeros(workers, batch, groups, L, n_state, dtype=ft)
        with _torch_thread_count():
            k.scan_bwd(
                _np(u4), _np(d4), _np(Af), _np(Bw), _np(Cw), _np(Df), _np(z4), _np(bf),
                softplus, has_z, reverse, CHECKPOINT_EVERY,
                _np(ck), _np(dy4), _np(dlf), _np(du), _np(ddelta), _np(dz),
                _np(dA_part), _np(dD_part), _np(dB_part), _np(dC_part),
            )  # fmt: skip
        dt_u, dt_delta, dt_A, dt_B, dt_C, dt_D, dt_z, dt_bias = ctx.dtypes
        dB = dB_part.sum(0).transpose(-1, -2).reshape(b_shape)
        dC = dC_part.sum(0).transpose(-1, -2).reshape(c_shape)
        return (
            du.view(u_shape).to(dt_u),
            ddelta.view(u_shape).to(dt_delta),
            dA_part.sum(0).to(dt_A),
            dB.to(dt_B),
            dC.to(dt_C),
            dD_part.sum(0).to(dt_D) if has_d else None,
            dz.view(u_shape).to(dt_z) if has_z else None,
            ddelta.sum((0, 2, 3)).to(dt_bias) if has_bias else None,
            None,
            None,
        )


def selective_scan_numba(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, reverse=False):  # fmt: skip
    """Numba backend of `neurofuse.ssm.selective_scan` (CPU tensors only)."""
    y, last = _NumbaScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    return (y, last) if return_last_state else y
