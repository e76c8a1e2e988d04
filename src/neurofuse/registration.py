"""Registration of an unaligned pair with SimpleITK: Mattes mutual information, rigid or affine, 2D and 3D.

`register(fixed, moving, "rigid" | "affine")` finds the transform that brings `moving` (CT, SPECT, PET,
FLAIR, ...) onto `fixed` (the anatomical MRI / T2, whose grid the fusion keeps) and returns `moving`
resampled onto the fixed grid (linear; zero outside its field of view), the transform and the final
metric. Mutual information compares intensities statistically, so it suits pairs of different
modalities (MRI-CT, MRI-SPECT/PET, T2-FLAIR).

Geometry: a volume is registered in physical space (its NIfTI affine, as LPS for ITK), so two scans on
different grids need no resampling first. A 2D image has no geometry: pixels are 1 x 1 with the origin
at pixel (0, 0), x along columns and y along rows (the convention of SimpleITK's arrays); two 2D images
of different sizes are aligned in that common frame.

The transform follows ITK's convention: it maps a point of the fixed image to the matching point of the
moving image. `write_transform` saves it as an ITK `.tfm` text file (readable by SimpleITK, 3D Slicer,
ANTs' `antsApplyTransforms` for 3D); `neurofuse register` and `fuse --register` save it beside the output.

Procedure: a moments-centred initial rigid transform (Euler; in 2D started at the best of the angles
-30..30 degrees in 5-degree steps), then a three-level pyramid (shrink 4, 2, 1; smoothing 2, 1, 0
pixels) of regular-step gradient descent on Mattes MI (32 bins; every pixel in 2D, 10% random voxels
with a fixed seed in 3D; one thread, see below); `affine` continues from the rigid result with a full
affine matrix on the last two levels. Capture range: rotations up to about 30 degrees in 2D, about 10
degrees per axis in 3D, shifts of a tenth of the field of view. Mutual information can prefer a wrong
pose when one image is a nearly featureless blob (low-resolution SPECT): check the result (the fusion
shows it at once).
Reproducibility: ITK splits the metric's sums across threads, and the split (so the rounding, so the
path of the optimiser) depends on the thread count and scheduling; with two threads the same 2D pair
ended up to 0.7 px apart between runs. Registration runs ITK on one thread by default (`threads=1`), so a
pair gives the same transform on every run and machine; more threads are faster, not reproducible.
Tests misalign real pairs by known rotations, shifts and scales and check the recovered transform
(`tests/test_registration.py`; tolerances there and in the README).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from neurofuse.errors import InputError, UsageError
from neurofuse.io import Image, atomic_write_path, luma, suffix_of

KINDS = ("rigid", "affine")
_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class Registration:
    """`image`: moving resampled onto the fixed grid (native dtype, fixed geometry); `transform`: the ITK
    transform fixed point -> moving point; `metric`: final Mattes MI (more negative = better aligned)."""

    image: Image
    transform: object  # SimpleITK.Transform
    metric: float
    kind: str


def _sitk_image(arr: np.ndarray, img: Image, vector: bool = False):
    """`arr` (in `img`'s array order) as a SimpleITK image with `img`'s physical geometry."""
    import SimpleITK as sitk

    if img.spatial_dims == 2:
        return sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=vector)
    axes = (2, 1, 0, 3) if vector else (2, 1, 0)  # NIfTI voxel (i, j, k) -> ITK index (x, y, z)
    out = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, axes)), isVector=vector)
    m = _LPS @ np.asarray(img.affine[:3, :3], dtype=np.float64)
    spacing = np.linalg.norm(m, axis=0)
    direction = m / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise InputError(f"{img.path}: its affine is sheared; registration needs an orthogonal voxel grid")
    out.SetSpacing([float(s) for s in spacing])
    out.SetDirection([float(d) for d in direction.ravel()])
    out.SetOrigin([float(o) for o in _LPS @ np.asarray(img.affine[:3, 3], dtype=np.float64)])
    return out


def _intensity(img: Image):
    """Gray (Y channel of colour) float32 scaled to [0, 1] as a SimpleITK image, for the metric."""
    y = luma(img).astype(np.float32)
    lo, hi = float(y.min()), float(y.max())
    if hi <= lo:
        raise InputError(f"{img.path}: constant image, nothing to register")
    return _sitk_image((y - lo) / (hi - lo), img)


def _method(bins: int, sampling: float, seed: int):
    import SimpleITK as sitk

    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=bins)
    if sampling < 1.0:
        reg.SetMetricSamplingStrategy(reg.RANDOM)
        reg.SetMetricSamplingPercentage(sampling, seed)
    else:
        reg.SetMetricSamplingStrategy(reg.NONE)
    reg.SetInterpolator(sitk.sitkLinear)
    return reg


def _optimise(fixed, moving, transform, levels: tuple[int, ...], iterations: int, seed: int,
              sampling: float, bins: int):
    reg = _method(bins, sampling, seed)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=2.0, minStep=1e-4, numberOfIterations=iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(levels))
    reg.SetSmoothingSigmasPerLevel([s // 2 for s in levels])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    reg.SetInitialTransform(transform, inPlace=True)
    reg.Execute(fixed, moving)
    return transform, float(reg.GetMetricValue())


def _best_angle(fixed, moving, rigid, bins: int, shrink: int = 4):
    """2D: the start angle in -30..30 degrees (5-degree steps) with the best metric on a shrunk pair
    (gradient descent alone stays in the nearest optimum, a few degrees wide for multimodal pairs)."""
    import SimpleITK as sitk

    def small(img):
        return sitk.Shrink(sitk.SmoothingRecursiveGaussian(img, shrink / 2), [shrink] * img.GetDimension())

    f, m = small(fixed), small(moving)
    reg = _method(bins, 1.0, 0)
    best = None
    for deg in range(-30, 31, 5):
        trial = sitk.Euler2DTransform(rigid)
        trial.SetAngle(float(np.deg2rad(deg)))
        reg.SetInitialTransform(trial)
        value = reg.MetricEvaluate(f, m)
        if best is None or value < best[0]:
            best = (value, trial)
    return best[1]


def register_transform(fixed: Image, moving: Image, kind: str = "rigid", *, iterations: int = 300, seed: int = 0,
                       sampling: float | None = None, bins: int = 32, threads: int = 1) -> tuple[object, float]:
    """(transform fixed point -> moving point, final metric) of a `kind` registration (see the module).

    `sampling`: share of the fixed voxels the metric samples (default every pixel in 2D, 10% in 3D);
    `threads`: ITK's threads while it runs (1: the same result on every run and machine)."""
    import SimpleITK as sitk

    if kind not in KINDS:
        raise UsageError(f"registration kind {kind!r}: use one of {', '.join(KINDS)}")
    if fixed.spatial_dims != moving.spatial_dims:
        raise InputError(f"{fixed.path} and {moving.path}: cannot register a {moving.spatial_dims}D image to a "
                         f"{fixed.spatial_dims}D one")
    dim = fixed.spatial_dims
    sampling = (1.0 if dim == 2 else 0.1) if sampling is None else sampling
    f, m = _intensity(fixed), _intensity(moving)
    euler = sitk.Euler2DTransform() if dim == 2 else sitk.Euler3DTransform()
    saved = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)  # every filter and the metric (the module)
    try:
        init = sitk.CenteredTransformInitializer(f, m, euler, sitk.CenteredTransformInitializerFilter.MOMENTS)
        rigid = _best_angle(f, m, sitk.Euler2DTransform(init), bins) if dim == 2 else sitk.Euler3DTransform(init)
        rigid, metric = _optimise(f, m, rigid, (4, 2, 1), iterations, seed, sampling, bins)
        if kind == "rigid":
            return rigid, metric
        affine = sitk.AffineTransform(dim)
        affine.SetCenter(rigid.GetCenter())
        affine.SetMatrix(rigid.GetMatrix())
        affine.SetTranslation(rigid.GetTranslation())
        return _optimise(f, m, affine, (2, 1), iterations, seed, sampling, bins)
    except RuntimeError as exc:  # ITK: e.g. too few samples inside the overlap
        msg = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{fixed.path} and {moving.path}: registration failed ({msg}); do the images overlap?") \
            from None
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(saved)


