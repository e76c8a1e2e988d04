"""File-level fusion: read two co-registered inputs, fuse their intensities, write the result.

Colour inputs (SPECT/PET RGB) are fused through YCbCr: the Y channel is fused with the gray image
and the source's Cb/Cr are merged back, unless gray output is requested. Volumes keep the reference
(first) input's geometry. Nothing is written unless the whole fusion succeeded and its result
passed `check_result` (finite, not constant); an output is never one of the inputs. Everything that can
be checked before the work starts (method, options, clip range, output path) is checked first.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurofuse.errors import InputError, NeurofuseError, ResultError, UsageError
from neurofuse.fusion import fuse, fuse_many, get_method
from neurofuse.io import (
    IMAGE_2D_EXTS,
    NIFTI_EXTS,
    Image,
    check_clip,
    check_writable,
    load_pair,
    luma,
    normalize01,
    read_image,
    rgb255,
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
    register: str | None = None  # "rigid" | "affine": register B onto A first (`neurofuse.registration`)


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


def spatial_dims_of(path: str | Path) -> int | None:
    """2 or 3 from a path's extension (a folder is a DICOM series); None if unknown."""
    path = Path(path)
    ext = suffix_of(path)
    if ext in IMAGE_2D_EXTS:
        return 2
    if ext in NIFTI_EXTS or ext == ".dcm" or path.is_dir():
        return 3
    return None


def _same_file(x: Path, y: Path) -> bool:
    try:
        return os.path.samefile(x, y)
    except OSError:
        return x.resolve() == y.resolve()


def check_not_input(out: str | Path, inputs: tuple[str | Path, ...]) -> None:
    """UsageError if `out` is one of the inputs (whatever the flags: a source is never replaced)."""
    out = Path(out)
    for p in inputs:
        if _same_file(out, Path(p)):
            raise UsageError(f"{out}: output is the input {p}; write the fusion to another file (even `overwrite=True` "
                             "never replaces a source)")


def check_output(out: Path, spatial_dims: int | None, overwrite: bool, inputs: tuple[str | Path, ...] = ()) -> None:
    """UsageError before any work if `out` cannot be written for this kind of input."""
    out = Path(out)
    check_not_input(out, inputs)
    if spatial_dims is not None:
        ext = suffix_of(out)
        allowed = IMAGE_2D_EXTS if spatial_dims == 2 else NIFTI_EXTS
        if ext not in allowed:
            raise UsageError(f"{out}: a {spatial_dims}D result must be written as one of {', '.join(allowed)}")
    check_writable(out, overwrite)


def _numeric_kinds(param: inspect.Parameter) -> set[type]:
    """Numeric types an option takes, from its default or (for a None default) its annotation text."""
    if isinstance(param.default, bool):
        return {bool}
    if isinstance(param.default, int):
        return {int}
    if isinstance(param.default, float):
        return {float}
    ann = param.annotation if isinstance(param.annotation, str) else getattr(param.annotation, "__name__", "")
    return {t for name, t in (("int", int), ("float", float), ("bool", bool)) if re.search(rf"\b{name}\b", ann)}


def check_method_options(method: str, options: dict) -> None:
    """UsageError for an option value of the wrong type (e.g. `-O levels=abc`) before any work."""
    fn = get_method(method).fn
    params = inspect.signature(fn).parameters
    for key, value in options.items():
        kinds = _numeric_kinds(params[key]) if key in params else set()  # fuse() names unknown options
        if not kinds:
            continue
        if isinstance(value, bool):
            ok = bool in kinds
        elif isinstance(value, int):
            ok = bool(kinds & {int, float})
        else:
            ok = isinstance(value, float) and float in kinds
        if not ok:
            words = ((int, "an integer"), (float, "a number"), (bool, "true/false"))
            want = " or ".join(w for t, w in words if t in kinds)
            raise UsageError(f"method {method!r}: option {key}={value!r} must be {want}")


def fusion_inputs(a: Image, b: Image, clip_percentiles: tuple[float, float] | None = None):
    """The two arrays a method fuses: gray/Y intensities, min-max scaled to [0, 1]."""
    return (normalize01(luma(a), clip_percentiles, name=a.path), normalize01(luma(b), clip_percentiles, name=b.path))


def check_result(f: np.ndarray, a: np.ndarray, b: np.ndarray, method: str, out: str | Path | None = None) -> None:
    """ResultError unless the fused array is finite and (where an input is not constant) not constant."""
    where = f"{out}: not written" if out is not None else "fusion result"
    bad = int(np.count_nonzero(~np.isfinite(f)))
    if bad:
        raise ResultError(f"{where}: method {method} returned {bad} NaN/Inf values of {f.size} (its weights or "
                          "options are broken)")
    if f.size and float(f.min()) == float(f.max()) and (np.ptp(a) > 0 or np.ptp(b) > 0):
        raise ResultError(f"{where}: method {method} returned a constant image ({float(f.flat[0]):g} everywhere) "
                          "from non-constant inputs")


