"""DM-FNet, our implementation: a diffusion-trained UNet feeding a fusion network (two stages).

Paper: D. He, W. Li, G. Wang, Y. Huang, S. Liu, "DM-FNet: Unified multimodal medical image fusion
via diffusion process-trained encoder-decoder", IEEE Trans. Multimedia, 2025 (arXiv:2506.15218).

As in the paper: stage I ("denoiser") trains a UNet by a DDPM diffusion process on the source
images of every modality; stage II ("fusion") freezes it, puts noisy versions of both sources at
several diffusion steps through it, and feeds its multilevel decoder features to a fusion network
built from three fusion modules, trained with a hybrid loss on brightness, contrast and detail.

Choices where the paper is silent or we had to differ:
- Stage I predicts the noise (eps) with an MSE loss (the paper phrases it as predicting the less
  noisy image; the two parametrisations are equivalent); linear betas 1e-4..2e-2 over T = 1000.
- Feature steps t in (5, 50, 100) (full) or (5, 50) (small); the noise is random in training and
  drawn from a fixed seed at inference so fusing is deterministic.
- The three modules, as we built them: (1) multi-step aggregation, per decoder level a 1x1 conv
  over the features of all steps plus channel attention (shared by both modalities); (2) cross-
  modal interaction, each modality gated by the other and a per-pixel softmax weighting of the
  two; (3) progressive reconstruction, coarse-to-fine upsampling with residual convs and a detail
  branch fed the sources' Sobel gradients.
- Hybrid loss: 1 * (1 - SSIM to both sources) + 2 * max-intensity L1 + 2 * max-gradient L1; the
  paper's colour term does not apply because we fuse one (luma) channel.
- Full config: UNet base 64, multipliers (1, 2, 4, 8), fusion width 32; small: base 16,
  multipliers (1, 2, 4), fusion width 12.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from neurofuse.losses import max_fusion_terms, sobel_magnitude, weighted_sum
from neurofuse.models.blocks import ChannelAttention
from neurofuse.models.diffusion import DiffusionUNet, GaussianDiffusion, denoising_loss
from neurofuse.models.registry import register_variants


@dataclass
class DMFNetConfig:
    """Sizes, diffusion settings and loss weights of DM-FNet (defaults: full size)."""

    unet_base: int = 64
    unet_mults: tuple[int, ...] = (1, 2, 4, 8)
    diffusion_steps: int = 1000
    feature_steps: tuple[int, ...] = (5, 50, 100)
    fuse_dim: int = 32
    feature_seed: int = 0
    w_ssim: float = 1.0
    w_int: float = 2.0
    w_grad: float = 2.0


class MultiStepAggregation(nn.Module):
    """Module 1: UNet features of S noise steps at one level -> one map; (N, S*C, h, w) -> (N, D, h, w)."""

    def __init__(self, cin: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(cin, dim, 1), nn.LeakyReLU(0.2), nn.Conv2d(dim, dim, 3, padding=1))
        self.ca = ChannelAttention(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ca(self.proj(x))


class CrossModalInteraction(nn.Module):
    """Module 2: mutual gating of the two modalities and a per-pixel softmax weighting.

    forward(fa, fb): (N, D, h, w) each -> fused (N, D, h, w).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gate_a = nn.Conv2d(dim, dim, 3, padding=1)
        self.gate_b = nn.Conv2d(dim, dim, 3, padding=1)
        self.weights = nn.Conv2d(2 * dim, 2, 3, padding=1)
        self.out = nn.Sequential(nn.Conv2d(dim, dim, 3, padding=1), nn.LeakyReLU(0.2))

    def forward(self, fa: torch.Tensor, fb: torch.Tensor) -> torch.Tensor:
        fa2 = fa + fb * torch.sigmoid(self.gate_a(fa))
        fb2 = fb + fa * torch.sigmoid(self.gate_b(fb))
        w = self.weights(torch.cat([fa2, fb2], 1)).softmax(1)
        return self.out(w[:, :1] * fa2 + w[:, 1:] * fb2)


