"""The obviously-correct selective scan: a plain sequential recurrence in PyTorch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _expand_groups(M: torch.Tensor, d_inner: int) -> torch.Tensor:
    """(batch, d_state, L) or (batch, groups, d_state, L) -> (batch, d_inner, d_state, L)."""
    if M.dim() == 3:
        return M.unsqueeze(1).expand(-1, d_inner, -1, -1)
    groups = M.shape[1]
    return M.repeat_interleave(d_inner // groups, dim=1)


def selective_scan_ref(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    reverse: bool = False,
):
    """Mamba-1 selective scan, step by step (float32; float64 when u is float64).

    Shapes: u, delta, z (batch, d_inner, L); A (d_inner, d_state); B, C (batch, d_state, L) or
    (batch, groups, d_state, L); D, delta_bias (d_inner,). Returns y (batch, d_inner, L) in u's dtype
    and, on request, the last state (batch, d_inner, d_state) in the compute dtype.

        delta = softplus(delta + delta_bias)            (if delta_softplus)
        h_t   = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
        y_t   = <C_t, h_t> + D * u_t;  y = y * silu(z)   (if z is given)

    reverse=True runs t from L-1 down to 0 (flip, scan, flip back); the last state is then the one
    after position 0.
    """
    if reverse:
        flip = [t.flip(-1) if t is not None else None for t in (u, delta, B, C, z)]
        y, h = selective_scan_ref(flip[0], flip[1], A, flip[2], flip[3], D, flip[4], delta_bias,
                                  delta_softplus, True)  # fmt: skip
        return (y.flip(-1), h) if return_last_state else y.flip(-1)
    dtype_in = u.dtype
    ft = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(ft) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(ft)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, d_inner, L = u.shape
    Bx = _expand_groups(B, d_inner)
    Cx = _expand_groups(C, d_inner)
    h = u.new_zeros(batch, d_inner, A.shape[1])
    ys = []
    # unbind (not indexing) per step: its backward stacks the L slices once instead of L full-size zero
    # tensors, which would make the reference's backward quadratic in L.
    steps = zip(delta.unbind(-1), (delta * u).unbind(-1), Bx.unbind(-1), Cx.unbind(-1), strict=True)
    for dt, x, Bt, Ct in steps:
        h = torch.exp(dt[:, :, None] * A) * h + x[:, :, None] * Bt
        ys.append((h * Ct).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + u * D.to(ft)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(ft))
    y = y.to(dtype_in)
    return (y, h) if return_last_state else y
