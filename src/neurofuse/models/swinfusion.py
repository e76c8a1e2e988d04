"""SwinFusion, our implementation, plus the unsupervised fusion losses the peer models share.

Paper: J. Ma, L. Tang, F. Fan, J. Huang, X. Mei, Y. Ma, "SwinFusion: Cross-domain Long-range
Learning for General Image Fusion via Swin Transformer", IEEE/CAA J. Autom. Sinica 9(7), 2022.

Structure as in the paper: per modality a CNN shallow feature extractor and an intra-domain unit
(Swin self-attention layers); then attention-guided cross-domain fusion units, each a self-attention
layer per domain followed by a cross-attention layer per domain (queries from one modality,
keys/values from the other), all with shifted windows; the two streams are merged by a convolution
and a reconstruction part (Swin layers + CNN) produces the fused image. Loss (paper):
L = l_ssim * L_ssim + l_text * L_text + l_int * L_int with
L_ssim = 1 - (ssim(f, a) + ssim(f, b)) / 2, L_text = mean | |grad f| - max(|grad a|, |grad b|) |
(Sobel), L_int = mean | f - max(a, b) |, and weights 10, 20, 20.

Choices where the paper is silent or we had to differ:
- Sobel gradient magnitude is |gx| + |gy|; SSIM uses an 11x11 Gaussian window (sigma 1.5) over
  the valid region, constants for data range 1 (both from `neurofuse.losses`).
- Inputs whose sides are not multiples of the window are reflect-padded and the output cropped.
- Output squashed by a sigmoid (the paper clamps a tanh output); MLP ratio 2 (paper: 2).
- Full config: embedding 60, 6 heads, window 8, 4 intra-domain layers, 2 cross-domain units, 4
  reconstruction layers (the released configuration). Small config: 16 channels, 2 heads,
  window 4 (attention cost dominates on a CPU; window 8 made a step 3x slower), 1 intra-domain
  layer, 1 cross-domain unit, 2 reconstruction layers.

Its loss terms (`neurofuse.losses.max_fusion_terms`, `weighted_sum`) are shared with the other peers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from neurofuse.losses import max_fusion_terms, weighted_sum
from neurofuse.models.registry import register_variants
from neurofuse.models.swin import SwinLayer, SwinStage, crop_to, pad_to_multiple


@dataclass
class SwinFusionConfig:
    """Sizes and loss weights of SwinFusion (defaults: the paper's full configuration)."""

    dim: int = 60
    heads: int = 6
    window: int = 8
    intra_depth: int = 4
    cross_units: int = 2
    recon_depth: int = 4
    mlp_ratio: float = 2.0
    w_ssim: float = 10.0
    w_text: float = 20.0
    w_int: float = 20.0


class ShallowExtractor(nn.Module):
    """CNN shallow features: (N, 1, H, W) -> (N, C, H, W), two 3x3 convs with LeakyReLU."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, dim // 2, 3, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(dim // 2, dim, 3, padding=1),
            nn.LeakyReLU(0.2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class CrossDomainUnit(nn.Module):
    """Attention-guided cross-domain fusion unit: self-attention in each domain, then cross-attention.

    forward(fa, fb): (N, C, H, W) each -> (fa', fb'), fa' attends to fb and vice versa.
    """

    def __init__(self, dim: int, heads: int, window: int, mlp_ratio: float) -> None:
        super().__init__()
        self.self_a = SwinLayer(dim, heads, window, shift=False, mlp_ratio=mlp_ratio)
        self.self_b = SwinLayer(dim, heads, window, shift=False, mlp_ratio=mlp_ratio)
        self.cross_a = SwinLayer(dim, heads, window, shift=True, mlp_ratio=mlp_ratio, cross=True)
        self.cross_b = SwinLayer(dim, heads, window, shift=True, mlp_ratio=mlp_ratio, cross=True)

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fa, fb = self.self_a(fa), self.self_b(fb)
        return self.cross_a(fa, fb), self.cross_b(fb, fa)


class SwinFusion(nn.Module):
    """SwinFusion: shallow CNN + intra/cross-domain Swin attention + Swin/CNN reconstruction.

    Args:
        cfg: sizes and loss weights.

    forward(a, b): (N, 1, H, W) each in [0, 1] -> fused (N, 1, H, W) in [0, 1].
    """

    spatial_dims = 2

    def __init__(self, cfg: SwinFusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.shallow_a, self.shallow_b = ShallowExtractor(d), ShallowExtractor(d)
        self.intra_a = SwinStage(d, cfg.intra_depth, cfg.heads, cfg.window, cfg.mlp_ratio)
        self.intra_b = SwinStage(d, cfg.intra_depth, cfg.heads, cfg.window, cfg.mlp_ratio)
        self.cross = nn.ModuleList(
            CrossDomainUnit(d, cfg.heads, cfg.window, cfg.mlp_ratio) for _ in range(cfg.cross_units)
        )
        self.merge = nn.Sequential(nn.Conv2d(2 * d, d, 3, padding=1), nn.LeakyReLU(0.2))
        self.recon_swin = SwinStage(d, cfg.recon_depth, cfg.heads, cfg.window, cfg.mlp_ratio)
        self.recon_cnn = nn.Sequential(
            nn.Conv2d(d, d // 2, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(d // 2, 1, 3, padding=1)
        )

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, size = pad_to_multiple(a, self.cfg.window)
        b, _ = pad_to_multiple(b, self.cfg.window)
        fa, fb = self.intra_a(self.shallow_a(a)), self.intra_b(self.shallow_b(b))
        for unit in self.cross:
            fa, fb = unit(fa, fb)
        x = self.merge(torch.cat([fa, fb], 1))
        x = x + self.recon_swin(x)
        return crop_to(torch.sigmoid(self.recon_cnn(x)), size)

    def training_loss(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """10 * L_ssim + 20 * L_text + 20 * L_int (weights from the config)."""
        c = self.cfg
        return weighted_sum(max_fusion_terms(self(a, b), a, b), {"ssim": c.w_ssim, "text": c.w_text, "int": c.w_int})


# The variants: full size (the paper's) and reduced for CPU training (the shipped weights).
register_variants(SwinFusion, SwinFusionConfig, {
    "swinfusion": ("SwinFusion at the paper's size (embedding 60, window 8; for a GPU).", {}),
    "swinfusion_small": ("SwinFusion reduced for CPU training (16 channels, window 4, 1/1/2 layers).",
                         dict(dim=16, heads=2, window=4, intra_depth=1, cross_units=1, recon_depth=2)),
})
