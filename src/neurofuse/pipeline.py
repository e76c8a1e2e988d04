"""File-level fusion: read two co-registered inputs, fuse their intensities, write the result.

Colour inputs (SPECT/PET RGB) are fused through YCbCr: the Y channel is fused with the gray image
and the source's Cb/Cr are merged back, unless gray output is requested. Volumes keep the reference
(first) input's geometry. Nothing is written unless the whole fusion succeeded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurofuse.errors import UsageError
from neurofuse.fusion import fuse, get_method
from neurofuse.io import (
    IMAGE_2D_EXTS,
    NIFTI_EXTS,
    Image,
    load_pair,
    luma,
    normalize01,
    rgb_to_ycbcr,
    suffix_of,
    write_image,
    ycbcr_to_rgb,
)


@dataclass
class FuseOptions:
    """How to fuse a pair of files (defaults match the CLI)."""

    method: str = "average"
    resample: bool = False
    overwrite: bool = False
    gray: bool = False
    clip_percentiles: tuple[float, float] | None = None
    bit_depth: int = 8
    dtype: str = "float32"
    pair: str | None = None  # shipped-weights tag for learned methods (ct-mri, spect-mri, pet-mri, ...)


_PAIR_TOKENS = (("spect", "spect-mri"), ("pet", "pet-mri"), ("ct", "ct-mri"))


def infer_pair(*paths: str | Path) -> str | None:
    """The Harvard pair tag named by the inputs' file or folder names (e.g. `.../SPECT/4012.png`)."""
    words = {w for p in paths for part in Path(p).parts[-3:] for w in re.split(r"[^a-z]+", part.lower())}
    found = [tag for token, tag in _PAIR_TOKENS if token in words]
    return found[0] if len(found) == 1 else None


def learned_options(method: str, paths: tuple[str | Path, ...], pair: str | None, options: dict) -> dict:
    """Add `pretrained=<pair>` for a learned method given no weights: from --pair or the file names."""
    if get_method(method).kind != "learned" or {"weights", "pretrained"} & set(options):
        return options
    tag = pair or (infer_pair(*paths) if suffix_of(paths[0]) in IMAGE_2D_EXTS else None)
    return options if tag is None else {**options, "pretrained": tag}


def check_output(out: Path, spatial_dims: int, overwrite: bool) -> None:
    """UsageError before any work if `out` cannot be written for this kind of input."""
    ext = suffix_of(out)
    allowed = IMAGE_2D_EXTS if spatial_dims == 2 else NIFTI_EXTS
    if ext not in allowed:
        raise UsageError(f"{out}: a {spatial_dims}D result must be written as one of {', '.join(allowed)}")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: output folder {out.parent} does not exist")
    if out.exists() and not overwrite:
        raise UsageError(f"{out}: output exists (use --overwrite to replace it)")


def fusion_inputs(a: Image, b: Image, clip_percentiles: tuple[float, float] | None = None):
    """The two arrays a method fuses: gray/Y intensities, min-max scaled to [0, 1]."""
    return normalize01(luma(a), clip_percentiles), normalize01(luma(b), clip_percentiles)


def merge_colour(f: np.ndarray, a: Image, b: Image) -> np.ndarray:
    """Fused Y in [0, 1] back to RGB with the Cb/Cr of the colour source; gray if neither is colour."""
    colour = b if b.is_color else a if a.is_color else None
    if colour is None:
        return f
    src = colour.array.astype(np.float64) * (255.0 / (2**colour.bit_depth - 1))
    ycc = rgb_to_ycbcr(src)
    ycc[..., 0] = f * 255.0
    return (ycbcr_to_rgb(ycc) / 255.0).astype(np.float32)


def fuse_images(a: Image, b: Image, opts: FuseOptions, **method_options) -> np.ndarray:
    """Fused array ready to write: 2D gray/RGB or 3D in [0, 1] on `a`'s grid."""
    ya, yb = fusion_inputs(a, b, opts.clip_percentiles)
    f = fuse(ya, yb, opts.method, **method_options)
    return f if opts.gray else merge_colour(f, a, b)


def fuse_files(path_a: str | Path, path_b: str | Path, out: str | Path, opts: FuseOptions, **method_options) -> Path:
    """Fuse two files into `out` (atomic write). `path_a` is the reference grid (anatomical image)."""
    out = Path(out)
    method_options = learned_options(opts.method, (path_a, path_b), opts.pair, method_options)
    a, b = load_pair(path_a, path_b, resample=opts.resample)
    check_output(out, a.spatial_dims, opts.overwrite)
    fused = fuse_images(a, b, opts, **method_options)
    return write_image(out, fused, reference=a, bit_depth=opts.bit_depth, dtype=opts.dtype, overwrite=opts.overwrite)
