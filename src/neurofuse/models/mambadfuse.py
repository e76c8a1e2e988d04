"""MambaDFuse, our implementation: dual-level extraction and dual-phase (shallow + deep) Mamba fusion.

Paper: Z. Li, H. Pan, K. Zhang, Y. Wang, F. Yu, "MambaDFuse: A Mamba-based Dual-phase Model for
Multi-modality Image Fusion", arXiv:2404.08406, 2024.

As in the paper: a dual-level feature extractor per modality (CNN for low-level features, Mamba
blocks for long-range high-level ones); a dual-phase fusion module, shallow fusion by channel
exchange and deep fusion by Multi-modal Mamba (M3) blocks in which the fused stream is guided by
each modality; and a reconstruction that mirrors the extraction (Mamba blocks, then CNN). The Mamba
layers are `neurofuse.models.mamba` blocks running on our `neurofuse.ssm.selective_scan` engine.

Choices where the paper is silent or we had to differ:
- Shallow fusion: every second channel of the two high-level token streams is exchanged
  (`mamba.channel_swap`), each exchanged stream passes one Mamba block, and a linear layer merges
  the concatenation. Exchanging then adding directly would undo the exchange.
- M3 block: two cross-modal Mamba blocks (`CrossMambaBlock`): the fused stream supplies the
  sequence and gate, modality A (then B) supplies the step size and B/C projections.
- Scans: four directions (row/column, forward/reverse) in every block; state size 16 (full), 8 (small).
- Tokens: full config embeds every pixel (patch 1, width 64, 2 blocks per part); the small config
  embeds 4x4 patches (width 32, 1 block per part) so that the sequential scan runs 16x fewer steps
  on a CPU; the patch is undone by a transposed convolution and the full-resolution CNN features
  are added back before the output.
- Loss: SwinFusion's (10 * SSIM + 20 * max-texture + 20 * max-intensity), which the MambaDFuse
  medical setting follows; inputs are replicate/reflect-padded to a multiple of the patch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from neurofuse.losses import max_fusion_terms, weighted_sum
from neurofuse.models.mamba import CrossMambaBlock, MambaBlock, channel_swap, scan_orders
from neurofuse.models.registry import register_variants
from neurofuse.models.swin import crop_to, pad_to_multiple


@dataclass
class MambaDFuseConfig:
    """Sizes and loss weights of MambaDFuse (defaults: full size)."""

    cnn_dim: int = 32
    dim: int = 64
    patch: int = 1
    d_state: int = 16
    scan: str = "four_way"
    extract_depth: int = 2
    m3_depth: int = 2
    recon_depth: int = 2
    w_ssim: float = 10.0
    w_text: float = 20.0
    w_int: float = 20.0


class LowLevelExtractor(nn.Module):
    """CNN low-level features: (N, 1, H, W) -> (N, C, H, W)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(0.2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MambaStack(nn.Module):
    """`depth` residual Mamba blocks on tokens (N, L, D) of a row-major `grid` -> (N, L, D)."""

    def __init__(self, dim: int, depth: int, d_state: int, scan: str) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MambaBlock(dim, scan_orders(2, scan), d_state) for _ in range(depth))

    def forward(self, x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        for blk in self.blocks:
            x = blk(x, grid)
        return x


class ShallowFuse(nn.Module):
    """Phase 1, channel exchange: (ha, hb) tokens (N, L, D) -> shallow fused tokens (N, L, D)."""

    def __init__(self, dim: int, d_state: int, scan: str) -> None:
        super().__init__()
        self.norm_a, self.norm_b = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.mamba_a = MambaBlock(dim, scan_orders(2, scan), d_state)
        self.mamba_b = MambaBlock(dim, scan_orders(2, scan), d_state)
        self.merge = nn.Linear(2 * dim, dim)

    def forward(self, ha: torch.Tensor, hb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        sa, sb = channel_swap(self.norm_a(ha), self.norm_b(hb))
        return self.merge(torch.cat([self.mamba_a(sa, grid), self.mamba_b(sb, grid)], -1))


class M3Block(nn.Module):
    """Phase 2, Multi-modal Mamba block: fused tokens guided by A then by B; all (N, L, D)."""

    def __init__(self, dim: int, d_state: int, scan: str) -> None:
        super().__init__()
        self.guide_a = CrossMambaBlock(dim, scan_orders(2, scan, "cross"), d_state)
        self.guide_b = CrossMambaBlock(dim, scan_orders(2, scan, "cross"), d_state)

    def forward(self, s: torch.Tensor, ha: torch.Tensor, hb: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        return self.guide_b(self.guide_a(s, ha, grid), hb, grid)


class MambaDFuse(nn.Module):
    """MambaDFuse: dual-level extraction, dual-phase fusion, mirrored reconstruction.

    Args:
        cfg: sizes and loss weights.

    forward(a, b): (N, 1, H, W) each in [0, 1] -> fused (N, 1, H, W) in [0, 1].
    """

    spatial_dims = 2

    def __init__(self, cfg: MambaDFuseConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, d, p = cfg.cnn_dim, cfg.dim, cfg.patch
        self.low_a, self.low_b = LowLevelExtractor(c), LowLevelExtractor(c)
        self.embed_a = nn.Conv2d(c, d, p, stride=p)
        self.embed_b = nn.Conv2d(c, d, p, stride=p)
        self.high_a = MambaStack(d, cfg.extract_depth, cfg.d_state, cfg.scan)
        self.high_b = MambaStack(d, cfg.extract_depth, cfg.d_state, cfg.scan)
        self.shallow = ShallowFuse(d, cfg.d_state, cfg.scan)
        self.deep = nn.ModuleList(M3Block(d, cfg.d_state, cfg.scan) for _ in range(cfg.m3_depth))
        self.recon = MambaStack(d, cfg.recon_depth, cfg.d_state, cfg.scan)
        self.unembed = nn.ConvTranspose2d(d, c, p, stride=p)
        self.out = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(c, 1, 3, padding=1))

    def _tokens(self, x: torch.Tensor, embed: nn.Module) -> tuple[torch.Tensor, tuple[int, int]]:
        z = embed(x)
        return z.flatten(2).transpose(1, 2), (z.shape[-2], z.shape[-1])

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, size = pad_to_multiple(a, self.cfg.patch)
        b, _ = pad_to_multiple(b, self.cfg.patch)
        la, lb = self.low_a(a), self.low_b(b)
        ta, grid = self._tokens(la, self.embed_a)
        tb, _ = self._tokens(lb, self.embed_b)
        ha, hb = self.high_a(ta, grid), self.high_b(tb, grid)
        s = self.shallow(ha, hb, grid)
        for blk in self.deep:
            s = blk(s, ha, hb, grid)
        s = self.recon(s, grid)
        up = self.unembed(s.transpose(1, 2).unflatten(2, grid))
        f = torch.sigmoid(self.out(torch.cat([up, 0.5 * (la + lb)], 1)))
        return crop_to(f, size)

    def training_loss(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """10 * L_ssim + 20 * L_text + 20 * L_int (weights from the config)."""
        c = self.cfg
        return weighted_sum(max_fusion_terms(self(a, b), a, b), {"ssim": c.w_ssim, "text": c.w_text, "int": c.w_int})


# The variants: full size (the paper's) and reduced for CPU training (the shipped weights).
register_variants(MambaDFuse, MambaDFuseConfig, {
    "mambadfuse": ("MambaDFuse full size (width 64, pixel tokens, 2 blocks per part).", {}),
    "mambadfuse_small": ("MambaDFuse reduced for CPU training (width 32, 4x4 patch tokens, 1 block per part, state 8).",
                         dict(cnn_dim=16, dim=32, patch=4, d_state=8, extract_depth=1, m3_depth=1, recon_depth=1)),
})