def merge_colour(f: np.ndarray, a: Image, b: Image) -> np.ndarray:
    """Fused Y in [0, 1] back to RGB with the Cb/Cr of the colour source; gray if neither is colour."""
    colour = b if b.is_color else a if a.is_color else None
    if colour is None:
        return f
    ycc = rgb_to_ycbcr(rgb255(colour))
    ycc[..., 0] = f * 255.0
    return (ycbcr_to_rgb(ycc) / 255.0).astype(np.float32)


# Peak memory of `fuse_files` on volumes, in bytes per voxel of the fused grid (the two [0, 1] inputs
# included), measured as peak RSS above the import baseline at 256x256x128 and 512x512x400 float32
# (dwt: 2498 MiB peak at 512x512x400) and rounded up (docs/robustness.md). Learned 3D methods run the
# network on passes (windows, or the whole foreground box) of a bounded size: a cost per pass voxel
# (activations; about 300 B with the low-memory forward), a fixed cost (model, torch), and the input,
# accumulator and blend-weight arrays per voxel of the volume.
BYTES_PER_VOXEL = {"average": 18, "maximum": 18, "pca": 18, "dwt": 26, "laplacian": 38}
UNKNOWN_BYTES_PER_VOXEL = 40
LEARNED_BYTES_PER_VOXEL = 34
LEARNED_PASS_BYTES_PER_VOXEL = 300
LEARNED_PASS_VOXELS = 6_700_000  # the learned 3D method's default largest pass (a 2 GB budget)
LEARNED_FIXED_BYTES = 3 * 2**28  # model and torch runtime; covers the 1142 and 1339 MiB measured at 128^3, 224x128x128


def estimate_memory(shape: tuple[int, ...], method: str, itemsize: int = 4, window: int | None = None) -> int:
    """Peak bytes `fuse_files` needs to fuse two volumes of `shape` (native values of `itemsize` bytes);
    `window`: a learned method's explicit sliding-window side."""
    n = int(np.prod(shape))
    loading = n * (2 * itemsize + 8)  # both native arrays and the [0, 1] copy being made
    if get_method(method).kind == "learned":
        per_pass = min(n, LEARNED_PASS_VOXELS if window is None else int(window) ** len(shape))
        fusing = n * LEARNED_BYTES_PER_VOXEL + per_pass * LEARNED_PASS_BYTES_PER_VOXEL + LEARNED_FIXED_BYTES
    else:
        fusing = n * BYTES_PER_VOXEL.get(method, UNKNOWN_BYTES_PER_VOXEL)
    return max(loading, fusing)


