"""MRSCFusion, our implementation: multiscale CNN autoencoder + residual Swin-convolution fusion.

Paper: X. Xie, X. Zhang, S. Ye, D. Xiong, L. Ouyang, B. Yang, H. Zhou, Y. Wan, "MRSCFusion: Joint
Residual Swin Transformer and Multiscale CNN for Unsupervised Multimodal Medical Image Fusion",
IEEE Trans. Instrum. Meas. 72, 2023.

As in the paper: two training stages. Stage "autoencoder" trains a multiscale CNN encoder/decoder
to reconstruct single images; stage "fusion" freezes it and trains, at every scale, a residual
Swin-convolution fusion (RSCF) module made of a global residual Swin transformer branch and a local
gradient residual dense branch, with an unsupervised loss of content and intensity terms.

Choices where the paper is silent or we had to differ:
- Encoder: three scales (full, 1/2, 1/4); each a multiscale conv block (parallel 3x3 and 5x5
  convs, 1x1 merge, residual); stride-2 convs between scales; shared by both modalities.
- Decoder: coarse-to-fine, bilinear upsampling, concatenation with the next scale's features, two
  3x3 convs; sigmoid output.
- RSCF: 1x1 conv over the concatenated pair, then (global) one residual Swin block and (local) a
  two-layer dense block plus a 1x1 conv of the features' Sobel gradients, merged by a 1x1 conv.
- Autoencoder loss: MSE + (1 - SSIM), averaged over a and b. Fusion loss: content = 1 * (1 - SSIM
  to both) + 5 * max-gradient L1; intensity = 5 * max-intensity L1.
- Full config: widths (32, 64, 128), Swin depth 2, 4 heads, window 8. Small: widths (12, 24, 48),
  depth 1, 2 heads, window 4. Inputs are padded to a multiple of 4 * window and cropped back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from neurofuse.losses import max_fusion_terms, sobel_magnitude, ssim2d, weighted_sum
from neurofuse.models.registry import register_variants
from neurofuse.models.swin import ResidualSwinBlock, crop_to, pad_to_multiple


@dataclass
class MRSCFusionConfig:
    """Sizes and loss weights of MRSCFusion (defaults: full size)."""

    widths: tuple[int, ...] = (32, 64, 128)
    swin_depth: int = 2
    heads: int = 4
    window: int = 8
    growth: int = 16
    w_ssim: float = 1.0
    w_text: float = 5.0
    w_int: float = 5.0


class MultiScaleConv(nn.Module):
    """Parallel 3x3 and 5x5 convs, 1x1 merge, residual: (N, C, H, W) -> (N, C, H, W)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.k3 = nn.Conv2d(c, c, 3, padding=1)
        self.k5 = nn.Conv2d(c, c, 5, padding=2)
        self.merge = nn.Conv2d(2 * c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.leaky_relu(self.k3(x), 0.2), F.leaky_relu(self.k5(x), 0.2)], 1)
        return x + self.merge(y)


