"""PyTorch-only chunked selective scan (any device; the portable GPU backend).

The sequence is cut into segments of `SEGMENT` steps, run one after the other with the hidden state
carried between them; each segment is gradient-checkpointed, so training memory is one segment's
graph plus a (batch, d_inner, d_state) carry per segment. Inside a segment of length S the steps are
grouped into nc chunks of K ~ sqrt(S) steps and the recurrence is evaluated with 2K + nc vectorised
steps instead of S:
  1. for j < K, all chunks at once from a zero state: local states and the running decay product;
  2. for c < nc, the exact state entering each chunk: h_in[c+1] = P[c] * h_in[c] + h_local_end[c];
  3. for j < K, all chunks at once again, now from h_in: the true states, contracted with C.
Only products of decays exp(delta A) appear (no division by a cumulative decay), so it stays exact
for zero or huge delta. Autograd provides the backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

SEGMENT = 1024


def _segment(dt: torch.Tensor, x: torch.Tensor, Bs: torch.Tensor, Cs: torch.Tensor, A: torch.Tensor,
             h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """Scan one segment. dt, x (batch, G, R, S); Bs, Cs (batch, G, S, N); A (G, R, N); h0 (batch, G, R, N).

    Returns the scan output (batch, G, R, S) and the state after the segment (batch, G, R, N).
    """
    S = dt.shape[-1]
    K = math.isqrt(S - 1) + 1  # ceil(sqrt(S))
    nc = -(-S // K)
    pad = nc * K - S  # padded steps have delta = 0 and x = 0: identity updates
    dt = F.pad(dt, (0, pad)).unflatten(-1, (nc, K))
    x = F.pad(x, (0, pad)).unflatten(-1, (nc, K))
    Bs = F.pad(Bs, (0, 0, 0, pad)).unflatten(2, (nc, K)).unsqueeze(2)  # (batch, G, 1, nc, K, N)
    Cs = F.pad(Cs, (0, 0, 0, pad)).unflatten(2, (nc, K)).unsqueeze(2)
    A_ = A[None, :, :, None, :]  # (1, G, R, 1, N)
    decays, inputs = [], []
    h_local = torch.zeros_like(dt[..., 0, None] * A_)  # (batch, G, R, nc, N)
    prod = torch.ones_like(h_local)
    for j in range(K):
        a = torch.exp(dt[..., j, None] * A_)
        b = x[..., j, None] * Bs[..., j, :]
        h_local = a * h_local + b
        prod = prod * a
        decays.append(a)
        inputs.append(b)
    carries = [h0]
    for c in range(nc - 1):
        carries.append(prod[..., c, :] * carries[-1] + h_local[..., c, :])
    h_end = prod[..., -1, :] * carries[-1] + h_local[..., -1, :]
    h = torch.stack(carries, dim=-2)
    ys = []
    for j in range(K):
        h = decays[j] * h + inputs[j]
        ys.append((h * Cs[..., j, :]).sum(-1))
    y = torch.stack(ys, dim=-1).flatten(-2)[..., :S]
    return y, h_end


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, reverse=False):  # fmt: skip
    """Chunked backend of `neurofuse.ssm.selective_scan` (CPU or CUDA tensors)."""
    dtype_in = u.dtype
    ft = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A = u.to(ft), delta.to(ft), A.to(ft)
    if delta_bias is not None:
        delta = delta + delta_bias.to(ft)[None, :, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, d_inner, L = u.shape
    B4 = (B if B.dim() == 4 else B.unsqueeze(1)).to(ft).transpose(-1, -2)  # (batch, G, L, N)
    C4 = (C if C.dim() == 4 else C.unsqueeze(1)).to(ft).transpose(-1, -2)
    groups, n_state = B4.shape[1], A.shape[1]
    R = d_inner // groups
    dt, x = delta.reshape(batch, groups, R, L), (delta * u).reshape(batch, groups, R, L)
    if reverse:
        dt, x, B4, C4 = dt.flip(-1), x.flip(-1), B4.flip(-2), C4.flip(-2)
    A3 = A.view(groups, R, n_state)
    h = u.new_zeros(batch, groups, R, n_state)
    need_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (dt, x, B4, C4, A3))
    ys = []
    for s in range(0, L, SEGMENT):
        args = (dt[..., s : s + SEGMENT], x[..., s : s + SEGMENT], B4[:, :, s : s + SEGMENT],
                C4[:, :, s : s + SEGMENT], A3, h)  # fmt: skip
        y_seg, h = checkpoint(_segment, *args, use_reentrant=False) if need_grad else _segment(*args)
        ys.append(y_seg)
    y = torch.cat(ys, dim=-1)
    if reverse:
        y = y.flip(-1)
    y = y.reshape(batch, d_inner, L)
    if D is not None:
        y = y + u * D.to(ft)[None, :, None]
    if z is not None:
        y = y * F.silu(z.to(ft))
    y = y.to(dtype_in)
    return (y, h.reshape(batch, d_inner, n_state)) if return_last_state else y