def available_memory() -> int | None:
    """Bytes this process may still allocate: MemAvailable, or less under a cgroup limit; None if unknown."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            avail = min(avail or 1 << 62, int(limit) - used)
    except (OSError, ValueError):
        pass
    return avail


def check_memory(path_a: str | Path, method: str, method_options: dict) -> None:
    """InputError before reading a volume whose fusion would not fit in the memory available."""
    if suffix_of(path_a) not in NIFTI_EXTS or not Path(path_a).is_file():
        return  # 2D images are small; DICOM and unreadable files are left to the reader
    try:
        import nibabel as nib

        img = nib.load(str(path_a))  # the header only
        shape, itemsize = img.shape[:3], img.get_data_dtype().itemsize
    except Exception:  # the reader will say what is wrong with the file
        return
    window = method_options.get("window")
    need = estimate_memory(shape, method, itemsize, window if isinstance(window, int) else None)
    avail = available_memory()
    if avail is not None and need > avail:
        size = "x".join(map(str, shape))
        raise InputError(f"{path_a}: fusing {size} volumes with {method} needs about {need / 2**30:.1f} GiB of "
                         f"memory, {max(avail, 0) / 2**30:.1f} GiB is available; free memory or crop the volumes")


def preflight(path_a: str | Path, path_b: str | Path, out: str | Path, opts: FuseOptions, method_options: dict) -> None:
    """Everything checkable before reading the inputs: method, options, clip range, output path, memory."""
    get_method(opts.method)
    check_method_options(opts.method, method_options)
    check_clip(opts.clip_percentiles)
    check_output(Path(out), spatial_dims_of(path_a), opts.overwrite, (path_a, path_b))
    check_memory(path_a, opts.method, method_options)


def fuse_files(path_a: str | Path, path_b: str | Path, out: str | Path, opts: FuseOptions, **method_options) -> Path:
    """Fuse two files into `out` (atomic write). `path_a` is the reference grid (anatomical image)."""
    out = Path(out)
    preflight(path_a, path_b, out, opts, method_options)
    method_options = learned_options(opts.method, (path_a, path_b), opts.pair, method_options)
    transform = None
    if opts.register is None:
        a, b = load_pair(path_a, path_b, resample=opts.resample)
        check_output(out, a.spatial_dims, opts.overwrite, (path_a, path_b))
    else:  # B registered onto A (any grids); its transform is written beside the output
        from neurofuse.registration import register, transform_path

        a, b = read_image(path_a), read_image(path_b)
        check_output(out, a.spatial_dims, opts.overwrite, (path_a, path_b))
        check_writable(transform_path(out), opts.overwrite)
        reg = register(a, b, opts.register)
        b, transform = reg.image, reg.transform
    ya, yb = fusion_inputs(a, b, opts.clip_percentiles)
    colour = None if opts.gray else b if b.is_color else a if a.is_color else None
    ref, a, b = a.geometry_only(), None, None  # the native values are not needed any more: free them
    fused = fuse(ya, yb, opts.method, **method_options)
    check_result(fused, ya, yb, opts.method, out)
    del ya, yb
    if colour is not None:
        fused = merge_colour(fused, ref, colour)
    written = write_image(out, fused, reference=ref, bit_depth=opts.bit_depth, dtype=opts.dtype,
                          overwrite=opts.overwrite)
    if transform is not None:
        from neurofuse.registration import transform_path, write_transform

        write_transform(transform, transform_path(out), overwrite=opts.overwrite)
    return written


def brats_outputs(out: Path, case_id: str, method: str, dims: tuple[int, ...]) -> dict[int, Path]:
    """OUT/<ID>/<ID>_fused-<method>-<d>d.nii.gz for each requested dims (`neurofuse fuse-brats`)."""
    return {d: out / case_id / f"{case_id}_fused-{method}-{d}d.nii.gz" for d in dims}


def fuse_brats_case(case, targets: dict[int, Path], method: str, clip_percentiles: tuple[float, float] | None = None,
                    overwrite: bool = False, pair: str | None = None, **method_options) -> None:
    """Normalise a BraTS case's T2 and FLAIR to [0, 1] (brain voxels) and write their 2D (axial slices) and/or
    3D fusion with T2's geometry. `pair` picks the shipped 2D weights of a learned method (the 2D models
    ship several; default: the model's first tag); `method_options` go to both."""
    from neurofuse.brats import load_volume, normalize_volume
    from neurofuse.fusion import fuse_axial

    t2, t2_img = load_volume(case.path("t2"))
    flair, _ = load_volume(case.path("flair"))
    if t2.shape != flair.shape:
        raise UsageError(f"{case.path('flair')}: shape {flair.shape} differs from T2 {t2.shape}")
    a = normalize_volume(t2, clip_percentiles, name=case.path("t2"))
    b = normalize_volume(flair, clip_percentiles, name=case.path("flair"))
    for d, path in targets.items():
        if d == 2:
            opts2 = learned_options(method, (case.path("t2"),), pair, method_options)
            fused = fuse_axial(a, b, method, **opts2)
        else:
            fused = fuse(a, b, method, **method_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_image(path, fused, reference=t2_img, overwrite=overwrite)


def fuse_files_many(jobs: Sequence[tuple[str | Path, str | Path, str | Path]], opts: FuseOptions,
                    **method_options) -> list[Path | NeurofuseError]:
    """`fuse_files` for several (A, B, OUT) jobs, the fusion of same-shape pairs run together
    (`fusion.fuse_many`: a learned 2D method runs them as one batch). Each job's result is the written
    path or the NeurofuseError it raised, in job order; as with `fuse_files`, nothing of a failed job is
    written."""
    results: list[Path | NeurofuseError | None] = [None] * len(jobs)
    groups: dict[tuple, list] = {}
    for i, (path_a, path_b, out) in enumerate(jobs):
        try:
            out = Path(out)
            preflight(path_a, path_b, out, opts, method_options)
            mopts = learned_options(opts.method, (path_a, path_b), opts.pair, method_options)
            a, b = load_pair(path_a, path_b, resample=opts.resample)
            check_output(out, a.spatial_dims, opts.overwrite, (path_a, path_b))
            ya, yb = fusion_inputs(a, b, opts.clip_percentiles)
        except NeurofuseError as exc:
            results[i] = exc
            continue
        key = (ya.shape, tuple(sorted((k, repr(v)) for k, v in mopts.items())))
        groups.setdefault(key, []).append((i, a, b, ya, yb, mopts, out))
    for items in groups.values():
        try:
            fused = fuse_many([(it[3], it[4]) for it in items], opts.method, **items[0][5])
        except NeurofuseError as exc:
            for it in items:
                results[it[0]] = exc
            continue
        for (i, a, b, ya, yb, _, out), f in zip(items, fused, strict=True):
            try:
                check_result(f, ya, yb, opts.method, out)
                f = f if opts.gray else merge_colour(f, a, b)
                results[i] = write_image(out, f, reference=a, bit_depth=opts.bit_depth, dtype=opts.dtype,
                                         overwrite=opts.overwrite)
            except NeurofuseError as exc:
                results[i] = exc
    return results  # type: ignore[return-value]