class Encoder(nn.Module):
    """(N, 1, H, W) -> features at 3 scales [(N, w0, H, W), (N, w1, H/2, W/2), (N, w2, H/4, W/4)]."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.inc = nn.Sequential(nn.Conv2d(1, widths[0], 3, padding=1), nn.LeakyReLU(0.2))
        self.blocks = nn.ModuleList(MultiScaleConv(w) for w in widths)
        self.downs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1), nn.LeakyReLU(0.2))
            for i in range(len(widths) - 1)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.blocks[0](self.inc(x))]
        for down, blk in zip(self.downs, self.blocks[1:], strict=True):
            feats.append(blk(down(feats[-1])))
        return feats


class Decoder(nn.Module):
    """Multiscale features (fine to coarse, as from `Encoder`) -> image (N, 1, H, W) in [0, 1]."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.ups = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(widths[i + 1] + widths[i], widths[i], 3, padding=1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(widths[i], widths[i], 3, padding=1),
                nn.LeakyReLU(0.2),
            )
            for i in range(len(widths) - 1)
        )
        self.out = nn.Conv2d(widths[0], 1, 3, padding=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for i in range(len(feats) - 2, -1, -1):
            x = F.interpolate(x, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            x = self.ups[i](torch.cat([x, feats[i]], 1))
        return torch.sigmoid(self.out(x))


class GradientResidualDense(nn.Module):
    """Local branch: two densely connected 3x3 convs, 1x1 fuse, plus a Sobel-gradient shortcut; (N, C, H, W) -> same."""

    def __init__(self, c: int, growth: int) -> None:
        super().__init__()
        self.d1 = nn.Conv2d(c, growth, 3, padding=1)
        self.d2 = nn.Conv2d(c + growth, growth, 3, padding=1)
        self.fuse = nn.Conv2d(c + 2 * growth, c, 1)
        self.grad = nn.Conv2d(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y1 = F.leaky_relu(self.d1(x), 0.2)
        y2 = F.leaky_relu(self.d2(torch.cat([x, y1], 1)), 0.2)
        return x + self.fuse(torch.cat([x, y1, y2], 1)) + self.grad(sobel_magnitude(x))


class RSCF(nn.Module):
    """Residual Swin-convolution fusion at one scale: (fa, fb) (N, C, h, w) each -> fused (N, C, h, w)."""

    def __init__(self, c: int, depth: int, heads: int, window: int, growth: int) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(2 * c, c, 1), nn.LeakyReLU(0.2))
        self.global_branch = ResidualSwinBlock(c, depth, heads, window)
        self.local_branch = GradientResidualDense(c, growth)
        self.merge = nn.Conv2d(2 * c, c, 1)

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        x = self.reduce(torch.cat([fa, fb], 1))
        return self.merge(torch.cat([self.global_branch(x), self.local_branch(x)], 1))


class MRSCFusion(nn.Module):
    """MRSCFusion: multiscale autoencoder with an RSCF module per scale.

    Args:
        cfg: sizes and loss weights.

    forward(a, b): (N, 1, H, W) each in [0, 1] -> fused (N, 1, H, W) in [0, 1].
    Stages: "autoencoder" (encoder/decoder reconstruct a and b; RSCF frozen) and "fusion"
    (encoder/decoder frozen; RSCF trained with the fusion loss).
    """

    spatial_dims = 2
    training_stages = ("autoencoder", "fusion")

    def __init__(self, cfg: MRSCFusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        heads = [min(cfg.heads, w // 4) or 1 for w in cfg.widths]
        self.encoder, self.decoder = Encoder(cfg.widths), Decoder(cfg.widths)
        self.rscf = nn.ModuleList(
            RSCF(w, cfg.swin_depth, h, cfg.window, cfg.growth) for w, h in zip(cfg.widths, heads, strict=True)
        )
        self.multiple = cfg.window * 2 ** (len(cfg.widths) - 1)
        self.stage = "autoencoder"
        self.set_stage("autoencoder")

    def set_stage(self, name: str) -> None:
        """Select the training stage; parameters outside it are frozen."""
        if name not in self.training_stages:
            raise ValueError(f"unknown stage {name!r}; MRSCFusion stages: {', '.join(self.training_stages)}")
        self.stage = name
        for p in list(self.encoder.parameters()) + list(self.decoder.parameters()):
            p.requires_grad_(name == "autoencoder")
        for p in self.rscf.parameters():
            p.requires_grad_(name == "fusion")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, size = pad_to_multiple(a, self.multiple)
        b, _ = pad_to_multiple(b, self.multiple)
        fused = [m(fa, fb) for m, fa, fb in zip(self.rscf, self.encoder(a), self.encoder(b), strict=True)]
        return crop_to(self.decoder(fused), size)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Autoencoder pass of one image (N, 1, H, W) -> (N, 1, H, W)."""
        x, size = pad_to_multiple(x, self.multiple)
        return crop_to(self.decoder(self.encoder(x)), size)

    def training_loss(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Stage "autoencoder": MSE + (1 - SSIM) reconstruction. Stage "fusion": content + intensity loss."""
        c = self.cfg
        if self.stage == "autoencoder":
            x = torch.cat([a, b], 0)
            y = self.reconstruct(x)
            terms = {"mse": F.mse_loss(y, x), "ssim": 1.0 - ssim2d(y, x)}
            return weighted_sum(terms, {"mse": 1.0, "ssim": 1.0})
        return weighted_sum(max_fusion_terms(self(a, b), a, b), {"ssim": c.w_ssim, "text": c.w_text, "int": c.w_int})


# The variants: full size (the paper's) and reduced for CPU training (the shipped weights).
register_variants(MRSCFusion, MRSCFusionConfig, {
    "mrscfusion": ("MRSCFusion full size (widths 32/64/128, window 8).", {}),
    "mrscfusion_small": ("MRSCFusion reduced for CPU training (widths 12/24/48, window 4, one Swin layer per scale).",
                         dict(widths=(12, 24, 48), swin_depth=1, heads=2, window=4, growth=8)),
})
