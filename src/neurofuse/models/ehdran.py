"""EH-DRAN, our implementation: an edge-enhanced dilated residual attention autoencoder.

Paper: M. Zhou, Y. Zhang, X. Xu, J. Wang, F. Khalvati, "Edge-Enhanced Dilated Residual Attention
Network for Multimodal Medical Image Fusion", IEEE BIBM 2024 (arXiv:2411.11799).

As in the paper: an autoencoder trained only to reconstruct single images; the encoder stacks
Dilated Residual Attention Network (DRAN) modules for multiscale features and an edge enhancer
adds features computed from the image gradient; the training loss is MSE + gradient + perceptual;
at test time the two sources are encoded, their features combined by a parameter-free rule (the
softmax / nuclear-norm weighting by default) and decoded.

Choices where the paper is silent or we had to differ:
- DRAN module: three parallel 3x3 convolutions with dilations 1, 2, 3, concatenated and mixed by a
  1x1 convolution, then channel attention (squeeze-excitation, reduction 4) and spatial attention
  (7x7 conv over channel mean/max), plus the residual input.
- Edge enhancer: Sobel magnitude of the input -> two 3x3 convs -> added to the encoder output.
- Perceptual loss: no pretrained VGG is available offline, so we use a fixed, randomly
  initialised 3-stage CNN (seeded, frozen, not saved in the weights; random-feature perceptual
  losses track structure well); L1 between its features at each stage.
- Loss weights: MSE 1, gradient (L1 of Sobel magnitudes) 1, perceptual 0.1.
- Nuclear-norm rule: features are softmax-normalised over channels at each pixel; each channel's
  H x W map gets its nuclear norm; weights w_a = n_a / (n_a + n_b) per channel and sample.
  Options (fusion_rule): "l1" (per-pixel l1 activity over channels, 3x3 averaged, weights
  proportional), "average", "max" (elementwise).
- Decoder: two 3x3 convs and a sigmoid. Full config 64 channels and 3 DRAN modules; small 24 and 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from neurofuse.losses import sobel_magnitude
from neurofuse.models.blocks import ChannelAttention
from neurofuse.models.registry import register_variants

FUSION_RULES = ("nuclear", "l1", "average", "max")


@dataclass
class EHDRANConfig:
    """Sizes, loss weights and the test-time fusion rule of EH-DRAN (defaults: full size)."""

    channels: int = 64
    modules: int = 3
    dilations: tuple[int, ...] = (1, 2, 3)
    fusion_rule: str = "nuclear"
    w_mse: float = 1.0
    w_grad: float = 1.0
    w_perc: float = 0.1
    perc_seed: int = 1234


class SpatialAttention(nn.Module):
    """CBAM-style spatial gate from the channel mean and max: (N, C, H, W) -> same."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(s))


class DRANModule(nn.Module):
    """Dilated residual attention module: parallel dilated convs -> 1x1 -> channel+spatial attention -> +x.

    (N, C, H, W) -> (N, C, H, W).
    """

    def __init__(self, c: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(c, c, 3, padding=d, dilation=d) for d in dilations)
        self.mix = nn.Conv2d(c * len(dilations), c, 1)
        self.ca, self.sa = ChannelAttention(c), SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.cat([F.leaky_relu(br(x), 0.2) for br in self.branches], 1)
        return x + self.sa(self.ca(self.mix(y)))


class EdgeEnhancer(nn.Module):
    """Gradient-operator branch: Sobel magnitude of (N, 1, H, W) -> edge features (N, C, H, W)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(sobel_magnitude(x))


class RandomFeatures(nn.Module):
    """Frozen random CNN for the perceptual loss: (N, 1, H, W) -> features at 3 scales.

    Weights are drawn from a fixed seed at construction and kept out of the state dict.
    """

    def __init__(self, seed: int, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self._names = []
        cin = 1
        for i, w in enumerate(widths):
            weight = torch.randn(w, cin, 3, 3, generator=gen) * (2.0 / (cin * 9)) ** 0.5
            self.register_buffer(f"w{i}", weight, persistent=False)
            self._names.append(f"w{i}")
            cin = w

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, name in enumerate(self._names):
            if i:
                x = F.avg_pool2d(x, 2)
            x = F.relu(F.conv2d(x, getattr(self, name), padding=1))
            feats.append(x)
        return feats


def nuclear_weights(fa: torch.Tensor, fb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(sample, channel) weights from nuclear norms of channel-softmaxed maps; each (N, C, 1, 1).

    Computed in float32 (the SVD has no half-precision kernels).
    """
    na = torch.linalg.svdvals(fa.float().softmax(1)).sum(-1)
    nb = torch.linalg.svdvals(fb.float().softmax(1)).sum(-1)
    wa = na / (na + nb)
    return wa[..., None, None], (1 - wa)[..., None, None]


