"""ClinicalFMamba (Zhou et al., MICCAI MLMI 2025): CNN + Mamba fusion of two 1-channel images, 2D or 3D.

Our own implementation from the paper and the authors' release (model card: `docs/models.md`); one
code path for 2D and 3D via `spatial_dims`. Siamese CNN encoder (stem conv + stages of [stride-2
conv + DGCB]) -> per-modality latent Mamba blocks with multi-direction scans -> (2D) token swap
twice -> cross-modal Mamba both ways -> `Linear((x + y) / 2)` -> (2D) plain Mamba decoder blocks ->
upsampling stages -> + CMCA both ways on the stem features -> 3x3 conv -> sigmoid. Optional, ours
(`refine` > 0, off by default): a full-resolution refinement added to the logits (`Refine`).

Changes from the authors' release: unused layers are left out (their `shallow_fusion` convs, a
second stem conv, the decoder's spare conv, the 3D single-modality block's five unused scan
parameter sets), the 3D single-modality scan averages its three scans once (the release flips the
reverse scan twice and divides by 5), and the 2D decoder uses LeakyReLU(0.2) as the paper's caption
says (the 2D release uses ReLU; `act="relu"` restores it). Inputs of any size are padded to a
multiple of the total stride and cropped back.

Exact parameter counts (`neurofuse models`): clinicalfmamba_2d 3,155,521; clinicalfmamba_3d
3,408,289. The slides' 4.05M and 6.01M count the release as instantiated, including layers its
forward pass never calls (counted layer by layer from the authors' code; every layer it does use
matches ours in type and shape). 2D: two `shallow_fusion` Conv2d(256->128, 3x3) 590,080, the
decoder's spare `conv_in` Conv2d(256->128, 3x3) 295,040, the stem's unused stride-2 conv 4,128, a
LayerNorm(128) 256 and the unused LayerNorm(256) of each of the 3 decoder Mamba blocks 1,536: ours +
890,040 = 4,046,561 (slides 4.05M). 3D: two `shallow_fusion` Conv3d(256->128, 3^3) 1,769,728, the
spare decoder Conv3d(128->64, 3^3) 221,248, five unused scan parameter sets (12,032 each) in each of
the ten single-modality blocks 601,600, an unused excitation block 1,088 and a LayerNorm(128) 256:
ours + 2,593,920 = 6,002,209 (slides 6.01M). `tests/models/test_clinicalfmamba.py` rebuilds these
layers from their shapes and checks both sums.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from neurofuse.losses import fusion_loss
from neurofuse.models.blocks import CMCA, DownStage, UpStage, conv_nd
from neurofuse.models.mamba import CrossMambaBlock, MambaBlock, ScanOrder, TokenSwap, scan_orders
from neurofuse.models.registry import register_model


@dataclass(frozen=True)
class ClinicalFMambaConfig:
    """Hyper-parameters; defaults are the 2D release. `n_down` stride-2 stages sit at the end of the
    encoder (2D release: 2 of 3, latent H/4; 3D: 3, latent D/8)."""

    spatial_dims: int = 2
    widths: tuple[int, ...] = (32, 64, 128)
    dilations: tuple[int, ...] = (1, 3, 5)
    n_down: int = 2
    pyramid: bool = True  # P-pyramid in DGCB (2D release); off in 3D
    depth: int = 5  # single-modality latent Mamba blocks per modality
    d_state: int = 8
    d_conv: int = 4
    expand: int = 2
    dt_rank: int | None = None  # None: ceil(d_model / 16)
    scan: str = "four_way"  # 2D: "four_way" | "single"; 3D: "tri_plane" | "single"
    token_swap: bool = True  # 2D release only
    swap_d_state: int = 16
    decoder_depth: int = 3  # plain Mamba blocks before the 2D decoder convs; 0 in 3D
    cmca: bool = True
    act: str = "leaky_relu"  # decoder activation: "leaky_relu" | "relu"
    loss_norm: str = "l1"  # 2D gradient-loss norm: "l1" (release) | "l2" (slides)
    loss_weights: tuple[float, float, float] | None = None  # (intensity, gradient, SSIM); None: the release's
    loss_gradient_target: str = "max"  # 3D gradient-loss target: "max" (release) | "max_abs" (losses.py)
    loss_similarity: str = "ssim"  # structure term: "ssim" (release) | "ms_ssim" (losses.py)
    loss_intensity_target: str = "max"  # intensity term: "max" (release) | "mean_base" (losses.py)
    refine: int = 0  # channels of the full-resolution refinement (`Refine`); 0: none (the release)

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.dilations):
            raise ValueError("widths and dilations must have the same length")
        if not len(self.widths) - 1 <= self.n_down <= len(self.widths):
            raise ValueError(f"n_down must be {len(self.widths) - 1} or {len(self.widths)}, got {self.n_down}")


class ClinicalFMamba(nn.Module):
    """ClinicalFMamba fusion network.

    Args:
        cfg: the configuration (see `ClinicalFMambaConfig`).

    `forward(a, b)`: a, b (N, 1, *S) in [0, 1] -> fused (N, 1, *S) in [0, 1], any spatial size.
    `training_loss(a, b)`: the paper's loss for `spatial_dims` and its named terms.
    """

    init_optional = ("refine.",)  # a warm start may lack these (`Refine` starts as the identity)

    def __init__(self, cfg: ClinicalFMambaConfig) -> None:
        super().__init__()
        self.cfg = cfg
        nd = self.spatial_dims = cfg.spatial_dims
        w0, d_model = cfg.widths[0], cfg.widths[-1]
        self.stride = 2**cfg.n_down
        self.stem = conv_nd(nd)(1, w0, 3, padding=1)
        n_stages = len(cfg.widths)
        strides = [1] * (n_stages - cfg.n_down) + [2] * cfg.n_down
        ins = [w0, *cfg.widths[:-1]]
        self.encoder = nn.Sequential(*(
            DownStage(nd, ins[i], cfg.widths[i], strides[i], cfg.dilations[i], cfg.pyramid)
            for i in range(n_stages)
        ))
        mix = {"d_conv": cfg.d_conv, "expand": cfg.expand, "dt_rank": cfg.dt_rank}
        single = scan_orders(nd, cfg.scan, "single")
        cross = scan_orders(nd, cfg.scan, "cross")
        self.blocks_x = nn.ModuleList(MambaBlock(d_model, single, cfg.d_state, **mix) for _ in range(cfg.depth))
        self.blocks_y = nn.ModuleList(MambaBlock(d_model, single, cfg.d_state, **mix) for _ in range(cfg.depth))
        self.token_swap = TokenSwap(d_model, cfg.swap_d_state, **mix) if cfg.token_swap else None
        self.cross_x = CrossMambaBlock(d_model, cross, cfg.d_state, **mix)
        self.cross_y = CrossMambaBlock(d_model, cross, cfg.d_state, **mix)
        self.fuse_proj = nn.Linear(d_model, d_model)
        raster = [ScanOrder(tuple(range(nd)))]
        self.decoder_blocks = nn.ModuleList(
            MambaBlock(d_model, raster, cfg.d_state, out_norm=False, **mix) for _ in range(cfg.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(d_model) if cfg.decoder_depth else None
        ups = [(cfg.widths[i], ins[i]) for i in reversed(range(n_stages)) if strides[i] == 2]
        self.decoder = nn.Sequential(*(UpStage(nd, i, o, cfg.act) for i, o in ups))
        self.cmca = CMCA(nd, w0) if cfg.cmca else None
        self.head = conv_nd(nd)(w0, 1, 3, padding=1)
        self.refine = Refine(nd, cfg.refine) if cfg.refine else None

    def _pad(self, t: torch.Tensor) -> tuple[torch.Tensor, tuple[slice, ...]]:
        """Replicate-pad the spatial dims to a multiple of the stride; return the crop back."""
        size = t.shape[2:]
        target = [math.ceil(s / self.stride) * self.stride for s in size]
        if list(size) == target:
            return t, (slice(None),) * t.dim()
        pad: list[int] = []
        for s, g in zip(reversed(size), reversed(target), strict=True):
            pad += [(g - s) // 2, g - s - (g - s) // 2]
        crop = [slice(None), slice(None)] + [slice(pad[2 * i], pad[2 * i] + s)
                                             for i, s in zip(reversed(range(len(size))), size, strict=True)]
        return F.pad(t, pad, mode="replicate"), tuple(crop)

    def _check(self, a: torch.Tensor, b: torch.Tensor) -> None:
        if a.shape != b.shape or a.dim() != self.spatial_dims + 2 or a.shape[1] != 1:
            raise ValueError(f"expected two (N, 1, *S) inputs with {self.spatial_dims} spatial dims, "
                             f"got {tuple(a.shape)} and {tuple(b.shape)}")

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self._check(a, b)
        a, crop = self._pad(a)
        b, _ = self._pad(b)
        n = a.shape[0]
        f0 = self.stem(torch.cat([a, b]))  # Siamese: both modalities through the same encoder
        h = self.decoder(self._mix(self.encoder(f0), n))
        if self.cmca is not None:
            fx, fy = f0[:n], f0[n:]
            h = h + self.cmca(fx, fy) + self.cmca(fy, fx)
        logits = self.head(h)
        if self.refine is not None:
            logits = logits + self.refine(torch.cat([a, b, logits], 1))
        return torch.sigmoid(logits)[crop]

    def _mix(self, lat: torch.Tensor, n: int) -> torch.Tensor:
        """The latent Mamba stages: encoder output (2N, C, *g) -> fused latent grid (N, C, *g)."""
        grid = tuple(lat.shape[2:])
        tok = lat.flatten(2).transpose(1, 2)  # (2N, L, C)
        x0, y0 = tok[:n], tok[n:]
        x, y = x0, y0
        for bx, by in zip(self.blocks_x, self.blocks_y, strict=True):
            x, y = bx(x, grid), by(y, grid)
        if self.token_swap is not None:
            x, y, rx, ry = self.token_swap(x, y, x0, y0)
            x, y, _, _ = self.token_swap(x, y, rx, ry)
        xf = self.cross_x(x, y, grid)
        yf = self.cross_y(y, x, grid)
        fused = self.fuse_proj((xf + yf) / 2)
        for blk in self.decoder_blocks:
            fused = blk(fused, grid)
        if self.decoder_norm is not None:
            fused = self.decoder_norm(fused)
        return fused.transpose(1, 2).unflatten(2, grid)

    @torch.no_grad()
    def forward_lowmem(self, a: torch.Tensor, b: torch.Tensor, slab: int = 16) -> torch.Tensor:
        """`forward` for inference with full-resolution activations held only `slab` planes at a time.

        Everything at full resolution is local: the stem (3x3), the first stride-2 conv (2x2), the last
        decoder stage (nearest x2 + 3x3), CMCA (1x1 convs; its pooled weights are accumulated slab by
        slab) and the head (3x3). So those run on slabs of `slab` planes along the first spatial axis
        with a one-plane halo per 3x3 conv and are cropped back, and only the half-resolution and
        coarser tensors exist whole. The output equals `forward`'s to float rounding (tested); peak
        memory falls from about 1 KB to about 0.2 KB per voxel (3D, fp32). Models whose first stage does
        not downsample (the 2D configs) run `forward`.
        """
        first = self.encoder[0].down
        if not (isinstance(first, nn.Conv2d | nn.Conv3d) and first.stride[0] == 2 and len(self.decoder)):
            return self(a, b)
        self._check(a, b)
        a, crop = self._pad(a)
        b, _ = self._pad(b)
        n, depth = a.shape[0], a.shape[2]
        slab = max(2, slab + slab % 2)  # even, so slabs map onto whole half-resolution planes
        x = torch.cat([a, b])
        down, qmax, qsum = [], None, None
        for z0 in range(0, depth, slab):
            f0 = _planes(self.stem, x, z0, min(z0 + slab, depth), 1)
            down.append(first(f0))
            if self.cmca is not None:
                q = self.cmca.conv_a(f0).flatten(2).float()
                qmax = q.amax(2) if qmax is None else torch.maximum(qmax, q.amax(2))
                qsum = q.sum(2) if qsum is None else qsum + q.sum(2)
            del f0
        lat = self.encoder[0].block(torch.cat(down, 2))
        del down
        h = self.decoder[:-1](self._mix(self.encoder[1:](lat), n))
        del lat
        last = self.decoder[-1]
        if self.cmca is not None:
            w = torch.sigmoid(qmax + qsum / math.prod(a.shape[2:]))
            w = w.view(*w.shape, *([1] * self.spatial_dims))

        def up(r0: int, r1: int) -> torch.Tensor:  # nearest x2 of h, planes r0:r1 at full resolution
            return F.interpolate(h[:, :, r0 // 2 : (r1 + 1) // 2], scale_factor=2, mode="nearest")[
                :, :, r0 % 2 : r0 % 2 + r1 - r0]

        def pre_head(r0: int, r1: int) -> torch.Tensor:  # decoder output + CMCA, planes r0:r1
            s, e = max(r0 - 1, 0), min(r1 + 1, depth)
            t = last.act(last.norm(last.conv(up(s, e))))[:, :, r0 - s : r1 - s]
            if self.cmca is not None:
                f0 = _planes(self.stem, x, r0, r1, 1)
                fx, fy = f0[:n], f0[n:]
                t = t + self.cmca.conv_b(fy) * w[:n] + self.cmca.conv_b(fx) * w[n:]
            return t

        out = []
        for z0 in range(0, depth, slab):
            z1 = min(z0 + slab, depth)
            s, e = max(z0 - 1, 0), min(z1 + 1, depth)
            out.append(self.head(pre_head(s, e))[:, :, z0 - s : z1 - s])
        logits = torch.cat(out, 2)
        if self.refine is not None:  # full resolution but local: slabs with its halo
            both = torch.cat([a, b, logits], 1)
            logits = torch.cat([logits[:, :, z0 : z0 + slab] + _planes(
                self.refine, both, z0, min(z0 + slab, depth), self.refine.halo) for z0 in range(0, depth, slab)], 2)
        return torch.sigmoid(logits)[crop]

    def training_loss(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Fuse a and b and return the paper's loss for this dimensionality and its named terms."""
        return fusion_loss(self(a, b), a, b, self.spatial_dims, norm=self.cfg.loss_norm, weights=self.cfg.loss_weights,
                           gradient_target=self.cfg.loss_gradient_target, similarity=self.cfg.loss_similarity,
                           intensity_target=self.cfg.loss_intensity_target)


