"""ClinicalFMamba training losses (2D and 3D) and a differentiable Gaussian SSIM for 2D/3D tensors.

2D:  2 * L1(F, max(A, B)) + 10 * ||Sobel|F| - max(Sobel|A|, Sobel|B|)|| + 5 * (1 - (SSIM(A,F) + SSIM(B,F)) / 2)
     with Sobel magnitude |Gx| + |Gy| and the gradient norm L1 (release) or L2 (slides).
3D:  2 * L1(F, max(A, B)) + 10 * G3 + 1 * (1 - (SSIM3D(A,F) + SSIM3D(B,F)) / 2), G3 the mean squared
     difference of signed slice-wise Sobel responses of F and the voxel-wise max of the sources'
     responses, over the axial, coronal and sagittal planes (release). `gradient_target="max_abs"`
     takes instead, voxel-wise, the response of the source whose magnitude is larger (the choose-max rule
     of wavelet fusion): the signed max prefers the weaker edge wherever both responses are negative.
SSIM: Gaussian window 11 (11^3 in 3D), sigma 1.5, C1 = (0.01 R)^2, C2 = (0.03 R)^2, valid region only.
`similarity="ms_ssim"` replaces SSIM by the metrics' multi-scale SSIM in the structure term, whose finest
scale has 5-7% of the weight: single-scale SSIM to two sources with different edges favours their blur.
All tensors are (N, C, *S) with values in [0, 1].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Wang, Simoncelli & Bovik's five scale weights; the metrics' MS_SSIM uses the same (a layer above, so not
# imported from there; tests/test_losses.py checks both the weights and the values agree)
_MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
_SOBEL_SMOOTH = (1.0, 2.0, 1.0)
_SOBEL_DIFF = (-1.0, 0.0, 1.0)


def _gauss1d(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype)


def _band(k: torch.Tensor, length: int) -> torch.Tensor:
    """(length, length - K + 1) matrix T with (x @ T)[j] = sum_t k[t] x[j + t]: a valid 1D correlation."""
    out = length - k.numel() + 1
    t = torch.zeros(length, out, dtype=k.dtype, device=k.device)
    j = torch.arange(out, device=k.device)
    for i in range(k.numel()):
        t[j + i, j] = k[i]
    return t


def _replicate_pad(y: torch.Tensor, axis: int, half: int) -> torch.Tensor:
    """Pad spatial axis `axis` of y (N, C, *S) by `half` replicated voxels on both sides."""
    nd = y.dim() - 2
    pad = [0] * (2 * nd)
    pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = half
    return F.pad(y, pad, mode="replicate")


def _separable(x: torch.Tensor, kernels: list[torch.Tensor | None], padding: str = "valid") -> torch.Tensor:
    """Apply a 1D kernel along each spatial axis (None: skip) of x (N, C, *S), channel-wise.

    padding "valid" shrinks each filtered axis; "replicate" keeps the size. Always float32, also
    inside an autocast region: SSIM's variance terms cancel catastrophically in bf16. Each axis is one
    matmul with a banded matrix (`_band`): on CPU 25-30x faster, forward and backward, than the
    1-channel convolutions of `_separable_ref`, which oneDNN runs at under 1 GFLOP/s.
    """
    y = x.float()
    with torch.autocast(x.device.type, enabled=False):
        for axis, k in enumerate(kernels):
            if k is None:
                continue
            if padding == "replicate":
                y = _replicate_pad(y, axis, k.numel() // 2)
            d = 2 + axis
            y = (y.movedim(d, -1) @ _band(k.float(), y.shape[d])).movedim(-1, d)
    return y


def _separable_ref(x: torch.Tensor, kernels: list[torch.Tensor | None], padding: str = "valid") -> torch.Tensor:
    """`_separable` as one 1-channel convolution per axis (the slow, obvious path)."""
    nd = x.dim() - 2
    n, c = x.shape[:2]
    y = x.float().reshape(n * c, 1, *x.shape[2:])
    conv = {2: F.conv2d, 3: F.conv3d}[nd]
    with torch.autocast(x.device.type, enabled=False):
        for axis, k in enumerate(kernels):
            if k is None:
                continue
            shape = [1] * nd
            shape[axis] = k.numel()
            if padding == "replicate":
                y = _replicate_pad(y, axis, k.numel() // 2)
            y = conv(y, k.float().view(1, 1, *shape))
    return y.reshape(n, c, *y.shape[2:])


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    spatial_dims: int,
    window: int = 11,
    sigma: float = 1.5,
    data_range: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Gaussian SSIM of x and y (N, C, *S) over the valid region: a scalar ("mean") or per item (N,).

    The window shrinks to the largest odd size that fits when an input is smaller than `window`.
    """
    if x.shape != y.shape or x.dim() != spatial_dims + 2:
        raise ValueError(f"ssim: expected two (N, C, *S) tensors with {spatial_dims} spatial dims, "
                         f"got {tuple(x.shape)} and {tuple(y.shape)}")
    win = min(window, *x.shape[2:])
    win -= 1 - win % 2
    per_item = _ssim_cs(x, y, spatial_dims, win, sigma, data_range)[0]
    if reduction == "none":
        return per_item
    if reduction == "mean":
        return per_item.mean()
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _ssim_cs(x: torch.Tensor, y: torch.Tensor, spatial_dims: int, win: int, sigma: float,
             data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per item (N,): mean SSIM and mean contrast-structure over the valid region of a `win` Gaussian."""
    x, y = x.float(), y.float()
    g = _gauss1d(win, sigma, x.device, x.dtype)
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    mu_x, mu_y, exx, eyy, exy = _separable(stacked, [g] * spatial_dims).chunk(5, dim=1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vx, vy, cov = exx - mu_x**2, eyy - mu_y**2, exy - mu_x * mu_y
    cs = (2 * cov + c2) / (vx + vy + c2)
    s = (2 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs
    return s.flatten(1).mean(1), cs.flatten(1).mean(1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, spatial_dims: int, window: int = 11, sigma: float = 1.5,
            data_range: float = 1.0) -> torch.Tensor:
    """Mean multi-scale SSIM of x and y (N, C, *S), the metrics' MS_SSIM (`metrics.structural.ms_ssim_pair`):
    up to five scales with Wang et al.'s weights, as many as keep the smallest side >= `window` (renormalised:
    3 for 64^3 patches, 4 for 96^3 to 160^3 volumes), contrast-structure at all but the coarsest scale, each
    factor floored just above 0 (the metric clips at 0; a floor keeps the power's gradient finite)."""
    if x.shape != y.shape or x.dim() != spatial_dims + 2 or min(x.shape[2:]) < window:
        raise ValueError(f"ms_ssim: expected two (N, C, *S) tensors with {spatial_dims} spatial dims and every "
                         f"side >= {window}, got {tuple(x.shape)} and {tuple(y.shape)}")
    levels = 5
    while levels > 1 and min(x.shape[2:]) // 2 ** (levels - 1) < window:
        levels -= 1
    weights = torch.tensor(_MS_SSIM_WEIGHTS[:levels], dtype=torch.float32, device=x.device)
    weights = weights / weights.sum()
    pool = {2: F.avg_pool2d, 3: F.avg_pool3d}[spatial_dims]
    x, y = x.float(), y.float()
    factors = []
    for level in range(levels):
        s, cs = _ssim_cs(x, y, spatial_dims, window, sigma, data_range)
        factors.append((s if level == levels - 1 else cs).clamp_min(1e-6))
        if level < levels - 1:
            pads = [side % 2 for side in x.shape[2:]]  # odd sides padded with zeros, as the metric does
            x, y = (pool(t, 2, 2, padding=pads, count_include_pad=True) for t in (x, y))
    return torch.prod(torch.stack(factors, 0) ** weights[:, None], 0).mean()


def sobel(x: torch.Tensor, axis: int, smooth_axis: int) -> torch.Tensor:
    """Signed Sobel response of x (N, C, *S): derivative along spatial `axis`, [1, 2, 1] smoothing
    along `smooth_axis` (so a 2D Sobel in the plane of the two axes); same size, replicate border."""
    d = torch.tensor(_SOBEL_DIFF, device=x.device, dtype=x.dtype)
    s = torch.tensor(_SOBEL_SMOOTH, device=x.device, dtype=x.dtype)
    ks: list[torch.Tensor | None] = [None] * (x.dim() - 2)
    ks[axis], ks[smooth_axis] = d, s
    return _separable(x, ks, padding="replicate")


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|Gx| + |Gy| of a 2D batch (N, C, H, W)."""
    return sobel(x, 1, 0).abs() + sobel(x, 0, 1).abs()


def ssim2d(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean Gaussian SSIM (window 11, sigma 1.5, valid region) of (N, 1, H, W) images in [0, 1]."""
    return ssim(x, y, 2)


def max_fusion_terms(f: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> dict[str, torch.Tensor]:
    """The peers' three unsupervised fusion terms (SwinFusion's loss): SSIM to both sources,
    max-intensity and max-texture L1, of 2D batches (N, 1, H, W)."""
    return {
        "ssim": 1.0 - 0.5 * (ssim2d(f, a) + ssim2d(f, b)),
        "int": (f - torch.maximum(a, b)).abs().mean(),
        "text": (sobel_magnitude(f) - torch.maximum(sobel_magnitude(a), sobel_magnitude(b))).abs().mean(),
    }


def weighted_sum(terms: dict[str, torch.Tensor], weights: dict[str, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """sum_k weights[k] * terms[k] and the terms as floats (for the trainer's log)."""
    loss = sum(weights[k] * v for k, v in terms.items())
    return loss, {k: float(v.detach()) for k, v in terms.items()}


SIMILARITIES = ("ssim", "ms_ssim")


def _similarity_term(f: torch.Tensor, a: torch.Tensor, b: torch.Tensor, similarity: str) -> torch.Tensor:
    """1 - the mean of sim(A, F) and sim(B, F), sim SSIM (release) or MS-SSIM (`ms_ssim`)."""
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
    nd = f.dim() - 2
    sim = ssim if similarity == "ssim" else ms_ssim
    return 1 - (sim(a, f, nd) + sim(b, f, nd)) / 2


def fusion_loss_2d(
    f: torch.Tensor, a: torch.Tensor, b: torch.Tensor, norm: str = "l1", weights=(2.0, 10.0, 5.0),
    similarity: str = "ssim", intensity_target: str = "max",
) -> tuple[torch.Tensor, dict[str, float]]:
    """2D ClinicalFMamba loss of fused f and sources a, b (N, 1, H, W); returns (loss, terms).
    `similarity`: the structure term's SSIM ("ssim", the release) or MS-SSIM ("ms_ssim");
    `intensity_target`: see `intensity_term`."""
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    f, a, b = f.float(), a.float(), b.float()
    intensity = intensity_term(f, a, b, intensity_target)
    gf, gt = sobel_magnitude(f), torch.maximum(sobel_magnitude(a), sobel_magnitude(b))
    grad = F.l1_loss(gf, gt) if norm == "l1" else F.mse_loss(gf, gt)
    return _combine(weights, intensity, grad, _similarity_term(f, a, b, similarity))


GRADIENT_TARGETS = ("max", "max_abs")
INTENSITY_TARGETS = ("max", "mean_base")
BASE_SIGMA = 1.0  # "mean_base": the Gaussian (window 7) whose low-pass F must share with the mean of A, B


def low_pass(x: torch.Tensor, sigma: float = BASE_SIGMA) -> torch.Tensor:
    """Gaussian low-pass of x (N, C, *S), window 2 ceil(3 sigma) + 1, replicate border, same size."""
    g = _gauss1d(2 * math.ceil(3 * sigma) + 1, sigma, x.device, torch.float32)
    return _separable(x, [g] * (x.dim() - 2), padding="replicate")


def intensity_term(f: torch.Tensor, a: torch.Tensor, b: torch.Tensor, target: str = "max") -> torch.Tensor:
    """L1 of F to max(A, B) (release, "max"), or of F's low-pass to the low-pass of (A + B) / 2
    ("mean_base": the base of the fusion is the sources' mean, its detail is left to the gradient term)."""
    if target not in INTENSITY_TARGETS:
        raise ValueError(f"intensity_target must be one of {INTENSITY_TARGETS}, got {target!r}")
    if target == "max":
        return F.l1_loss(f, torch.maximum(a, b))
    return F.l1_loss(low_pass(f), low_pass((a + b) / 2))


def fusion_loss_3d(
    f: torch.Tensor, a: torch.Tensor, b: torch.Tensor, weights=(2.0, 10.0, 1.0), gradient_target: str = "max",
    similarity: str = "ssim", intensity_target: str = "max",
) -> tuple[torch.Tensor, dict[str, float]]:
    """3D ClinicalFMamba loss of fused f and sources a, b (N, 1, D, H, W); returns (loss, terms).

    `gradient_target`: "max" (the release: signed max of the sources' responses) or "max_abs" (the
    response of larger magnitude); `similarity`: as in `fusion_loss_2d`; `intensity_target`: see
    `intensity_term`."""
    if gradient_target not in GRADIENT_TARGETS:
        raise ValueError(f"gradient_target must be one of {GRADIENT_TARGETS}, got {gradient_target!r}")
    f, a, b = f.float(), a.float(), b.float()
    intensity = intensity_term(f, a, b, intensity_target)
    grads = []
    for plane in ((1, 2), (0, 2), (0, 1)):  # axial (H, W), coronal (D, W), sagittal (D, H)
        for axis, smooth in (plane, plane[::-1]):
            ga, gb = sobel(a, axis, smooth), sobel(b, axis, smooth)
            target = torch.maximum(ga, gb) if gradient_target == "max" else torch.where(ga.abs() >= gb.abs(), ga, gb)
            grads.append(F.mse_loss(sobel(f, axis, smooth), target))
    grad = torch.stack(grads).mean()
    return _combine(weights, intensity, grad, _similarity_term(f, a, b, similarity))


def _combine(weights, intensity, grad, ssim_term) -> tuple[torch.Tensor, dict[str, float]]:
    wi, wg, ws = weights
    loss = wi * intensity + wg * grad + ws * ssim_term
    terms = {k: float(v.detach()) for k, v in (("intensity", intensity), ("gradient", grad), ("ssim", ssim_term))}
    return loss, terms


def fusion_loss(
    f: torch.Tensor, a: torch.Tensor, b: torch.Tensor, spatial_dims: int, norm: str = "l1",
    weights: tuple[float, float, float] | None = None, gradient_target: str = "max", similarity: str = "ssim",
    intensity_target: str = "max",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The ClinicalFMamba loss for `spatial_dims` 2 (with gradient norm `norm`) or 3 (with
    `gradient_target`, see `fusion_loss_3d`); `similarity` "ssim" (release) or "ms_ssim" and
    `intensity_target` (`intensity_term`) in both.

    `weights` (intensity, gradient, SSIM) replaces the release's weights of that dimensionality
    ((2, 10, 5) in 2D, (2, 10, 1) in 3D) when given."""
    if weights is not None and (len(weights) != 3 or min(weights) < 0):
        raise ValueError(f"loss weights must be three non-negative numbers, got {weights!r}")
    extra = {} if weights is None else {"weights": tuple(float(w) for w in weights)}
    if spatial_dims == 2:
        if gradient_target != "max":
            raise ValueError("gradient_target applies to the 3D loss only")
        return fusion_loss_2d(f, a, b, norm=norm, similarity=similarity, intensity_target=intensity_target, **extra)
    if spatial_dims == 3:
        return fusion_loss_3d(f, a, b, gradient_target=gradient_target, similarity=similarity,
                              intensity_target=intensity_target, **extra)
    raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
