"""Medical image I/O: one API for 2D images (PNG/TIFF/BMP/JPEG), NIfTI volumes and DICOM series.

Every reader returns an `Image`: the array in its native values plus the geometry needed to write a
result back faithfully (NIfTI affine and header, DICOM spacing/origin/direction as a RAS affine).
Conventions:
- 2D arrays are (H, W) gray or (H, W, 3) RGB.
- 3D arrays are in NIfTI voxel order (i, j, k) with a 4x4 voxel-to-RAS+ affine (DICOM is converted
  from SimpleITK's (z, y, x) / LPS to this, so a DICOM series and its NIfTI export agree).
- Colour (SPECT/PET) is fused through YCbCr, full-range ITU-R BT.601 as in PIL/JPEG.
- Writers never overwrite unless asked and write atomically (temporary file, then rename).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image as PILImage

from neurofuse.errors import InputError, ResultError, UsageError

try:
    import fcntl
except ImportError:  # Windows: no flock; writes stay atomic, stale partials are not detected
    fcntl = None

IMAGE_2D_EXTS = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
NIFTI_EXTS = (".nii", ".nii.gz")
LOSSY_EXTS = (".jpg", ".jpeg")
AFFINE_TOL = 1e-3  # mm: affines that differ by less are the same grid


@dataclass
class Image:
    """An image or volume with its geometry. `array` holds native values (not normalised)."""

    array: np.ndarray
    path: Path
    format: str  # "png" | "tiff" | "bmp" | "jpeg" | "nifti" | "dicom"
    affine: np.ndarray | None = None  # 4x4 voxel -> RAS+ mm, 3D only
    header: Any = None  # nibabel header of a NIfTI input (codes, units, zooms)
    bit_depth: int = 8
    meta: dict = field(default_factory=dict)

    @property
    def is_color(self) -> bool:
        return self.array.ndim == 3 and self.array.shape[-1] == 3 and self.format not in ("nifti", "dicom")

    @property
    def spatial_dims(self) -> int:
        return 2 if self.format not in ("nifti", "dicom") else 3

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.array.shape[:2] if self.spatial_dims == 2 else self.array.shape

    @property
    def full_scale(self) -> float | None:
        """The native value that means white: 2^bits - 1 for 8/16-bit integer images, 1.0 for float
        images whose values lie in [0, 1]; None when there is no such value (other floats, other
        integer types): such images are min-max scaled."""
        arr = self.array
        if arr.dtype.kind in "ui" and self.bit_depth in (8, 16) and arr.dtype.itemsize * 8 <= self.bit_depth:
            return float(2**self.bit_depth - 1)
        if arr.dtype.kind == "f" and 0.0 <= float(arr.min()) and float(arr.max()) <= 1.0:
            return 1.0
        return None

    def geometry_only(self) -> Image:
        """This image without its values (a zero-memory array of its shape): a reference for writers."""
        empty = np.broadcast_to(np.zeros((), self.array.dtype), self.array.shape)
        return Image(empty, self.path, self.format, self.affine, self.header, self.bit_depth, dict(self.meta))

    @property
    def spacing(self) -> tuple[float, ...] | None:
        if self.affine is None:
            return None
        return tuple(float(s) for s in np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0)))


def suffix_of(path: str | Path) -> str:
    """Lower-case extension, treating `.nii.gz` as one suffix."""
    name = Path(path).name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else Path(name).suffix


# ---------------------------------------------------------------------------------------- colour
def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """RGB (..., 3) in [0, 255] -> YCbCr (..., 3), full-range BT.601 (the JPEG/PIL convention)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = 128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b
    cr = 128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b
    return np.stack([y, cb, cr], axis=-1)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_ycbcr`; returns float RGB, clipped to [0, 255]."""
    ycc = np.asarray(ycc, dtype=np.float64)
    y, cb, cr = ycc[..., 0], ycc[..., 1] - 128.0, ycc[..., 2] - 128.0
    r = y + 1.402 * cr
    g = y - 0.344136 * cb - 0.714136 * cr
    b = y + 1.772 * cb
    return np.clip(np.stack([r, g, b], axis=-1), 0.0, 255.0)


# ------------------------------------------------------------------------------------- intensity
def check_clip(clip_percentiles: tuple[float, float] | None) -> None:
    """UsageError unless the clip percentiles satisfy 0 <= LO < HI <= 100."""
    if clip_percentiles is None:
        return
    try:
        lo, hi = (float(v) for v in clip_percentiles)
    except (TypeError, ValueError):
        raise UsageError(f"--clip {clip_percentiles}: give two percentiles LO HI") from None
    if not (0.0 <= lo < hi <= 100.0):
        raise UsageError(f"--clip {lo:g} {hi:g}: percentiles must satisfy 0 <= LO < HI <= 100")


def normalize01(
    arr: np.ndarray, clip_percentiles: tuple[float, float] | None = None, name: str | Path | None = None
) -> np.ndarray:
    """Per-image min-max to [0, 1] (float32), optionally after clipping to percentiles (lo, hi).

    The one min-max of neurofuse: fusion inputs, training images (`data`) and BraTS brains
    (`brats.normalize_volume`) all go through it, so a constant image is treated one way everywhere: an
    InputError naming it. The maximum maps to exactly 1. Large ranges are computed in float64 (values
    beyond float32's range do not overflow); `name` names the image in errors.
    """
    check_clip(clip_percentiles)
    where = f"{name}: " if name is not None else ""
    a = np.asarray(arr)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InputError(f"{where}contains NaN/Inf values")
    lo, hi = float(a.min()), float(a.max())
    if clip_percentiles is not None:
        lo, hi = (float(v) for v in np.percentile(a, clip_percentiles))
    if hi <= lo:
        if clip_percentiles is not None:
            raise InputError(
                f"{where}--clip {clip_percentiles[0]:g} {clip_percentiles[1]:g} keeps a single value ({lo:g}): "
                "the clipped image is constant; widen the percentile range"
            )
        raise InputError(f"{where}image is constant (empty): cannot normalise")
    out = np.empty(a.shape, dtype=np.float32)
    small = max(abs(lo), abs(hi)) < 1e37
    if (a.dtype == np.float32 and small) or (a.dtype.kind in "uib" and a.dtype.itemsize <= 2):  # half the memory
        np.subtract(a, np.float32(lo), out=out, dtype=np.float32)
        np.divide(out, np.float32(hi - lo), out=out)  # (not times 1 / range: the maximum maps to exactly 1)
    else:  # float64, halved so that a range near float64's limits does not overflow
        out[...] = (a.astype(np.float64) * 0.5 - lo * 0.5) / (hi * 0.5 - lo * 0.5)
    if clip_percentiles is not None:
        np.clip(out, 0.0, 1.0, out=out)
    return out


# --------------------------------------------------------------------------------------- readers
def _drop_alpha(arr: np.ndarray, path: Path) -> np.ndarray:
    """(H, W, 2|4) gray/RGB + alpha -> (H, W) / (H, W, 3); warns if the alpha is not fully opaque."""
    alpha = arr[..., -1]
    opaque = alpha.max() if alpha.dtype.kind == "f" else np.iinfo(alpha.dtype).max if alpha.dtype.kind in "ui" else 1
    if alpha.min() < opaque:
        warnings.warn(f"{path}: alpha channel dropped (not fully opaque)", stacklevel=4)
    return arr[..., 0] if arr.shape[-1] == 2 else arr[..., :3]


def _read_tiff(path: Path) -> Image:
    """A single-plane TIFF of any sample type (uint8/16, int, float32/64; gray, RGB, +alpha), via tifffile."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, arr = series.axes, series.asarray()
    except Exception as exc:  # tifffile raises many types for damaged or foreign files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"{path}: unreadable TIFF ({msg})") from None
    if "S" in axes and axes.index("S") != len(axes) - 1:  # planar (separate) samples: move them last
        arr = np.moveaxis(arr, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    keep = [i for i, n in enumerate(arr.shape) if n != 1 or axes[i] in "YX"]
    arr, axes = arr.reshape([arr.shape[i] for i in keep]), "".join(axes[i] for i in keep)
    planes = [ax for ax in axes if ax not in "YXS"]
    if planes:
        raise InputError(
            f"{path}: TIFF holds a stack of {int(np.prod([arr.shape[axes.index(a)] for a in planes]))} planes "
            f"(axes {axes}, shape {arr.shape}); neurofuse reads single-plane 2D TIFFs (save volumes as NIfTI)"
        )
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        arr = _drop_alpha(arr, path)
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise InputError(f"{path}: expected a gray or RGB image, got TIFF samples of shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.dtype.kind == "c":
        raise InputError(f"{path}: complex-valued TIFF is not an image neurofuse can fuse")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    bits = 8 if arr.dtype == np.uint8 else 16 if arr.dtype == np.uint16 else arr.dtype.itemsize * 8
    return Image(np.ascontiguousarray(arr), path, "tiff", bit_depth=bits, meta={"axes": axes, "dtype": str(arr.dtype)})


def _read_2d(path: Path) -> Image:
    ext = suffix_of(path)
    if ext in (".tif", ".tiff"):
        img = _read_tiff(path)
        arr = img.array
        if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            img.array = np.ascontiguousarray(arr[..., 0])  # RGB that is really gray
        return img
    if ext in LOSSY_EXTS:
        warnings.warn(f"{path}: JPEG is lossy; fusion metrics on it are biased by compression", stacklevel=3)
    try:
        with PILImage.open(path) as pil:
            pil.load()
            mode = pil.mode
            meta = {"mode": mode}
            if mode == "P":  # palette: keep colour only if the palette has any
                pil = pil.convert("RGBA" if "transparency" in pil.info else "RGB")
                mode = pil.mode
            if mode in ("RGBA", "LA"):
                alpha = np.asarray(pil.getchannel("A"))
                if alpha.min() < 255:
                    warnings.warn(f"{path}: alpha channel dropped (not fully opaque)", stacklevel=3)
                pil = pil.convert("RGB" if mode == "RGBA" else "L")
                mode = pil.mode
            if mode in ("CMYK", "YCbCr", "HSV", "LAB"):
                pil = pil.convert("RGB")
                mode = "RGB"
            if mode == "1":
                pil = pil.convert("L")
                mode = "L"
            arr = np.asarray(pil)
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: unreadable image ({exc})") from None
    if mode.startswith("I;16") or arr.dtype == np.uint16:
        bit_depth = 16
    elif mode in ("I", "F") or arr.dtype.kind == "f" or arr.dtype.itemsize > 2:
        bit_depth = 32
    else:
        bit_depth = 8
    if arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
        arr = arr[..., 0]  # RGB that is really gray
    fmt = {"png": "png", "tif": "tiff", "tiff": "tiff", "bmp": "bmp", "jpg": "jpeg", "jpeg": "jpeg"}[ext[1:]]
    return Image(np.ascontiguousarray(arr), path, fmt, bit_depth=bit_depth, meta=meta)


def _squeeze_volume(arr: np.ndarray, path: Path) -> np.ndarray:
    while arr.ndim > 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 3:
        raise InputError(f"{path}: expected a 3D volume, got {arr.ndim}D data of shape {arr.shape}")
    return arr


def _read_nifti(path: Path) -> Image:
    """The stored values with the header's scl_slope/scl_inter applied, once: by nibabel's array proxy
    (`np.asarray(img.dataobj)`, which leaves unscaled integers in their own type), after which
    `img.header.get_slope_inter()` is (None, None)."""
    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel/gzip/zlib raise many types for truncated files
        raise InputError(f"{path}: unreadable NIfTI ({type(exc).__name__}: {exc})") from None
    arr = _squeeze_volume(arr, path)
    return Image(
        arr, path, "nifti", affine=img.affine.copy(), header=img.header.copy(), bit_depth=arr.dtype.itemsize * 8
    )


_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def _sitk_affine(img) -> np.ndarray:
    """SimpleITK geometry (LPS, index (x,y,z)) -> 4x4 voxel-to-RAS affine for (i,j,k) = (x,y,z)."""
    direction = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(img.GetSpacing())
    aff[:3, 3] = _LPS_TO_RAS @ np.asarray(img.GetOrigin(), dtype=np.float64)
    return aff


def _check_slice_positions(path: Path, files: list[str]) -> None:
    """InputError unless the series' slices are evenly spaced along their normal (no slice missing/duplicated).

    The series reader would otherwise assume one spacing and stretch or misplace the later slices.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    pos, normal = [], None
    for f in files:
        reader.SetFileName(f)
        reader.ReadImageInformation()
        if not reader.HasMetaDataKey("0020|0032"):
            return  # no positions (e.g. secondary capture): nothing to check against
        pos.append([float(v) for v in reader.GetMetaData("0020|0032").split("\\")])
        if normal is None and reader.HasMetaDataKey("0020|0037"):
            iop = [float(v) for v in reader.GetMetaData("0020|0037").split("\\")]
            normal = np.cross(iop[:3], iop[3:6])
    if len(pos) < 3:
        return
    if normal is None or not np.linalg.norm(normal):
        normal = np.asarray(pos[-1]) - np.asarray(pos[0])
    d = np.sort(np.asarray(pos) @ (np.asarray(normal) / np.linalg.norm(normal)))
    gaps = np.diff(d)
    step = float(np.median(gaps))
    bad = np.flatnonzero(np.abs(gaps - step) > max(1e-3, 0.01 * abs(step)))
    if step <= 0 or len(bad):
        k = int(bad[0]) if len(bad) else 0
        raise InputError(
            f"{path}: DICOM slices are unevenly spaced ({gaps[k]:.4g} mm between slices {k + 1} and {k + 2} of "
            f"{len(d)}, {step:.4g} mm elsewhere): a slice is missing or duplicated; export a complete series"
        )


def _read_dicom_dir(path: Path) -> Image:
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise InputError(f"{path}: folder holds no DICOM series")
    if len(series) > 1:
        raise InputError(f"{path}: folder holds {len(series)} DICOM series; put one series per folder")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
    warn = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)  # ITK's multi-line warnings: we check and say it ourselves
    try:
        _check_slice_positions(path, files)
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: unreadable DICOM series ({str(exc).strip().splitlines()[0]})") from None
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warn)
    arr = sitk.GetArrayFromImage(img)  # (z, y, x) or (z, y, x, c)
    if arr.ndim != 3:
        raise InputError(f"{path}: expected a scalar 3D DICOM series, got array of shape {arr.shape}")
    arr = np.ascontiguousarray(arr.transpose(2, 1, 0))
    return Image(
        arr,
        path,
        "dicom",
        affine=_sitk_affine(img),
        bit_depth=arr.dtype.itemsize * 8,
        meta={"series_uid": series[0], "n_files": len(files)},
    )


def read_image(path: str | Path) -> Image:
    """Read a 2D image, a NIfTI volume or a DICOM series folder; errors name the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        img = _read_dicom_dir(path)
    else:
        ext = suffix_of(path)
        if ext in IMAGE_2D_EXTS:
            img = _read_2d(path)
        elif ext in NIFTI_EXTS:
            img = _read_nifti(path)
        elif ext in (".dcm", ""):
            img = _read_dicom_dir(path.parent)
        else:
            raise InputError(
                f"{path}: unsupported extension {ext!r} (use PNG/TIFF/BMP/JPEG, NIfTI .nii/.nii.gz or a DICOM folder)"
            )
    check_finite_nonconstant(img.array, path)
    return img


def check_finite_nonconstant(arr: np.ndarray, path: str | Path) -> None:
    """InputError if the array has NaN/Inf or is empty/constant."""
    if arr.size == 0:
        raise InputError(f"{path}: image is empty (shape {arr.shape})")
    if arr.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise InputError(f"{path}: contains {bad} NaN/Inf values")
    if arr.min() == arr.max():
        raise InputError(f"{path}: image is constant (every value is {arr.flat[0]})")


def rgb255(img: Image) -> np.ndarray:
    """A colour image's RGB as float64 on the [0, 255] scale (by its full scale, else by its maximum)."""
    peak = img.full_scale or max(float(img.array.max()), 1e-30)
    return img.array.astype(np.float64) * (255.0 / peak)


def luma(img: Image) -> np.ndarray:
    """Gray values in native units, or the Y channel of a colour image on the [0, 255] scale, as float32
    (float64 gray stays float64: its values may lie beyond float32's range)."""
    if img.is_color:
        return rgb_to_ycbcr(rgb255(img))[..., 0].astype(np.float32)
    return img.array if img.array.dtype == np.float64 else img.array.astype(np.float32, copy=False)


def unit_luma(img: Image) -> np.ndarray:
    """Gray/Y of a 2D image as float64 in [0, 1]: by its full scale (8/16-bit integers, floats already in
    [0, 1]), else per-image min-max (float images in other units, other integer types)."""
    if img.is_color:
        return luma(img).astype(np.float64) / 255.0
    if img.full_scale is not None:
        return img.array.astype(np.float64) / img.full_scale
    return normalize01(img.array, name=img.path).astype(np.float64)


def read_luma(path: str | Path) -> np.ndarray:
    """Read an image and return its gray/Y values as float32 in native units."""
    return luma(read_image(path))


# ---------------------------------------------------------------------------------------- geometry
def check_geometry(a: Image, b: Image, hint: str = "use `resample=True`") -> None:
    """InputError naming both files unless a and b share dimensionality, shape and (3D) grid."""
    names = f"{a.path} and {b.path}"
    if a.spatial_dims != b.spatial_dims:
        raise InputError(f"{names}: cannot fuse a {a.spatial_dims}D image with a {b.spatial_dims}D one")
    if a.spatial_shape != b.spatial_shape:
        raise InputError(f"{names}: shape mismatch {a.spatial_shape} vs {b.spatial_shape} ({hint})")
    if a.affine is not None and b.affine is not None:
        diff = float(np.abs(a.affine - b.affine).max())
        if diff > AFFINE_TOL:
            raise InputError(
                f"{names}: voxel grids differ (affine max difference {diff:.4g} mm; spacing "
                f"{_fmt(a.spacing)} vs {_fmt(b.spacing)}) ({hint})"
            )


def _fmt(sp: tuple[float, ...] | None) -> str:
    return "?" if sp is None else "x".join(f"{s:.3g}" for s in sp)


def resample_to(moving: Image, reference: Image) -> Image:
    """Resample `moving` onto `reference`'s grid with linear interpolation.

    3D: through the two affines (nibabel.processing, world coordinates). 2D images carry no
    geometry, so the image is resized to the reference's shape.
    """
    if moving.spatial_dims != reference.spatial_dims:
        raise InputError(
            f"{reference.path} and {moving.path}: cannot resample a {moving.spatial_dims}D image "
            f"onto a {reference.spatial_dims}D grid"
        )
    if moving.spatial_dims == 3:
        from nibabel.processing import resample_from_to

        src = nib.Nifti1Image(moving.array.astype(np.float32), moving.affine)
        out = resample_from_to(src, (reference.spatial_shape, reference.affine), order=1, mode="constant", cval=0.0)
        arr = np.asarray(out.dataobj, dtype=np.float32)
        return Image(
            arr,
            moving.path,
            moving.format,
            reference.affine.copy(),
            moving.header,
            moving.bit_depth,
            {**moving.meta, "resampled": True},
        )
    from skimage.transform import resize

    shape = reference.spatial_shape + moving.array.shape[2:]
    arr = resize(moving.array.astype(np.float32), shape, order=1, preserve_range=True, anti_aliasing=True)
    return Image(
        arr.astype(np.float32),
        moving.path,
        moving.format,
        None,
        None,
        moving.bit_depth,
        {**moving.meta, "resampled": True},
    )


def load_pair(path_a: str | Path, path_b: str | Path, resample: bool = False) -> tuple[Image, Image]:
    """Read two co-registered inputs and check (or, with `resample`, fix) that they share a grid."""
    a, b = read_image(path_a), read_image(path_b)
    try:
        check_geometry(a, b)
    except InputError:
        if not resample or a.spatial_dims != b.spatial_dims:
            raise
        b = resample_to(b, a)
        if np.ptp(b.array) == 0:
            value = float(b.array.flat[0])
            raise InputError(f"{b.path}: resampled onto the grid of {a.path} it is constant ({value:g}): the two "
                             "fields of view do not overlap") from None
    return a, b


_NUM = re.compile(r"(\d+)")


def natural_key(name: str) -> list:
    """Sort key that orders `2.png` before `10.png`."""
    return [int(t) if t.isdigit() else t.lower() for t in _NUM.split(name)]


def list_images(folder: str | Path) -> list[Path]:
    """Supported image/volume files in a folder, in natural order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    exts = IMAGE_2D_EXTS + NIFTI_EXTS
    return sorted(
        (p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and suffix_of(p) in exts),
        key=lambda p: natural_key(p.name),
    )


def pair_files(dir_a: str | Path, dir_b: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, path_a, path_b) for every file name present in both folders (the Harvard layout)."""
    in_b = {p.name: p for p in list_images(dir_b)}
    return [(p.name, p, in_b[p.name]) for p in list_images(dir_a) if p.name in in_b]


# ---------------------------------------------------------------------------------------- writers
# Writes go to a hidden `.NAME.partial-XXXXXXXX.EXT` beside the output, then are renamed onto it. The
# writer holds an flock on its partial file, so a partial whose lock can be taken belongs to a process
# that died (kill -9, power loss) and is removed by the next write into that folder.
_PARTIAL = ".partial-"
_WRITE_ERRNOS = {errno.ENOSPC, errno.EACCES, errno.EPERM, errno.EROFS, errno.EDQUOT, errno.EFBIG, errno.EIO}


def _try_lock(fd: int) -> bool:
    """Take an exclusive flock without waiting; True if taken (always True where flock does not exist)."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False


def partial_files(folder: str | Path, name: str | None = None) -> list[Path]:
    """Hidden partial files in `folder` (of output `name` only, if given)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stem = None if name is None else name[: len(name) - len(suffix_of(name))]
    out = []
    for p in folder.iterdir():
        if p.name.startswith(".") and _PARTIAL in p.name and (stem is None or p.name.startswith(f".{stem}{_PARTIAL}")):
            out.append(p)
    return out


def remove_stale_partials(folder: str | Path, name: str | None = None) -> int:
    """Delete partial files left by writers that died (their lock is free); returns how many."""
    removed = 0
    for p in partial_files(folder, name):
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        try:
            if _try_lock(fd) and fcntl is not None:
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed += 1
        finally:
            os.close(fd)
    return removed


def check_writable(path: str | Path, overwrite: bool = True) -> Path:
    """UsageError now, before any work, if `path` cannot be written as a file."""
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        what = "is not a folder" if parent.exists() else "does not exist"
        raise UsageError(f"{path}: output folder {parent} {what}")
    if path.is_dir():
        raise UsageError(f"{path}: output is a folder; give a file name")
    if path.exists() and not overwrite:
        raise UsageError(f"{path}: output exists (use `overwrite=True` to replace it)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{path}: output folder {parent} is not writable")
    return path


def check_output_folder(folder: str | Path, create: bool = True) -> Path:
    """UsageError if `folder` is a file or cannot be created/written; creates it when asked."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: output folder is a file")
    if not folder.exists():
        base = next((p for p in folder.parents if p.exists()), Path("."))
        if not base.is_dir():
            raise UsageError(f"{folder}: cannot create the output folder ({base} is a file)")
        if not os.access(base, os.W_OK | os.X_OK):
            raise UsageError(f"{folder}: cannot create the output folder ({base} is not writable)")
        if not create:
            return folder
        folder.mkdir(parents=True, exist_ok=True)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UsageError(f"{folder}: output folder is not writable")
    return folder


def _commit(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename `tmp` onto `path`; without `overwrite` atomically refuse a file that appeared meanwhile."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if `path` exists, even one created a moment ago by another process
    except FileExistsError:
        raise UsageError(f"{path}: output exists (created while this one was written; use `overwrite=True`)") from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise UsageError(f"{path}: output exists (use `overwrite=True` to replace it)") from None
        os.replace(tmp, path)
        return
    tmp.unlink()


@contextlib.contextmanager
def atomic_write_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it.

    Checks up front that `path` can be written (folder exists and is writable, `path` is not a folder,
    exists only with `overwrite`); errors name `path`, never the temporary file.
    """
    path = check_writable(path, overwrite)
    remove_stale_partials(path.parent, path.name)
    ext = suffix_of(path)
    tmp = path.with_name(f".{path.name[: len(path.name) - len(ext)]}{_PARTIAL}{uuid.uuid4().hex[:8]}{ext}")
    # The try starts before the file exists, so a signal just after its creation (SIGTERM unwinds) removes it.
    ours, fd = True, None
    try:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            ours = False  # not created by us
            raise UsageError(f"{path}: cannot write in {path.parent} ({exc.strerror})") from None
        _try_lock(fd)
        yield tmp
        _commit(tmp, path, overwrite)
    except OSError as exc:
        if exc.errno not in _WRITE_ERRNOS:
            raise
        raise InputError(f"{path}: cannot write ({exc.strerror})") from None
    finally:
        if ours:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if fd is not None:
            os.close(fd)


@contextlib.contextmanager
def claim_output(path: str | Path) -> Iterator[bool]:
    """Claim the right to produce `path` among processes writing into one folder (e.g. two `fuse-dir`).

    Yields True if this process holds the claim (a hidden `.NAME.lock` beside `path`, flock-ed; freed by
    the kernel if the process dies), False if another live process holds it.
    """
    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    if fcntl is None:
        yield True
        return
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise UsageError(f"{path}: cannot write in {path.parent} ({exc.strerror})") from None
        if not _try_lock(fd):
            os.close(fd)
            yield False
            return
        try:  # the lock file we locked may have been removed by its last holder: retry on the new one
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


def remove_stale_locks(folder: str | Path) -> int:
    """Delete `.NAME.lock` claim files that no live process holds; returns how many."""
    folder, removed = Path(folder), 0
    if fcntl is None or not folder.is_dir():
        return 0
    for p in folder.glob(".*.lock"):
        try:
            fd = os.open(p, os.O_RDWR)
        except OSError:
            continue
        try:
            if _try_lock(fd) and os.fstat(fd).st_ino == os.stat(p).st_ino:
                p.unlink()
                removed += 1
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return removed


def _to_uint(arr01: np.ndarray, bits: int) -> np.ndarray:
    peak = 2**bits - 1
    return np.round(np.clip(arr01, 0.0, 1.0) * peak).astype(np.uint8 if bits == 8 else np.uint16)


def write_image(
    path: str | Path,
    array: np.ndarray,
    reference: Image | None = None,
    bit_depth: int = 8,
    dtype: str = "float32",
    overwrite: bool = False,
) -> Path:
    """Write an array in [0, 1] (2D gray/RGB or 3D) atomically, in the format of `path`'s extension.

    2D: 8-bit by default, 16-bit gray on request (PNG/TIFF). RGB input must be (H, W, 3).
    3D (NIfTI): written with the reference's affine, qform/sform codes, zooms and units; `dtype`
    float32 (values in [0, 1]), or uint8/int16/uint16 (scaled to the type's positive range).
    """
    path = Path(path)
    ext = suffix_of(path)
    arr = np.asarray(array)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ResultError(f"{path}: not written: the array to write holds {bad} NaN/Inf values")
    with atomic_write_path(path, overwrite=overwrite) as tmp:
        if ext in IMAGE_2D_EXTS:
            if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
                raise UsageError(f"{path}: a 2D image format cannot hold an array of shape {arr.shape}")
            if ext in LOSSY_EXTS:
                warnings.warn(f"{path}: writing lossy JPEG", stacklevel=2)
            if bit_depth not in (8, 16):
                raise UsageError(f"{path}: bit depth must be 8 or 16, got {bit_depth}")
            if bit_depth == 16 and (arr.ndim == 3 or ext not in (".png", ".tif", ".tiff")):
                raise UsageError(f"{path}: 16-bit output is supported for gray PNG/TIFF only")
            PILImage.fromarray(_to_uint(arr, bit_depth)).save(tmp)
        elif ext in NIFTI_EXTS:
            if arr.ndim != 3:
                raise UsageError(f"{path}: NIfTI output needs a 3D array, got shape {arr.shape}")
            _write_nifti(tmp, arr, reference, dtype)
        else:
            raise UsageError(f"{path}: unsupported output extension {ext!r}")
    return path


_NIFTI_DTYPES = {"float32": np.float32, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16}


def _write_nifti(path: Path, arr01: np.ndarray, reference: Image | None, dtype: str) -> None:
    if dtype not in _NIFTI_DTYPES:
        raise UsageError(f"{path}: unsupported NIfTI dtype {dtype!r}; use {', '.join(_NIFTI_DTYPES)}")
    np_dtype = _NIFTI_DTYPES[dtype]
    data = np.clip(arr01, 0, 1, dtype=np.float32)  # one copy at most
    if np_dtype is not np.float32:
        data *= np.iinfo(np_dtype).max
        data = np.round(data, out=data).astype(np_dtype)
    affine = reference.affine if reference is not None and reference.affine is not None else np.eye(4)
    if reference is not None and reference.spatial_shape != data.shape:
        raise UsageError(f"{path}: array shape {data.shape} does not match reference {reference.spatial_shape}")
    if reference is not None and isinstance(reference.header, nib.Nifti1Header):
        hdr = reference.header.copy()
        img = nib.Nifti1Image(data, affine, header=hdr)
        img.set_qform(hdr.get_qform(), code=int(hdr["qform_code"]))
        img.set_sform(hdr.get_sform(), code=int(hdr["sform_code"]))
        img.header.set_xyzt_units(*hdr.get_xyzt_units())
    else:  # DICOM or no reference: scanner-anchored affine, mm units
        img = nib.Nifti1Image(data, affine)
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
    img.header.set_data_dtype(np_dtype)
    img.header.set_slope_inter(1.0, 0.0)
    nib.save(img, str(path))


def write_volume_like(path: str | Path, image: Image, overwrite: bool = False) -> Path:
    """Write an Image's native values as NIfTI with its geometry (e.g. DICOM series -> NIfTI)."""
    path = Path(path)
    if suffix_of(path) not in NIFTI_EXTS:
        raise UsageError(f"{path}: volumes are written as NIfTI (.nii or .nii.gz)")
    with atomic_write_path(path, overwrite=overwrite) as tmp:
        img = nib.Nifti1Image(np.asarray(image.array), image.affine)
        img.set_qform(image.affine, code=1)
        img.set_sform(image.affine, code=1)
        img.header.set_xyzt_units("mm", "sec")
        nib.save(img, str(tmp))
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 text atomically (tables, configs, reports)."""
    with atomic_write_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_csv(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """Write dict rows as CSV atomically; columns default to every key in first-seen order."""
    import csv

    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    with atomic_write_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)