class Refine(nn.Module):
    """Full-resolution refinement of the fused logits (our addition; `refine` channels, 0 in the release).

    In 3D every encoder stage downsamples, so at full resolution the release has only linear paths (the
    stem's 3x3 conv into CMCA's 1x1 convs): it cannot choose, voxel by voxel, the sharper source's edge
    (the choose-max rule of wavelet fusion), and its output stays softer than both sources. This adds
    three 3x3 convs with LeakyReLU(0.2) on [A, B, logits] (receptive field 7 voxels) whose output is
    added to the logits. The last conv starts at zero, so a model warm-started from weights without it
    begins exactly where they were (`init_optional`).

    Shapes: [A, B, logits] stacked (N, 3, *S) -> (N, 1, *S).
    """

    halo = 3  # planes each side the three 3x3 convs reach

    def __init__(self, spatial_dims: int, channels: int) -> None:
        super().__init__()
        conv = conv_nd(spatial_dims)
        self.body = nn.Sequential(conv(3, channels, 3, padding=1), nn.LeakyReLU(0.2),
                                  conv(channels, channels, 3, padding=1), nn.LeakyReLU(0.2),
                                  conv(channels, 1, 3, padding=1))
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _planes(fn, x: torch.Tensor, r0: int, r1: int, halo: int) -> torch.Tensor:
    """`fn` (a local op reaching `halo` planes along dim 2, zero-padded at the edges) on x, planes r0:r1."""
    s, e = max(r0 - halo, 0), min(r1 + halo, x.shape[2])
    return fn(x[:, :, s:e])[:, :, r0 - s : r1 - s]


