"""LAGN, our implementation from the abstract: diffusion-driven fusion with a local and global network.

Paper: J. Qu, D. Huang, Y. Shi, J. Liu, W. Tang, "Diffusion-driven multi-modality medical image
fusion", 2025 (abstract only; no public code). What the abstract states: a diffusion model is used
to exploit the information-distribution relationship among the modalities; a local and global
network (LAGN) preserves complementary information; a loss strategy ties together
diffusion-generated images, original images and fused images to prevent information loss.

Everything else is our assumption:
- Diffusion model: one DDPM over the stacked pair (a, b) as a 2-channel image, so it learns the
  joint distribution of the two modalities (the "relationship among multi-modality images").
  Trained in stage "diffusion" with the eps-MSE loss (`neurofuse.models.diffusion`).
- Diffusion-generated images: in stage "fusion" the frozen model noises the pair to step
  t_gen (100 of 1000) and returns its one-step x_0 estimate (g_a, g_b): the sources pulled onto the
  learned joint distribution. Random noise in training, a fixed seed otherwise.
- Network: per modality a 3x3 conv then local/global blocks, each a local residual conv branch
  and a global shifted-window attention branch (`neurofuse.models.swin`) merged by a 1x1 conv;
  the two streams are concatenated, reduced, passed through further local/global blocks and
  reconstructed by two convs with a sigmoid. The network sees only the sources, so inference
  does not run the diffusion model.
- Loss (stage "fusion"): sources: 5 * max-intensity L1 + 5 * max-gradient L1 + 1 * (1 - SSIM to
  a and b); generated: 1 * (1 - SSIM to g_a and g_b) + 5 * max-gradient L1 against g_a, g_b.
- Full config: width 48, 2 blocks per part, 4 heads, window 8, UNet base 64 (1, 2, 4, 8).
  Small: width 16, 1 block per part, 2 heads, window 4, UNet base 16 (1, 2, 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from neurofuse.losses import max_fusion_terms, sobel_magnitude, ssim2d, weighted_sum
from neurofuse.models.diffusion import DiffusionUNet, GaussianDiffusion, denoising_loss
from neurofuse.models.registry import register_variants
from neurofuse.models.swin import SwinStage, crop_to, pad_to_multiple


@dataclass
class LAGNConfig:
    """Sizes, diffusion settings and loss weights of LAGN (defaults: full size)."""

    dim: int = 48
    blocks: int = 2
    heads: int = 4
    window: int = 8
    unet_base: int = 64
    unet_mults: tuple[int, ...] = (1, 2, 4, 8)
    diffusion_steps: int = 1000
    t_gen: int = 100
    gen_seed: int = 0
    w_int: float = 5.0
    w_grad: float = 5.0
    w_ssim: float = 1.0
    w_gen_ssim: float = 1.0
    w_gen_grad: float = 5.0


class LocalGlobalBlock(nn.Module):
    """Local conv branch + global window-attention branch, merged by 1x1 conv, residual; (N, C, H, W) -> same."""

    def __init__(self, dim: int, heads: int, window: int) -> None:
        super().__init__()
        self.local = nn.Sequential(
            nn.Conv2d(dim, dim, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(dim, dim, 3, padding=1)
        )
        self.global_ = SwinStage(dim, 2, heads, window)
        self.merge = nn.Conv2d(2 * dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.merge(torch.cat([self.local(x), self.global_(x) - x], 1))


class LAGN(nn.Module):
    """Local and global fusion network with a diffusion model used by the loss.

    Args:
        cfg: sizes, diffusion settings, loss weights.

    forward(a, b): (N, 1, H, W) each in [0, 1] -> fused (N, 1, H, W) in [0, 1].
    Stages: "diffusion" (joint 2-channel DDPM on (a, b); network frozen) and "fusion" (DDPM
    frozen; network trained with the source + generated-image loss).
    """

    spatial_dims = 2
    training_stages = ("diffusion", "fusion")

    def __init__(self, cfg: LAGNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.schedule = GaussianDiffusion(cfg.diffusion_steps)
        self.unet = DiffusionUNet(2, cfg.unet_base, cfg.unet_mults)
        self.head_a = nn.Sequential(nn.Conv2d(1, d, 3, padding=1), nn.LeakyReLU(0.2))
        self.head_b = nn.Sequential(nn.Conv2d(1, d, 3, padding=1), nn.LeakyReLU(0.2))
        self.enc_a = nn.Sequential(*(LocalGlobalBlock(d, cfg.heads, cfg.window) for _ in range(cfg.blocks)))
        self.enc_b = nn.Sequential(*(LocalGlobalBlock(d, cfg.heads, cfg.window) for _ in range(cfg.blocks)))
        self.reduce = nn.Sequential(nn.Conv2d(2 * d, d, 1), nn.LeakyReLU(0.2))
        self.fuse = nn.Sequential(*(LocalGlobalBlock(d, cfg.heads, cfg.window) for _ in range(cfg.blocks)))
        self.out = nn.Sequential(
            nn.Conv2d(d, d // 2, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(d // 2, 1, 3, padding=1)
        )
        self.stage = "diffusion"
        self.set_stage("diffusion")

    def set_stage(self, name: str) -> None:
        """Select the training stage; parameters outside it are frozen."""
        if name not in self.training_stages:
            raise ValueError(f"unknown stage {name!r}; LAGN stages: {', '.join(self.training_stages)}")
        self.stage = name
        for mod in self.children():
            for p in mod.parameters():
                p.requires_grad_((mod is self.unet) == (name == "diffusion"))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, size = pad_to_multiple(a, self.cfg.window)
        b, _ = pad_to_multiple(b, self.cfg.window)
        fa, fb = self.enc_a(self.head_a(a)), self.enc_b(self.head_b(b))
        x = self.fuse(self.reduce(torch.cat([fa, fb], 1)))
        return crop_to(torch.sigmoid(self.out(x)), size)

    @torch.no_grad()
    def generate(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Diffusion-generated pair: one-step x_0 estimate from the pair noised to t_gen.

        a, b (N, 1, H, W) in [0, 1] -> (g_a, g_b), each (N, 1, H, W) in [0, 1].
        """
        x0 = torch.cat([a, b], 1) * 2 - 1
        if self.training:
            noise = torch.randn_like(x0)
        else:
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(self.cfg.gen_seed)).to(x0)
        t = torch.full((x0.shape[0],), self.cfg.t_gen, device=x0.device, dtype=torch.long)
        xt = self.schedule.q_sample(x0, t, noise)
        g = ((self.schedule.predict_x0(xt, t, self.unet(xt, t)) + 1) / 2).clamp(0, 1)
        return g[:, :1], g[:, 1:]

    def training_loss(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Stage "diffusion": joint DDPM loss. Stage "fusion": source terms + generated-image terms."""
        if self.stage == "diffusion":
            loss = denoising_loss(self.unet, self.schedule, torch.cat([a, b], 1))
            return loss, {"ddpm": float(loss.detach())}
        f = self(a, b)
        ga, gb = self.generate(a, b)
        terms = max_fusion_terms(f, a, b)
        terms["gen_ssim"] = 1.0 - 0.5 * (ssim2d(f, ga) + ssim2d(f, gb))
        terms["gen_grad"] = (sobel_magnitude(f) - torch.maximum(sobel_magnitude(ga), sobel_magnitude(gb))).abs().mean()
        c = self.cfg
        weights = {"int": c.w_int, "text": c.w_grad, "ssim": c.w_ssim}
        weights.update(gen_ssim=c.w_gen_ssim, gen_grad=c.w_gen_grad)
        return weighted_sum(terms, weights)


# The variants: full size (the paper's) and reduced for CPU training (the shipped weights).
register_variants(LAGN, LAGNConfig, {
    "lagn": ("LAGN full size (width 48, window 8, UNet base 64).", {}),
    "lagn_small": ("LAGN reduced for CPU training (width 16, window 4, UNet base 16).",
                   dict(dim=16, blocks=1, heads=2, window=4, unet_base=16, unet_mults=(1, 2, 4))),
})
