"""Shifted-window (Swin) attention blocks shared by the peer models (SwinFusion, MRSCFusion, LAGN).

Follows Liu et al., "Swin Transformer: Hierarchical Vision Transformer using Shifted Windows",
ICCV 2021: attention inside non-overlapping ws x ws windows with a learned relative-position bias,
every other layer shifted by ws/2 with a mask so tokens only attend inside their original window.
`WindowAttention` also does cross-attention (queries from one modality, keys/values from another),
as SwinFusion's inter-domain fusion unit needs.

All blocks take and return channel-first maps (B, C, H, W); H and W must be multiples of the
window size (`pad_to_multiple` / `crop_to` do that around a whole network). The fast path uses
`F.scaled_dot_product_attention`; `window_attention_ref` writes the softmax out, and a test checks
that they agree.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (B, C, H, W) on the bottom/right to multiples of `multiple`; returns (x, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def crop_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Undo `pad_to_multiple`: keep the top-left (H, W) of (B, C, H', W')."""
    return x[..., : size[0], : size[1]]


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, ws * ws, C) with nW = (H / ws) * (W / ws)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(B * nW, ws * ws, C) -> (B, H, W, C); inverse of `window_partition`."""
    c = windows.shape[-1]
    b = windows.shape[0] // ((h // ws) * (w // ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


def shift_mask(h: int, w: int, ws: int, shift: int, device: torch.device) -> torch.Tensor:
    """Additive mask (nW, N, N), N = ws*ws: 0 inside a shifted window's own region, -inf across regions."""
    region = torch.zeros(1, h, w, 1, device=device)
    cuts = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for wsl in cuts:
            region[:, hs, wsl, :] = label
            label += 1
    ids = window_partition(region, ws).squeeze(-1)  # (nW, N)
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, float("-inf"))


def window_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Written-out attention softmax(q k^T / sqrt(d) + bias) v; q, k, v (M, heads, N, d), bias (M, heads, N, N)."""
    scores = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5 + bias
    return scores.softmax(dim=-1) @ v


class WindowAttention(nn.Module):
    """Multi-head attention inside windows with relative-position bias; self or cross.

    Args:
        dim: channels C. heads: attention heads (C divisible by heads). window: window size ws.

    forward(x, context=None, mask=None): x, context (M, N, C) windows of N = ws*ws tokens;
    queries from x, keys/values from `context` (x when None); mask (nW, N, N) additive or None,
    M a multiple of nW. Returns (M, N, C).
    """

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.heads, self.window = heads, window
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_table = nn.Parameter(torch.zeros((2 * window - 1) ** 2, heads))
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
        self.register_buffer("rel_index", rel[..., 0] * (2 * window - 1) + rel[..., 1], persistent=False)

    def relative_bias(self) -> torch.Tensor:
        """The learned relative-position bias, (heads, N, N)."""
        n = self.window**2
        return self.bias_table[self.rel_index.reshape(-1)].view(n, n, self.heads).permute(2, 0, 1)

    def full_bias(self, m: int, mask: torch.Tensor | None) -> torch.Tensor:
        """Bias plus shift mask materialised for all M windows, (M, heads, N, N) (for the reference)."""
        bias = self.relative_bias().unsqueeze(0)
        if mask is not None:
            bias = (bias + mask.unsqueeze(1)).repeat(m // mask.shape[0], 1, 1, 1)
        return bias.expand(m, -1, -1, -1)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        m, n, c = x.shape
        context = x if context is None else context
        q = self.q(x).view(m, n, self.heads, c // self.heads).transpose(1, 2)
        k, v = self.kv(context).view(m, n, 2, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        bias = self.relative_bias().to(q.dtype)
        if mask is None:  # (heads, N, N) broadcasts over the windows
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:  # windows grouped per image so the (nW, heads, N, N) mask broadcasts over images
            nw = mask.shape[0]
            q, k, v = (t.view(m // nw, nw, *t.shape[1:]) for t in (q, k, v))
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias + mask.unsqueeze(1).to(q.dtype))
            out = out.flatten(0, 1)
        return self.proj(out.transpose(1, 2).reshape(m, n, c))


class SwinLayer(nn.Module):
    """One Swin transformer layer: LN -> (shifted) window attention -> +res -> LN -> MLP -> +res.

    forward(x, context=None): x, context (B, C, H, W), H and W multiples of `window`; a layer
    built with cross=True takes a context and does cross-attention (queries from x, keys/values
    from context). Returns (B, C, H, W).
    """

    def __init__(
        self, dim: int, heads: int, window: int, shift: bool = False, mlp_ratio: float = 2.0, cross: bool = False
    ) -> None:
        super().__init__()
        self.window, self.shift = window, (window // 2 if shift else 0)
        self.norm1 = nn.LayerNorm(dim)
        self.norm_ctx = nn.LayerNorm(dim) if cross else None
        self.attn = WindowAttention(dim, heads, window)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _windows(self, t: torch.Tensor, shift: int) -> torch.Tensor:
        if shift:
            t = torch.roll(t, (-shift, -shift), dims=(1, 2))
        return window_partition(t, self.window)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        if (context is None) != (self.norm_ctx is None):
            raise ValueError("a cross-attention layer needs a context and a self-attention layer takes none")
        if h % self.window or w % self.window:
            raise ValueError(f"feature map {h}x{w} is not a multiple of the window {self.window}")
        # one window covering the map: shifting would only wrap tokens around, so skip it
        shift = self.shift if min(h, w) > self.window else 0
        t = x.permute(0, 2, 3, 1)
        qw = self._windows(self.norm1(t), shift)
        cw = None if context is None else self._windows(self.norm_ctx(context.permute(0, 2, 3, 1)), shift)
        mask = shift_mask(h, w, self.window, shift, x.device) if shift else None
        y = window_reverse(self.attn(qw, cw, mask), self.window, h, w)
        if shift:
            y = torch.roll(y, (shift, shift), dims=(1, 2))
        t = t + y
        t = t + self.mlp(self.norm2(t))
        return t.permute(0, 3, 1, 2)


class SwinStage(nn.Module):
    """`depth` Swin layers alternating plain and shifted windows; (B, C, H, W) -> (B, C, H, W)."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            SwinLayer(dim, heads, window, shift=bool(i % 2), mlp_ratio=mlp_ratio) for i in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ResidualSwinBlock(nn.Module):
    """Residual Swin block (RSTB, as in SwinIR): x + conv3x3(SwinStage(x)); (B, C, H, W) -> same."""

    def __init__(self, dim: int, depth: int, heads: int, window: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.stage = SwinStage(dim, depth, heads, window, mlp_ratio)
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(self.stage(x))