class ProgressiveReconstruction(nn.Module):
    """Module 3: coarse-to-fine fusion of per-level maps plus a gradient detail branch.

    forward(levels, a, b): levels list of (N, D, h_i, w_i) coarse to fine (finest at full size),
    a, b (N, 1, H, W) -> fused image (N, 1, H, W) in [0, 1].
    """

    def __init__(self, dim: int, n_levels: int) -> None:
        super().__init__()
        self.merge = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * dim, dim, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(dim, dim, 3, padding=1))
            for _ in range(n_levels - 1)
        )
        self.detail = nn.Sequential(nn.Conv2d(4, dim, 3, padding=1), nn.LeakyReLU(0.2))
        self.out = nn.Sequential(nn.Conv2d(2 * dim, dim, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(dim, 1, 1))

    def forward(self, levels: list[torch.Tensor], a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        x = levels[0]
        for merge, skip in zip(self.merge, levels[1:], strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = skip + merge(torch.cat([x, skip], 1))
        d = self.detail(torch.cat([a, b, sobel_magnitude(a), sobel_magnitude(b)], 1))
        return torch.sigmoid(self.out(torch.cat([x, d], 1)))


class DMFNet(nn.Module):
    """DM-FNet: frozen-in-stage-II diffusion UNet + three-module fusion network.

    Args:
        cfg: sizes, diffusion settings, loss weights.

    forward(a, b): (N, 1, H, W) each in [0, 1] -> fused (N, 1, H, W) in [0, 1].
    Stages: `training_stages`; `set_stage("denoiser")` trains only the UNet (DDPM loss on a and b),
    `set_stage("fusion")` freezes the UNet and trains the fusion network with the hybrid loss.
    """

    spatial_dims = 2
    training_stages = ("denoiser", "fusion")

    def __init__(self, cfg: DMFNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.schedule = GaussianDiffusion(cfg.diffusion_steps)
        self.unet = DiffusionUNet(1, cfg.unet_base, cfg.unet_mults)
        s, d = len(cfg.feature_steps), cfg.fuse_dim
        self.aggregate = nn.ModuleList(MultiStepAggregation(s * c, d) for c in self.unet.feature_channels)
        self.interact = nn.ModuleList(CrossModalInteraction(d) for _ in self.unet.feature_channels)
        self.reconstruct = ProgressiveReconstruction(d, len(self.unet.feature_channels))
        self.stage = "denoiser"
        self.set_stage("denoiser")

    def set_stage(self, name: str) -> None:
        """Select the training stage; parameters outside it are frozen."""
        if name not in self.training_stages:
            raise ValueError(f"unknown stage {name!r}; DM-FNet stages: {', '.join(self.training_stages)}")
        self.stage = name
        for p in self.unet.parameters():
            p.requires_grad_(name == "denoiser")
        for mod in (self.aggregate, self.interact, self.reconstruct):
            for p in mod.parameters():
                p.requires_grad_(name == "fusion")

    @torch.no_grad()
    def unet_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Decoder features of noisy x at every feature step: per level (N, S*C_l, h_l, w_l), coarse to fine."""
        n, steps = x.shape[0], self.cfg.feature_steps
        if self.training:
            noise = torch.randn((len(steps),) + x.shape, device=x.device, dtype=x.dtype)
        else:
            gen = torch.Generator(device="cpu").manual_seed(self.cfg.feature_seed)
            noise = torch.randn((len(steps),) + x.shape, generator=gen).to(x)
        t = torch.tensor(steps, device=x.device).repeat_interleave(n)
        xt = self.schedule.q_sample((x * 2 - 1).repeat(len(steps), 1, 1, 1), t, noise.flatten(0, 1))
        _, feats = self.unet(xt, t, return_features=True)
        return [f.view(len(steps), n, *f.shape[1:]).transpose(0, 1).flatten(1, 2) for f in feats]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        feats = self.unet_features(torch.cat([a, b], 0))
        levels = []
        for agg, inter, f in zip(self.aggregate, self.interact, feats, strict=True):
            g = agg(f)
            levels.append(inter(g[:n], g[n:]))
        return self.reconstruct(levels, a, b)

    def training_loss(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Stage "denoiser": DDPM eps-MSE on a and b. Stage "fusion": the hybrid loss on the fused image."""
        if self.stage == "denoiser":
            loss = denoising_loss(self.unet, self.schedule, torch.cat([a, b], 0))
            return loss, {"ddpm": float(loss.detach())}
        terms = max_fusion_terms(self(a, b), a, b)
        c = self.cfg
        return weighted_sum(terms, {"ssim": c.w_ssim, "int": c.w_int, "text": c.w_grad})


# The variants: full size (the paper's) and reduced for CPU training (the shipped weights).
register_variants(DMFNet, DMFNetConfig, {
    "dmfnet": ("DM-FNet full size (UNet base 64, mults 1-2-4-8, feature steps 5/50/100).", {}),
    "dmfnet_small": ("DM-FNet reduced for CPU training (UNet base 16, mults 1-2-4, feature steps 5/50).",
                     dict(unet_base=16, unet_mults=(1, 2, 4), feature_steps=(5, 50), fuse_dim=12)),
})
