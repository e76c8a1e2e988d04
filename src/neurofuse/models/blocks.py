"""Convolutional building blocks of ClinicalFMamba, one code path for 2D and 3D (`spatial_dims`).

Layer factories pick `Conv2d`/`Conv3d`, `BatchNorm2d`/`BatchNorm3d` by `spatial_dims` (MONAI style),
so DGCB, the stride-2 stages, the decoder stages and CMCA are written once. Also the 2D blocks more
than one peer uses (`ChannelAttention`: EH-DRAN and DM-FNet). Shapes in docstrings use
`*S` for the spatial dims: (H, W) in 2D, (D, H, W) in 3D.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """`nn.Conv2d` or `nn.Conv3d`."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[_check_dims(spatial_dims)]


def batch_norm_nd(spatial_dims: int) -> type[nn.Module]:
    """`nn.BatchNorm2d` or `nn.BatchNorm3d`."""
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[_check_dims(spatial_dims)]


def _check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    return spatial_dims


def make_act(name: str) -> nn.Module:
    """Activation by name: "leaky_relu" (slope 0.2, as the paper's caption) or "relu" (2D release)."""
    if name == "leaky_relu":
        return nn.LeakyReLU(0.2)
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; use 'leaky_relu' or 'relu'")


class DGCB(nn.Module):
    """Dilated gated convolution block; width unchanged, (N, C, *S) -> (N, C, *S).

    a = act(conv3(BN(x))), g = act(conv1(BN'(x))), h = act(dconv3_d(BN(a * g))); with the P-pyramid
    (2D release) h = act(BN(h)) and out = x + P(h) + P(P(h)) + P(P(P(h))) with one shared 3x3 conv P;
    without it (3D release) out = x + h.
    """

    def __init__(self, spatial_dims: int, channels: int, dilation: int, pyramid: bool = True) -> None:
        super().__init__()
        conv, bn = conv_nd(spatial_dims), batch_norm_nd(spatial_dims)
        self.norm_a = bn(channels)
        self.norm_g = bn(channels)
        self.norm_h = bn(channels)
        self.conv_a = conv(channels, channels, 3, padding=1)
        self.conv_g = conv(channels, channels, 1)
        self.conv_dilated = conv(channels, channels, 3, padding=dilation, dilation=dilation)
        self.act = nn.LeakyReLU(0.2)
        self.pyramid = pyramid
        if pyramid:
            self.norm_p = bn(channels)
            self.conv_p = conv(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.act(self.conv_a(self.norm_a(x)))
        g = self.act(self.conv_g(self.norm_g(x)))
        h = self.act(self.conv_dilated(self.norm_h(a * g)))
        if not self.pyramid:
            return x + h
        h = self.act(self.norm_p(h))
        p1 = self.conv_p(h)
        p2 = self.conv_p(p1)
        return x + p1 + p2 + self.conv_p(p2)


class DownStage(nn.Module):
    """Encoder stage: optional stride-2 kernel-2 conv (width in -> out), then a DGCB.

    (N, in, *S) -> (N, out, *S / stride). A stride-1 stage with equal widths has no conv (the 2D
    release skips its first downsampling); with different widths it uses a 1x1 conv.
    """

    def __init__(
        self, spatial_dims: int, in_ch: int, out_ch: int, stride: int, dilation: int, pyramid: bool
    ) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        if stride == 2:
            self.down: nn.Module = conv(in_ch, out_ch, 2, stride=2)
        elif in_ch != out_ch:
            self.down = conv(in_ch, out_ch, 1)
        else:
            self.down = nn.Identity()
        self.block = DGCB(spatial_dims, out_ch, dilation, pyramid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.down(x))


class UpStage(nn.Module):
    """Decoder stage: nearest x2 upsample -> 3x3 conv (in -> out) -> BN -> act. (N, in, *S) -> (N, out, *2S)."""

    def __init__(self, spatial_dims: int, in_ch: int, out_ch: int, act: str) -> None:
        super().__init__()
        self.conv = conv_nd(spatial_dims)(in_ch, out_ch, 3, padding=1)
        self.norm = batch_norm_nd(spatial_dims)(out_ch)
        self.act = make_act(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.act(self.norm(self.conv(x)))


class CMCA(nn.Module):
    """Cross-modal channel attention: `CMCA(fx -> fy) = conv_b(fy) * sigmoid(GMP(conv_a(fx)) + GAP(conv_a(fx)))`.

    fx, fy (N, C, *S) -> (N, C, *S). Both convs are 1x1 without bias; no MLP (as released).
    """

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.conv_a = conv(channels, channels, 1, bias=False)
        self.conv_b = conv(channels, channels, 1, bias=False)

    def forward(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        q = self.conv_a(fx).flatten(2)
        w = torch.sigmoid(q.amax(dim=2) + q.mean(dim=2))
        w = w.view(*w.shape, *([1] * (fy.dim() - 2)))
        return self.conv_b(fy) * w


class ChannelAttention(nn.Module):
    """Squeeze-excitation: (N, C, H, W) -> same, channels rescaled by a sigmoid gate."""

    def __init__(self, c: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = max(c // reduction, 4)
        self.gate = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(), nn.Linear(hidden, c), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x.mean((2, 3)))[:, :, None, None]
