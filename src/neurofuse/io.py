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

from neurofuse.errors import InputError, UsageError

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
def normalize01(arr: np.ndarray, clip_percentiles: tuple[float, float] | None = None) -> np.ndarray:
    """Per-image min-max to [0, 1] (float32), optionally after clipping to percentiles (lo, hi)."""
    a = np.asarray(arr, dtype=np.float32)
    if clip_percentiles is not None:
        lo, hi = np.percentile(a, clip_percentiles)
        a = np.clip(a, lo, hi)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        raise InputError("image is constant (empty): cannot normalise")
    return (a - lo) / (hi - lo)


# --------------------------------------------------------------------------------------- readers
def _read_2d(path: Path) -> Image:
    ext = suffix_of(path)
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
    try:
        img = nib.load(str(path))
        arr = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel/gzip/zlib raise many types for truncated files
        raise InputError(f"{path}: unreadable NIfTI ({type(exc).__name__}: {exc})") from None
    arr = _squeeze_volume(arr, path)
    slope, inter = img.header.get_slope_inter()
    if slope not in (None, 1.0) or inter not in (None, 0.0):
        arr = arr * (1.0 if slope is None else slope) + (0.0 if inter is None else inter)
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


def _read_dicom_dir(path: Path) -> Image:
    import SimpleITK as sitk

    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if not series:
        raise InputError(f"{path}: folder holds no DICOM series")
    if len(series) > 1:
        raise InputError(f"{path}: folder holds {len(series)} DICOM series; put one series per folder")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0])
    try:
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(files)
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: unreadable DICOM series ({str(exc).splitlines()[0]})") from None
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


def luma(img: Image) -> np.ndarray:
    """Gray values, or the Y channel of a colour image, as float32 in native units."""
    if img.is_color:
        return rgb_to_ycbcr(img.array.astype(np.float64) * (255.0 / (2**img.bit_depth - 1)))[..., 0].astype(np.float32)
    return img.array.astype(np.float32)


def read_luma(path: str | Path) -> np.ndarray:
    """Read an image and return its gray/Y values as float32 in native units."""
    return luma(read_image(path))


# ---------------------------------------------------------------------------------------- geometry
def check_geometry(a: Image, b: Image) -> None:
    """InputError naming both files unless a and b share dimensionality, shape and (3D) grid."""
    names = f"{a.path} and {b.path}"
    if a.spatial_dims != b.spatial_dims:
        raise InputError(f"{names}: cannot fuse a {a.spatial_dims}D image with a {b.spatial_dims}D one")
    if a.spatial_shape != b.spatial_shape:
        raise InputError(f"{names}: shape mismatch {a.spatial_shape} vs {b.spatial_shape} (use --resample)")
    if a.affine is not None and b.affine is not None:
        diff = float(np.abs(a.affine - b.affine).max())
        if diff > AFFINE_TOL:
            raise InputError(
                f"{names}: voxel grids differ (affine max difference {diff:.4g} mm; spacing "
                f"{_fmt(a.spacing)} vs {_fmt(b.spacing)}) (use --resample)"
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
        check_finite_nonconstant(b.array, b.path)
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
        (p for p in folder.iterdir() if p.is_file() and suffix_of(p) in exts), key=lambda p: natural_key(p.name)
    )


def pair_files(dir_a: str | Path, dir_b: str | Path) -> list[tuple[str, Path, Path]]:
    """(name, path_a, path_b) for every file name present in both folders (the Harvard layout)."""
    in_b = {p.name: p for p in list_images(dir_b)}
    return [(p.name, p, in_b[p.name]) for p in list_images(dir_a) if p.name in in_b]


# ---------------------------------------------------------------------------------------- writers
@contextlib.contextmanager
def atomic_write_path(path: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it onto `path`, else delete it."""
    path = Path(path)
    if not path.parent.is_dir():
        raise UsageError(f"{path}: output folder {path.parent} does not exist")
    if path.exists() and not overwrite:
        raise UsageError(f"{path}: output exists (use --overwrite to replace it)")
    ext = suffix_of(path)
    tmp = path.with_name(f".{path.name[: len(path.name) - len(ext)]}.partial-{uuid.uuid4().hex[:8]}{ext}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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
    if np_dtype is np.float32:
        data = np.clip(arr01, 0, 1).astype(np.float32)
    else:
        data = np.round(np.clip(arr01, 0, 1) * np.iinfo(np_dtype).max).astype(np_dtype)
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
