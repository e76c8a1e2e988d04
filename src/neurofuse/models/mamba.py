"""Latent Mamba layers of ClinicalFMamba: multi-direction scans with per-direction parameters.

A scan order is an axis permutation of the latent grid (slowest axis first) plus a reverse flag. The
order functions (`to_order`, `from_order`) permute and flatten a (B, C, *grid) tensor into a sequence
and restore it, for any grid size. Orders used (2D grid (H, W); 3D grid (D, H, W) with h = H, w = W,
z = D as in the paper):

- 2D four-direction: row-major and column-major, each forward and reversed.
- 3D tri-plane, single-modality blocks: (h, w, z) forward and reversed, and (h, z, w) (last two
  axes swapped). Cross-modal blocks: {(h, w, z), (w, h, z), (z, w, h), (h, z, w)} x {fwd, rev}, so
  each axis is the fastest-moving one in some scan.
- "single": one raster scan.

`MultiScanMamba` runs all its directions in one (or two) calls of `neurofuse.ssm.selective_scan` by
stacking them along the channel axis with grouped B/C, the reversed directions with `reverse=True`
(scanned in place, no flipped copies), and their short convolutions + SiLU in one call of
`neurofuse.ssm.conv.causal_conv1d_silu` per group; `forward_ref` is the plain per-direction loop
(`F.conv1d`, `selective_scan_ref`) it is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from neurofuse.ssm import selective_scan, selective_scan_ref
from neurofuse.ssm.conv import causal_conv1d_silu


class ScanOrder(NamedTuple):
    """One scan direction: `perm` lists grid axes slowest first; `reverse` runs the sequence backwards."""

    perm: tuple[int, ...]
    reverse: bool = False


_H, _W, _Z = 1, 2, 0  # 3D grid axes (D, H, W): the paper's h, w, z
_ORDERS: dict[tuple[int, str, str], tuple[ScanOrder, ...]] = {
    (2, "four_way", "single"): tuple(ScanOrder(p, r) for p in ((0, 1), (1, 0)) for r in (False, True)),
    (2, "four_way", "cross"): tuple(ScanOrder(p, r) for p in ((0, 1), (1, 0)) for r in (False, True)),
    (3, "tri_plane", "single"): (
        ScanOrder((_H, _W, _Z)), ScanOrder((_H, _W, _Z), True), ScanOrder((_H, _Z, _W))),
    (3, "tri_plane", "cross"): tuple(
        ScanOrder(p, r)
        for p in ((_H, _W, _Z), (_W, _H, _Z), (_Z, _W, _H), (_H, _Z, _W))
        for r in (False, True)
    ),
}


def scan_orders(spatial_dims: int, scan: str, kind: str = "single") -> tuple[ScanOrder, ...]:
    """Scan directions for a latent block: `scan` "four_way" (2D), "tri_plane" (3D) or "single"
    (one raster order); `kind` "single" (single-modality block) or "cross" (cross-modal block)."""
    if scan == "single":
        return (ScanOrder(tuple(range(spatial_dims))),)
    key = (spatial_dims, scan, kind)
    if key not in _ORDERS:
        raise ValueError(f"no scan {scan!r} for {spatial_dims}D {kind} blocks")
    return _ORDERS[key]


def to_order(x: torch.Tensor, perm: Sequence[int]) -> torch.Tensor:
    """(B, C, *grid) -> (B, C, L): tokens flattened with grid axes `perm` (slowest first)."""
    return x.permute(0, 1, *(2 + p for p in perm)).flatten(2)


def from_order(y: torch.Tensor, perm: Sequence[int], grid: Sequence[int]) -> torch.Tensor:
    """Inverse of `to_order`: (B, C, L) in order `perm` -> (B, C, *grid)."""
    y = y.unflatten(2, [grid[p] for p in perm])
    inv = sorted(range(len(perm)), key=lambda i: perm[i])
    return y.permute(0, 1, *(2 + i for i in inv))


def _dt_bias_init(n: int, dt_min: float = 1e-3, dt_max: float = 0.1) -> torch.Tensor:
    """Bias b with softplus(b) log-uniform in [dt_min, dt_max] (Mamba's dt init)."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=1e-4)
    return dt + torch.log(-torch.expm1(-dt))


class MultiScanMamba(nn.Module):
    """Mamba mixer with K scan directions, each with its own causal depthwise conv, x_proj, dt_proj,
    A_log and D; in_proj and out_proj (no bias) are shared.

    Single-modality: x (B, L, d_model) -> (B, L, d_model); the sequence, its gate z, and dt/B/C all come
    from x. Cross-modal (`cross=True`): `forward(x, grid, other)`; the sequence and z come from x via
    in_proj, dt/B/C from `other` via `in_proj_b` (no conv) and the per-direction x_proj. Tokens are in
    row-major order of `grid`. Per direction: conv -> SiLU -> x_proj -> selective scan with
    softplus(dt + bias) and the D skip; outputs are restored to row-major, averaged, gated by silu(z),
    optionally LayerNorm(d_inner), then out_proj.
    """

    def __init__(
        self,
        d_model: int,
        orders: Sequence[ScanOrder],
        d_state: int = 8,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        cross: bool = False,
        out_norm: bool = True,
    ) -> None:
        super().__init__()
        self.orders = tuple(ScanOrder(tuple(o.perm), bool(o.reverse)) for o in orders)
        k, di = len(self.orders), expand * d_model
        self.d_inner, self.d_state, self.d_conv = di, d_state, d_conv
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.cross = cross
        self.in_proj = nn.Linear(d_model, 2 * di, bias=False)
        self.in_proj_b = nn.Linear(d_model, di, bias=False) if cross else None
        bound = 1.0 / math.sqrt(d_conv)
        self.conv_weight = nn.Parameter(torch.empty(k, di, d_conv).uniform_(-bound, bound))
        self.conv_bias = nn.Parameter(torch.empty(k, di).uniform_(-bound, bound))
        bound = 1.0 / math.sqrt(di)
        self.x_proj_weight = nn.Parameter(torch.empty(k, self.dt_rank + 2 * d_state, di).uniform_(-bound, bound))
        bound = self.dt_rank**-0.5
        self.dt_proj_weight = nn.Parameter(torch.empty(k, di, self.dt_rank).uniform_(-bound, bound))
        self.dt_proj_bias = nn.Parameter(torch.stack([_dt_bias_init(di) for _ in range(k)]))
        a = torch.arange(1, d_state + 1, dtype=torch.float32)
        self.A_log = nn.Parameter(torch.log(a).expand(k, di, d_state).clone())  # S4D-real
        self.D = nn.Parameter(torch.ones(k, di))
        self.norm = nn.LayerNorm(di) if out_norm else None
        self.out_proj = nn.Linear(di, d_model, bias=False)

    def _project(self, x: torch.Tensor, grid: Sequence[int], other: torch.Tensor | None):
        """Shared input projections: sequence source and dt/B/C source as (B, d_inner, *grid), gate z."""
        if self.cross and other is None:
            raise ValueError("cross-modal Mamba needs `other`")
        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs = xs.transpose(1, 2).unflatten(2, tuple(grid))
        src = None
        if self.cross:
            src = self.in_proj_b(other).transpose(1, 2).unflatten(2, tuple(grid))
        return xs, src, z

    def _finish(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(B, d_inner, L) averaged scan output -> gate, norm, out_proj -> (B, L, d_model)."""
        y = y.transpose(1, 2) * F.silu(z)
        if self.norm is not None:
            y = self.norm(y)
        return self.out_proj(y)

    def forward(
        self, x: torch.Tensor, grid: Sequence[int], other: torch.Tensor | None = None
    ) -> torch.Tensor:
        xs, src, z = self._project(x, grid, other)
        ks = range(len(self.orders))
        groups = [([k for k in ks if self.orders[k].reverse == r], r) for r in (False, True)]
        groups = [g for g in groups if g[0]]  # forward directions in one scan call, reversed in another
        cache: dict[tuple[tuple[tuple[int, ...], ...], bool], torch.Tensor] = {}

        def seqs_of(t: torch.Tensor, idx: list[int], tag: bool) -> torch.Tensor:
            """The directions' sequences stacked (b, g, d_inner, L); the reversed group usually has the same
            orders as the forward one and reuses its stack."""
            key = (tuple(self.orders[k].perm for k in idx), tag)
            if key not in cache:
                cache[key] = torch.stack([to_order(t, self.orders[k].perm) for k in idx], dim=1)
            return cache[key]

        acc: dict[tuple[int, ...], torch.Tensor] = {}
        b, length = x.shape[0], x.shape[1]
        di, n, r = self.d_inner, self.d_state, self.dt_rank
        for idx, rev in groups:
            g = len(idx)
            sel = slice(None) if g == len(self.orders) else torch.tensor(idx, device=x.device)
            seqs = seqs_of(xs, idx, False).reshape(b, g * di, length)
            # anti-causal conv (rev) == causal conv on the reversed sequence
            u = causal_conv1d_silu(seqs, self.conv_weight[sel].reshape(g * di, self.d_conv),
                                   self.conv_bias[sel].reshape(-1), reverse=rev)
            dsrc = u.view(b, g, di, length)
            if self.cross:
                dsrc = seqs_of(src, idx, True)
            # matmul, not einsum: its (b, g, ., L) outputs are contiguous, so the reshape of delta is a view
            x_dbl = torch.matmul(self.x_proj_weight[sel], dsrc)  # (b, g, dt_rank + 2 d_state, L)
            dt, bm, cm = torch.split(x_dbl, [r, n, n], dim=2)
            delta = torch.matmul(self.dt_proj_weight[sel], dt).reshape(b, g * di, length)
            y = selective_scan(
                u, delta, -torch.exp(self.A_log[sel].float()).reshape(g * di, n),
                bm.contiguous(), cm.contiguous(), self.D[sel].reshape(-1).float(), None,
                self.dt_proj_bias[sel].reshape(-1).float(), True, backend="auto", reverse=rev,
            ).view(b, g, di, length)
            for j, k in enumerate(idx):
                perm = self.orders[k].perm
                acc[perm] = acc[perm] + y[:, j] if perm in acc else y[:, j]
        out = sum(from_order(v, p, grid) for p, v in acc.items()).flatten(2) / len(self.orders)
        return self._finish(out, z)

    def forward_ref(
        self, x: torch.Tensor, grid: Sequence[int], other: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Direct per-direction computation with `selective_scan_ref` (the slow, obvious path)."""
        xs, src, z = self._project(x, grid, other)
        zs = z.transpose(1, 2).unflatten(2, tuple(grid))
        total = 0
        for k, o in enumerate(self.orders):
            def order(t: torch.Tensor, o: ScanOrder = o) -> torch.Tensor:
                s = to_order(t, o.perm)
                return s.flip(-1) if o.reverse else s

            s = order(xs)
            u = F.conv1d(F.pad(s, (self.d_conv - 1, 0)), self.conv_weight[k].unsqueeze(1),
                         self.conv_bias[k], groups=self.d_inner)
            u = F.silu(u)
            dsrc = order(src) if self.cross else u
            x_dbl = torch.einsum("bdl,cd->bcl", dsrc, self.x_proj_weight[k])
            dt, bm, cm = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=1)
            delta = torch.einsum("brl,dr->bdl", dt, self.dt_proj_weight[k])
            y = selective_scan_ref(u, delta, -torch.exp(self.A_log[k].float()), bm, cm, self.D[k],
                                   order(zs), self.dt_proj_bias[k], True)
            if o.reverse:
                y = y.flip(-1)
            total = total + from_order(y, o.perm, grid)
        y = (total / len(self.orders)).flatten(2).transpose(1, 2)
        if self.norm is not None:
            y = self.norm(y)
        return self.out_proj(y)


class MambaBlock(nn.Module):
    """Residual block `x + MultiScanMamba(LayerNorm(x))`; tokens (B, L, C) in row-major grid order."""

    def __init__(self, d_model: int, orders: Sequence[ScanOrder], d_state: int, out_norm: bool = True,
                 **mixer_kw) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.mixer = MultiScanMamba(d_model, orders, d_state, out_norm=out_norm, **mixer_kw)

    def forward(self, x: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        return x + self.mixer(self.norm(x), grid)


class CrossMambaBlock(nn.Module):
    """Cross-modal residual block `x + CrossMamba(LN(x), LN'(y))`: x drives the sequence and gate,
    y the step size, B and C. x, y (B, L, C) -> (B, L, C)."""

    def __init__(self, d_model: int, orders: Sequence[ScanOrder], d_state: int, **mixer_kw) -> None:
        super().__init__()
        self.norm_x = nn.LayerNorm(d_model)
        self.norm_y = nn.LayerNorm(d_model)
        self.mixer = MultiScanMamba(d_model, orders, d_state, cross=True, **mixer_kw)

    def forward(self, x: torch.Tensor, y: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
        return x + self.mixer(self.norm_x(x), grid, self.norm_y(y))


def channel_swap(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Exchange every second channel (0, 2, 4, ...) of token tensors x, y (B, L, C)."""
    mask = (torch.arange(x.shape[-1], device=x.device) % 2 == 0)
    return torch.where(mask, y, x), torch.where(mask, x, y)


class TokenSwap(nn.Module):
    """2D token-swap stage (applied twice with the same weights by the model).

    `(x, y, rx, ry) -> (x', y', rx', ry')` on tokens (B, L, C): rx' = x + rx, ry' = y + ry; LayerNorm
    each; exchange every second channel; a plain one-direction Mamba per modality gives x', y'.
    """

    def __init__(self, d_model: int, d_state: int = 16, **mixer_kw) -> None:
        super().__init__()
        raster = [ScanOrder((0,))]  # plain scan; the grid is flattened to 1D below
        self.norm_x = nn.LayerNorm(d_model)
        self.norm_y = nn.LayerNorm(d_model)
        self.mamba_x = MultiScanMamba(d_model, raster, d_state, out_norm=False, **mixer_kw)
        self.mamba_y = MultiScanMamba(d_model, raster, d_state, out_norm=False, **mixer_kw)

    def forward(self, x: torch.Tensor, y: torch.Tensor, rx: torch.Tensor, ry: torch.Tensor):
        rx, ry = x + rx, y + ry
        sx, sy = channel_swap(self.norm_x(rx), self.norm_y(ry))
        grid = (x.shape[1],)
        return self.mamba_x(sx, grid), self.mamba_y(sy, grid), rx, ry
