"""A small DDPM (schedule + time-conditioned UNet) shared by the diffusion-based peers (DM-FNet, LAGN).

Follows Ho, Jain, Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020: a linear beta
schedule, x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, and a UNet trained to predict eps
(MSE). Images in [0, 1] are mapped to [-1, 1] before diffusion. The UNet (residual blocks with
GroupNorm and a sinusoidal time embedding, as in SR3 / DDPM) can also return its decoder feature
maps, coarse to fine, which is what DM-FNet feeds to its fusion network.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class GaussianDiffusion(nn.Module):
    """Linear-beta DDPM schedule with T steps; buffers only, no parameters.

    q_sample(x0, t, noise): x0 (N, C, H, W) in [-1, 1], t (N,) int64 in [0, T) -> x_t.
    predict_x0(x_t, t, eps): the x_0 estimate from a noise prediction.
    """

    def __init__(self, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2) -> None:
        super().__init__()
        betas = torch.linspace(beta_start, beta_end, steps, dtype=torch.float64)
        abar = torch.cumprod(1.0 - betas, 0)
        self.steps = steps
        self.register_buffer("sqrt_abar", abar.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_1m_abar", (1.0 - abar).sqrt().float(), persistent=False)

    def _at(self, v: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return v[t].view(-1, 1, 1, 1)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self._at(self.sqrt_abar, t) * x0 + self._at(self.sqrt_1m_abar, t) * noise

    def predict_x0(self, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return (xt - self._at(self.sqrt_1m_abar, t) * eps) / self._at(self.sqrt_abar, t)

    def sample_t(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randint(0, self.steps, (n,), device=device)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer steps t (N,) -> (N, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([args.sin(), args.cos()], 1)


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class TimeResBlock(nn.Module):
    """Residual block with a time-embedding shift: x (N, Cin, H, W), temb (N, E) -> (N, Cout, H, W)."""

    def __init__(self, cin: int, cout: int, tdim: int) -> None:
        super().__init__()
        self.n1, self.c1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(tdim, cout)
        self.n2, self.c2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x))) + self.t(temb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return h + self.skip(x)


class DiffusionUNet(nn.Module):
    """Time-conditioned UNet predicting noise.

    Args:
        in_ch: image channels (1 for one modality, 2 for a stacked pair). base: channels at full
        resolution. mults: channel multiplier per level (len(mults) - 1 downsamplings).

    forward(x, t, return_features=False): x (N, in_ch, H, W) with H, W multiples of
    2**(len(mults) - 1), t (N,) -> eps (N, in_ch, H, W); with return_features also the decoder
    features, one per level coarse to fine, level i of shape (N, base * mults[-1 - i], H / 2**(L-1-i), ...).
    """

    def __init__(self, in_ch: int = 1, base: int = 64, mults: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.in_ch, self.levels = in_ch, len(mults)
        tdim = base * 4
        self.base = base
        self.temb = nn.Sequential(nn.Linear(base, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        self.inc = nn.Conv2d(in_ch, base, 3, padding=1)
        chans = [base * m for m in mults]
        self.down = nn.ModuleList()
        self.pool = nn.ModuleList()
        cin = base
        for i, c in enumerate(chans):
            self.down.append(TimeResBlock(cin, c, tdim))
            self.pool.append(nn.Conv2d(c, c, 3, stride=2, padding=1) if i < len(chans) - 1 else nn.Identity())
            cin = c
        self.mid = TimeResBlock(cin, cin, tdim)
        self.up = nn.ModuleList()
        for c in reversed(chans):
            self.up.append(TimeResBlock(cin + c, c, tdim))
            cin = c
        self.out = nn.Sequential(_norm(cin), nn.SiLU(), nn.Conv2d(cin, in_ch, 3, padding=1))

    @property
    def feature_channels(self) -> list[int]:
        """Channels of the decoder features returned with return_features, coarse to fine."""
        return [blk.c2.out_channels for blk in self.up]

    def forward(self, x: torch.Tensor, t: torch.Tensor, return_features: bool = False):
        temb = self.temb(timestep_embedding(t, self.base))
        h = self.inc(x)
        skips = []
        for blk, pool in zip(self.down, self.pool, strict=True):
            h = blk(h, temb)
            skips.append(h)
            h = pool(h)
        h = self.mid(h, temb)
        feats = []
        for i, blk in enumerate(self.up):
            skip = skips[-1 - i]
            if h.shape[-2:] != skip.shape[-2:]:
                h = F.interpolate(h, size=skip.shape[-2:], mode="nearest")
            h = blk(torch.cat([h, skip], 1), temb)
            feats.append(h)
        eps = self.out(h)
        return (eps, feats) if return_features else eps


def denoising_loss(unet: DiffusionUNet, schedule: GaussianDiffusion, x01: torch.Tensor) -> torch.Tensor:
    """DDPM training loss: MSE between eps and the UNet's prediction at a random step; x01 in [0, 1]."""
    x0 = x01 * 2 - 1
    t = schedule.sample_t(x0.shape[0], x0.device)
    noise = torch.randn_like(x0)
    return F.mse_loss(unet(schedule.q_sample(x0, t, noise), t), noise)