def apply_transform(fixed: Image, moving: Image, transform) -> Image:
    """`moving` resampled onto `fixed`'s grid through `transform` (linear, 0 outside), in its own dtype."""
    import SimpleITK as sitk

    arr = moving.array
    vector = arr.ndim == moving.spatial_dims + 1
    src = _sitk_image(arr.astype(np.float32), moving, vector=vector)
    ref = _sitk_image(np.zeros(fixed.spatial_shape, np.float32), fixed)
    out = sitk.GetArrayFromImage(sitk.Resample(src, ref, transform, sitk.sitkLinear, 0.0))
    if moving.spatial_dims == 3:
        out = np.transpose(out, (2, 1, 0, 3) if vector else (2, 1, 0))
    if np.issubdtype(arr.dtype, np.integer):
        info = np.iinfo(arr.dtype)
        out = np.clip(np.round(out), info.min, info.max)
    out = np.ascontiguousarray(out.astype(arr.dtype))
    affine = None if fixed.affine is None else fixed.affine.copy()
    header = fixed.header if moving.spatial_dims == 3 else moving.header
    return Image(out, moving.path, moving.format, affine, header, moving.bit_depth,
                 {**moving.meta, "registered_to": str(fixed.path)})


def register(fixed: Image, moving: Image, kind: str = "rigid", **options) -> Registration:
    """Register `moving` onto `fixed` (`register_transform` options) and resample it onto the fixed grid."""
    transform, metric = register_transform(fixed, moving, kind, **options)
    return Registration(apply_transform(fixed, moving, transform), transform, metric, kind)


