"""The learned fusion methods: every one is registered here, in this one module, from a table.

A learned method runs a registered network (`neurofuse.models`) per input dimensionality with
shipped weights (the model's pretrained configs, `neurofuse.models.pretrained`: `-O pretrained=TAG`
or `--pair TAG`, else the model's default tag) or a trained file (`-O weights=FILE.safetensors`).
Registering costs nothing: torch and the models are imported only when a learned method runs, so
`neurofuse methods` and classical fusion never load them.

Method options: `weights` (a .safetensors file), `pretrained` (a shipped tag), `device` (cpu|cuda),
`precision` (auto|fp32|bf16, `neurofuse.precision`), and how a volume is windowed
(`neurofuse.inference.window_options`): `crop` (fuse only the foreground box; default true in 3D),
`margin` (8), `max_voxels` (one pass up to this many voxels, the fewest windows beyond; 3D default
about 6.7M), `window` (a fixed sliding-window size instead), `overlap` (0.25), `blend` (taper).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from neurofuse.errors import UsageError
from neurofuse.fusion import register_method

# method name -> ({spatial dims: registered model}, one-line description)
LEARNED: dict[str, tuple[dict[int, str], str]] = {
    "clinicalfmamba": (
        {2: "clinicalfmamba_2d", 3: "clinicalfmamba_3d"},
        "ClinicalFMamba (CNN + Mamba, MLMI 2025); 2D and 3D (tri-plane scan); -O weights=FILE.safetensors",
    ),
    "dmfnet": (
        {2: "dmfnet_small"},
        "DM-FNet (He et al., 2025): diffusion-trained UNet features + three-module fusion network; small config",
    ),
    "ehdran": (
        {2: "ehdran_small"},
        "EH-DRAN (Zhou et al., BIBM 2024): "
        "edge-enhanced dilated residual attention autoencoder, nuclear-norm feature fusion; small config",
    ),
    "lagn": (
        {2: "lagn_small"},
        "LAGN (Qu et al., 2025, from the abstract): "
        "local/global network with a diffusion-generated-image loss; small config",
    ),
    "mambadfuse": (
        {2: "mambadfuse_small"},
        "MambaDFuse (Li et al., 2024): dual-phase Mamba fusion (channel exchange + M3 blocks); small config",
    ),
    "mrscfusion": (
        {2: "mrscfusion_small"},
        "MRSCFusion (Xie et al., 2023): multiscale CNN autoencoder with residual Swin-convolution fusion; small config",
    ),
    "swinfusion": (
        {2: "swinfusion_small"},
        "SwinFusion (Ma et al., 2022): intra/cross-domain shifted-window attention fusion; small config",
    ),
}


_WINDOWED = ("window", "crop", "max_voxels")  # options under which 2D is not fused whole


def register_learned_method(method_name: str, models: Mapping[int, str], description: str) -> None:
    """Register fusion method `method_name` that runs registered model `models[ndim]` on ndim-D input."""
    names = {int(k): str(v) for k, v in models.items()}

    def fuse_fn(
        a: np.ndarray,
        b: np.ndarray,
        weights: str | None = None,
        pretrained: str | None = None,
        device: str = "cpu",
        precision: str = "auto",
        window: int | str | None = None,
        overlap: float | str = 0.25,
        crop: bool | str | None = None,
        margin: int | str = 8,
        max_voxels: int | str | None = None,
        blend: str = "taper",
    ) -> np.ndarray:
        if a.ndim not in names:
            raise UsageError(f"method {method_name!r} supports {tuple(names)}D input, got {a.ndim}D")
        from neurofuse.inference import fuse_with_model, load_model, window_options

        opts = window_options(a.ndim, window, overlap, crop, margin, max_voxels, blend)
        model = load_model(names[a.ndim], weights, pretrained)
        return fuse_with_model(model, a, b, device=str(device), precision=str(precision), **opts)

    fuse_fn.__name__ = f"fuse_{method_name}"

    def fuse_batch(a: np.ndarray, b: np.ndarray, weights: str | None = None, pretrained: str | None = None,
                   device: str = "cpu", precision: str = "auto", **windowing) -> np.ndarray:
        """Stacks (N, *S) of same-shape pairs (`fusion.fuse_many`): 2D pairs with no window options in
        one forward pass per 8 (the same result as `fuse_fn` pair by pair); anything else pair by pair."""
        opts = {"weights": weights, "pretrained": pretrained, "device": device, "precision": precision}
        if a.ndim - 1 != 2 or 2 not in names or any(windowing.get(k) is not None for k in _WINDOWED):
            return np.stack([fuse_fn(x, y, **opts, **windowing) for x, y in zip(a, b, strict=True)])
        from neurofuse.inference import fuse_batch_with_model, load_model

        model = load_model(names[2], weights, pretrained)
        return fuse_batch_with_model(model, a, b, device=str(device), precision=str(precision))

    fuse_fn.batch = fuse_batch
    register_method(method_name, description, kind="learned", spatial_dims=tuple(names), models=names)(fuse_fn)


for _name, (_models, _description) in LEARNED.items():
    register_learned_method(_name, _models, _description)