_DEFAULTS = {
    2: ClinicalFMambaConfig(),
    3: ClinicalFMambaConfig(spatial_dims=3, n_down=3, pyramid=False, scan="tri_plane", token_swap=False,
                            decoder_depth=0),
}
_TINY = {"widths": (8, 16, 16), "depth": 1, "d_state": 4, "swap_d_state": 4}


def _create(spatial_dims: int, tiny: bool = False, **overrides) -> ClinicalFMamba:
    cfg = _DEFAULTS[spatial_dims]
    if tiny:
        cfg = replace(cfg, **_TINY, decoder_depth=min(cfg.decoder_depth, 1))
    if "spatial_dims" in overrides and overrides["spatial_dims"] != spatial_dims:
        raise ValueError(f"this factory builds {spatial_dims}D models")
    if "widths" in overrides:
        overrides["widths"] = tuple(overrides["widths"])
    return ClinicalFMamba(replace(cfg, **overrides))


@register_model
def clinicalfmamba_2d(**overrides) -> ClinicalFMamba:
    """2D ClinicalFMamba as released (128x128 -> 32x32 latent; `n_down=3` for 256x256 -> 32x32)."""
    return _create(2, **overrides)


@register_model
def clinicalfmamba_3d(**overrides) -> ClinicalFMamba:
    """3D ClinicalFMamba with the tri-plane scan (128^3 -> 16^3 latent)."""
    return _create(3, **overrides)


@register_model
def clinicalfmamba_2d_tiny(**overrides) -> ClinicalFMamba:
    """Small 2D variant for tests (widths 8/16/16, one latent block)."""
    return _create(2, tiny=True, **overrides)


@register_model
def clinicalfmamba_3d_tiny(**overrides) -> ClinicalFMamba:
    """Small 3D variant for tests (widths 8/16/16, one latent block)."""
    return _create(3, tiny=True, **overrides)