def write_registered(path: str | Path, img: Image, overwrite: bool = False) -> Path:
    """Write a registered image: a volume as NIfTI in its native values and dtype with the fixed grid's
    affine; a 2D image at its bit depth (8 or 16; colour kept)."""
    from neurofuse.io import write_image

    path = Path(path)
    if img.spatial_dims == 3:
        import nibabel as nib

        header = img.header.copy() if img.header is not None else None
        nii = nib.Nifti1Image(img.array, img.affine, header=header)
        nii.set_data_dtype(img.array.dtype)
        nii.set_qform(img.affine, code=1)
        nii.set_sform(img.affine, code=1)
        with atomic_write_path(path, overwrite) as tmp:
            nib.save(nii, str(tmp))
        return path
    arr = img.array.astype(np.float64)
    scale = img.full_scale or (float(arr.max()) or 1.0)
    depth = img.bit_depth if img.bit_depth in (8, 16) and not img.is_color else 8
    return write_image(path, np.clip(arr / scale, 0.0, 1.0), bit_depth=depth, overwrite=overwrite)


def transform_path(out: str | Path) -> Path:
    """Where the transform of output `out` is saved: `<out without extension>.transform.tfm`."""
    out = Path(out)
    return out.with_name(out.name[: len(out.name) - len(suffix_of(out))] + ".transform.tfm")


def write_transform(transform, path: str | Path, overwrite: bool = True) -> Path:
    """Save an ITK transform as a `.tfm` text file (atomically; the temporary file keeps the extension)."""
    import SimpleITK as sitk

    path = Path(path)
    with atomic_write_path(path, overwrite) as tmp:
        sitk.WriteTransform(transform, str(tmp))
    return path


def read_transform(path: str | Path):
    import SimpleITK as sitk

    return sitk.ReadTransform(str(path))