def fuse_features(fa: torch.Tensor, fb: torch.Tensor, rule: str) -> torch.Tensor:
    """Parameter-free combination of two (N, C, H, W) feature maps by `rule` (see FUSION_RULES)."""
    if rule == "nuclear":
        wa, wb = nuclear_weights(fa, fb)
        return wa * fa + wb * fb
    if rule == "l1":
        act_a = F.avg_pool2d(fa.abs().sum(1, keepdim=True), 3, 1, 1, count_include_pad=False)
        act_b = F.avg_pool2d(fb.abs().sum(1, keepdim=True), 3, 1, 1, count_include_pad=False)
        wa = act_a / (act_a + act_b + 1e-8)
        return wa * fa + (1 - wa) * fb
    if rule == "average":
        return 0.5 * (fa + fb)
    if rule == "max":
        return torch.maximum(fa, fb)
    raise ValueError(f"unknown EH-DRAN fusion rule {rule!r}; choose from {', '.join(FUSION_RULES)}")


class EHDRAN(nn.Module):
    """EH-DRAN autoencoder; forward(a, b) fuses in feature space with `cfg.fusion_rule`.

    Args:
        cfg: sizes, loss weights, fusion rule.

    encode(x): (N, 1, H, W) -> (N, C, H, W); decode(z): (N, C, H, W) -> (N, 1, H, W) in [0, 1].
    forward(a, b): (N, 1, H, W) each in [0, 1] -> fused (N, 1, H, W) in [0, 1].
    """

    spatial_dims = 2

    def __init__(self, cfg: EHDRANConfig) -> None:
        super().__init__()
        if cfg.fusion_rule not in FUSION_RULES:
            raise ValueError(f"unknown EH-DRAN fusion rule {cfg.fusion_rule!r}; choose from {', '.join(FUSION_RULES)}")
        self.cfg = cfg
        c = cfg.channels
        self.head = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.LeakyReLU(0.2))
        self.body = nn.Sequential(*(DRANModule(c, cfg.dilations) for _ in range(cfg.modules)))
        self.edge = EdgeEnhancer(c)
        self.decoder = nn.Sequential(
            nn.Conv2d(c, c // 2, 3, padding=1), nn.LeakyReLU(0.2), nn.Conv2d(c // 2, 1, 3, padding=1)
        )
        self.perceptual = RandomFeatures(cfg.perc_seed)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.head(x)) + self.edge(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.decoder(z))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.decode(fuse_features(self.encode(a), self.encode(b), self.cfg.fusion_rule))

    def _recon_terms(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        y = self.decode(self.encode(x))
        perc = sum((p - q).abs().mean() for p, q in zip(self.perceptual(y), self.perceptual(x), strict=True))
        return {"mse": F.mse_loss(y, x), "grad": (sobel_magnitude(y) - sobel_magnitude(x)).abs().mean(), "perc": perc}

    def training_loss(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Reconstruction of a and of b separately: MSE + gradient + perceptual (the fusion rule is not trained)."""
        ta, tb = self._recon_terms(a), self._recon_terms(b)
        terms = {k: 0.5 * (ta[k] + tb[k]) for k in ta}
        c = self.cfg
        loss = c.w_mse * terms["mse"] + c.w_grad * terms["grad"] + c.w_perc * terms["perc"]
        return loss, {k: float(v.detach()) for k, v in terms.items()}


# The variants: full size (the paper's) and reduced for CPU training (the shipped weights).
register_variants(EHDRAN, EHDRANConfig, {
    "ehdran": ("EH-DRAN full size (64 channels, 3 DRAN modules).", {}),
    "ehdran_small": ("EH-DRAN reduced for CPU training (24 channels, 2 DRAN modules).",
                     dict(channels=24, modules=2)),
})
