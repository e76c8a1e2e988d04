"""The fast CPU backend: numba kernels wrapped in a `torch.autograd.Function`.

Forward runs the compiled sequential scan (parallel over batch x d_inner) and, when a gradient is
needed, keeps the hidden state every `CHECKPOINT_EVERY` steps; backward recomputes each chunk from its
checkpoint and runs the reverse-time adjoint. u, delta and z are handed to the kernels as strided
numpy views of the tensors' memory (no copy for float32/float64 inputs, whatever their strides).
B and C are used in a (batch, groups, L, d_state) layout; a (batch, groups, d_state, L) view whose
d_state stride is 1 (what `x_proj` produces) needs no copy, other layouts are repacked once (a tensor
d_inner/groups times smaller than u).
"""

from __future__ import annotations

import torch

CHECKPOINT_EVERY = 64
_kernels = None


def load_kernels():
    """Import (compile, or load from numba's cache) the kernels; raises if numba cannot."""
    global _kernels
    if _kernels is None:
        from neurofuse.ssm import _numba_kernels

        _kernels = _numba_kernels
    return _kernels


def _np(t: torch.Tensor):
    return t.detach().numpy()


def _state_layout(M: torch.Tensor, ft: torch.dtype) -> torch.Tensor:
    """(batch, [groups,] d_state, L) -> (batch, groups, L, d_state) C-contiguous in ft."""
    if M.dim() == 3:
        M = M.unsqueeze(1)
    return M.transpose(-1, -2).to(ft).contiguous()


class _NumbaScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse):
        k = load_kernels()
        ft = torch.float64 if u.dtype == torch.float64 else torch.float32
        batch, d_inner, L = u.shape
        n_state = A.shape[1]
        uf, df = u.to(ft), delta.to(ft)
        Af = A.to(ft)
        Bw, Cw = _state_layout(B, ft), _state_layout(C, ft)
        Df = D.to(ft).contiguous() if D is not None else u.new_zeros(d_inner, dtype=ft)
        bf = delta_bias.to(ft).contiguous() if delta_bias is not None else u.new_zeros(d_inner, dtype=ft)
        zf = z.to(ft) if z is not None else uf
        save = any(ctx.needs_input_grad[:8])
        n_ck = (L + CHECKPOINT_EVERY - 1) // CHECKPOINT_EVERY if save else 1
        y = torch.empty(batch, d_inner, L, dtype=ft)
        last = torch.empty(batch, d_inner, n_state, dtype=ft)
        ck = torch.empty(batch, d_inner, n_ck, n_state, dtype=ft)
        k.scan_fwd(
            _np(uf), _np(df), _np(Af), _np(Bw), _np(Cw), _np(Df), _np(zf), _np(bf),
            bool(delta_softplus), z is not None, bool(reverse), CHECKPOINT_EVERY, save,
            _np(y), _np(last), _np(ck),
        )  # fmt: skip
        if save:
            ctx.save_for_backward(uf, df, Af, Bw, Cw, Df, zf, bf, ck)
            ctx.flags = (bool(delta_softplus), z is not None, bool(reverse))
            ctx.shapes = (B.dim(), D is not None, delta_bias is not None)
            ctx.dtypes = tuple(t.dtype if t is not None else None for t in (u, delta, A, B, C, D, z, delta_bias))
        return y.to(u.dtype), last

    @staticmethod
    def backward(ctx, dy, dlast):
        k = load_kernels()
        uf, df, Af, Bw, Cw, Df, zf, bf, ck = ctx.saved_tensors
        softplus, has_z, reverse = ctx.flags
        b_dim, has_d, has_bias = ctx.shapes
        ft = uf.dtype
        batch, d_inner, L = uf.shape
        groups, n_state = Bw.shape[1], Af.shape[1]
        workers = max(1, min(torch.get_num_threads(), _numba_threads(), batch * d_inner))
        dyf = dy.to(ft) if dy is not None else uf.new_zeros(uf.shape)
        dlf = dlast.to(ft) if dlast is not None else uf.new_zeros(batch, d_inner, n_state)
        du, ddelta, dz = (torch.empty(batch, d_inner, L, dtype=ft) for _ in range(3))
        dA_part = torch.empty(batch, d_inner, n_state, dtype=ft)
        dD_part = torch.empty(batch, d_inner, dtype=ft)
        dB_part = torch.zeros(workers, batch, groups, L, n_state, dtype=ft)
        dC_part = torch.zeros(workers, batch, groups, L, n_state, dtype=ft)
        k.scan_bwd(
            _np(uf), _np(df), _np(Af), _np(Bw), _np(Cw), _np(Df), _np(zf), _np(bf),
            softplus, has_z, reverse, CHECKPOINT_EVERY,
            _np(ck), _np(dyf), _np(dlf), _np(du), _np(ddelta), _np(dz),
            _np(dA_part), _np(dD_part), _np(dB_part), _np(dC_part),
        )  # fmt: skip
        dt_u, dt_delta, dt_A, dt_B, dt_C, dt_D, dt_z, dt_bias = ctx.dtypes
        dB = dB_part.sum(0).transpose(-1, -2)
        dC = dC_part.sum(0).transpose(-1, -2)
        if b_dim == 3:
            dB, dC = dB.squeeze(1), dC.squeeze(1)
        return (
            du.to(dt_u),
            ddelta.to(dt_delta),
            dA_part.sum(0).to(dt_A),
            dB.to(dt_B),
            dC.to(dt_C),
            dD_part.sum(0).to(dt_D) if has_d else None,
            dz.to(dt_z) if has_z else None,
            ddelta.sum((0, 2)).to(dt_bias) if has_bias else None,
            None,
            None,
        )


def _numba_threads() -> int:
    import numba

    return numba.get_num_threads()


def selective_scan_numba(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                         return_last_state=False, reverse=False):  # fmt: skip
    """Numba backend of `neurofuse.ssm.selective_scan` (CPU tensors only)."""
    y, last = _NumbaScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)
    return (y, last) if return_last_state else y
