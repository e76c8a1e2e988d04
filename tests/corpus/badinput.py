"""A corpus of bad and awkward inputs for the command line, written into a folder on demand.

Each case is a function `(folder) -> Case` that writes its files into `folder` and says how the CLI
must answer: the exit code, words the one-line error must hold (the first names the file at fault),
and, for runs that succeed, a check of what they wrote. `tests/corpus/test_corpus.py` runs every case;
`python tests/corpus/badinput.py DIR` writes them all into DIR/<case>/ for trying by hand.

Nothing here needs ../shared/data or a GPU: the images are a few kilobytes, generated from seeds.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image as PILImage

AFFINE = np.array([[1.2, 0, 0, -10], [0, 1.0, 0, 5], [0, 0, 2.0, 3], [0, 0, 0, 1]])
SHAPE3 = (12, 10, 8)


@dataclass
class Case:
    """How the CLI must answer `args`: exit code, words of the error line, files it may create."""

    args: list
    code: int
    needles: tuple = ()
    may_create: tuple = ()  # glob patterns (relative to the case folder) of files the run may write
    check: Callable[[Path, str], None] | None = None  # (folder, stdout) -> asserts, for exit code 0
    skip: str | None = None


CASES: dict[str, Callable[[Path], Case]] = {}


def case(fn: Callable[[Path], Case]) -> Callable[[Path], Case]:
    CASES[fn.__name__] = fn
    return fn


# ------------------------------------------------------------------------------------------ inputs
def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def png(path: Path, arr: np.ndarray) -> Path:
    PILImage.fromarray(arr).save(path)
    return path


def gray8(d: Path, name: str = "a.png", seed: int = 0, size=(32, 32)) -> Path:
    return png(d / name, rng(seed).integers(0, 256, size, dtype=np.uint8))


def rgb8(d: Path, name: str = "b.png", seed: int = 1, size=(32, 32)) -> Path:
    return png(d / name, rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def pair2d(d: Path) -> tuple[Path, Path]:
    return gray8(d), rgb8(d)


def nifti(path: Path, arr: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


def vol(seed: int = 0, shape=SHAPE3) -> np.ndarray:
    return rng(seed).random(shape).astype(np.float32)


def pair3d(d: Path) -> tuple[Path, Path]:
    return nifti(d / "t2.nii.gz", vol(0)), nifti(d / "flair.nii.gz", vol(1))


def tiff(path: Path, arr: np.ndarray, **kw) -> Path:
    import tifffile

    tifffile.imwrite(path, arr, **kw)
    return path


def truncated(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: max(1, int(len(data) * keep))])
    return dst


def dicom_series(folder: Path, arr_zyx: np.ndarray, spacing=(0.8, 0.7, 2.5), origin=(-10.0, 20.0, 5.0),
                 skip: int | None = None) -> Path:
    """A DICOM series from a (z, y, x) array, one file per slice (slice `skip` left out, if given)."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    img = sitk.GetImageFromArray(arr_zyx)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(arr_zyx.shape[0]):
        if k == skip:
            continue
        sl = img[:, :, k]
        tags = {
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.2",
            "0008|0060": "MR",
            "0020|0032": "\\".join(str(v) for v in img.TransformIndexToPhysicalPoint((0, 0, k))),
            "0020|0013": str(k + 1),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(spacing[2]),
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{k:03d}.dcm"))
        writer.Execute(sl)
    return folder


def harvard(d: Path, n: int = 4, size: int = 32) -> Path:
    """A Harvard-layout pair folder: MRI/ (gray), SPECT/ (colour), split.csv (ids 0..n-1, half val)."""
    root = d / "pairs"
    (root / "MRI").mkdir(parents=True)
    (root / "SPECT").mkdir()
    for i in range(n):
        gray8(root / "MRI", f"{i}.png", seed=i, size=(size, size))
        rgb8(root / "SPECT", f"{i}.png", seed=100 + i, size=(size, size))
    lines = ["id,case,split"] + [f"{i},{i},{'val' if i % 2 else 'train'}" for i in range(n)]
    (root / "split.csv").write_text("\n".join(lines) + "\n")
    return root


def weights(d: Path, name: str, fill: float | None = None, model: str = "lagn_small") -> Path:
    """A safetensors state dict of `model` (random init, or every float set to `fill`)."""
    import torch
    from safetensors.torch import save_file

    from neurofuse.models.registry import create_model

    torch.manual_seed(0)
    state = {k: v.detach().clone().contiguous() for k, v in create_model(model).state_dict().items()}
    if fill is not None:
        state = {k: v.fill_(fill) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(d / name))
    return d / name


def fuse(a, b, out, *extra) -> list:
    return ["fuse", a, b, "-o", out, *extra]


def opens(path: Path):
    from neurofuse.io import read_image

    return read_image(path)


# ----------------------------------------------------------------------------- unreadable inputs
@case
def truncated_png(d):
    a, b = pair2d(d)
    return Case(fuse(truncated(a, d / "cut.png", 0.3), b, d / "f.png"), 1, ("cut.png", "unreadable"))


@case
def empty_png(d):
    _, b = pair2d(d)
    (d / "empty.png").write_bytes(b"")
    return Case(fuse(d / "empty.png", b, d / "f.png"), 1, ("empty.png", "unreadable"))


@case
def text_named_png(d):
    _, b = pair2d(d)
    (d / "notes.png").write_text("this is not an image\n")
    return Case(fuse(d / "notes.png", b, d / "f.png"), 1, ("notes.png", "unreadable"))


@case
def unsupported_extension(d):
    _, b = pair2d(d)
    (d / "scan.txt").write_text("hello")
    return Case(fuse(d / "scan.txt", b, d / "f.png"), 1, ("scan.txt", "unsupported extension"))


@case
def missing_input(d):
    _, b = pair2d(d)
    return Case(fuse(d / "nope.png", b, d / "f.png"), 1, ("nope.png", "no such file"))


@case
def truncated_nifti_gz(d):
    t2, _ = pair3d(d)
    return Case(fuse(truncated(t2, d / "cut.nii.gz", 0.5), t2, d / "f.nii.gz"), 1, ("cut.nii.gz", "unreadable"))


@case
def gzip_of_garbage_nifti(d):
    t2, _ = pair3d(d)
    (d / "junk.nii.gz").write_bytes(gzip.compress(b"\x00" * 400))
    return Case(fuse(d / "junk.nii.gz", t2, d / "f.nii.gz"), 1, ("junk.nii.gz", "unreadable"))


@case
def empty_nifti(d):
    t2, _ = pair3d(d)
    (d / "empty.nii").write_bytes(b"")
    return Case(fuse(t2, d / "empty.nii", d / "f.nii.gz"), 1, ("empty.nii", "unreadable"))


@case
def garbage_tiff(d):
    a, _ = pair2d(d)
    (d / "junk.tif").write_bytes(b"II*\x00" + b"\xff" * 64)
    return Case(fuse(a, d / "junk.tif", d / "f.png"), 1, ("junk.tif", "unreadable TIFF"))


@case
def truncated_tiff(d):
    a, _ = pair2d(d)
    src = tiff(d / "full.tif", rng(3).random((32, 32)).astype(np.float32))
    return Case(fuse(a, truncated(src, d / "cut.tif", 0.4), d / "f.png"), 1, ("cut.tif", "unreadable TIFF"))


@case
def multi_plane_tiff(d):
    a, _ = pair2d(d)
    stack = tiff(d / "stack.tif", rng(3).integers(0, 255, (5, 32, 32), dtype=np.uint8))
    return Case(fuse(a, stack, d / "f.png"), 1, ("stack.tif", "5 planes"))


@case
def volume_4d(d):
    t2, _ = pair3d(d)
    nifti(d / "v4.nii", rng(2).random((*SHAPE3, 3)).astype(np.float32))
    return Case(fuse(d / "v4.nii", t2, d / "f.nii.gz"), 1, ("v4.nii", "4D"))


@case
def nifti_2d(d):
    t2, _ = pair3d(d)
    nifti(d / "flat.nii", rng(2).random((12, 10)).astype(np.float32))
    return Case(fuse(t2, d / "flat.nii", d / "f.nii.gz"), 1, ("flat.nii", "2D"))


@case
def empty_dicom_folder(d):
    t2, _ = pair3d(d)
    (d / "series").mkdir()
    (d / "series" / "readme.txt").write_text("no dicom here")
    return Case(fuse(t2, d / "series", d / "f.nii.gz"), 1, ("series", "no DICOM series"))


@case
def dicom_missing_slice(d):
    series = dicom_series(d / "dcm", (rng(4).random((6, 10, 12)) * 1000).astype(np.int16), skip=3)
    t2, _ = pair3d(d)
    return Case(fuse(t2, series, d / "f.nii.gz"), 1, ("dcm", "unevenly spaced"))


@case
def dicom_missing_slice_with_resample(d):
    series = dicom_series(d / "dcm", (rng(4).random((6, 10, 12)) * 1000).astype(np.int16), skip=3)
    t2, _ = pair3d(d)
    return Case(fuse(t2, series, d / "f.nii.gz", "--resample"), 1, ("dcm", "a slice is missing"))


# ------------------------------------------------------------------------------ bad intensities
@case
def nan_in_volume(d):
    t2, _ = pair3d(d)
    v = vol(2)
    v[1, 2, 3] = np.nan
    return Case(fuse(t2, nifti(d / "nan.nii.gz", v), d / "f.nii.gz"), 1, ("nan.nii.gz", "NaN"))


@case
def inf_in_float_tiff(d):
    a, _ = pair2d(d)
    img = rng(2).random((32, 32)).astype(np.float32)
    img[0, 0] = np.inf
    return Case(fuse(a, tiff(d / "inf.tif", img), d / "f.png"), 1, ("inf.tif", "NaN/Inf"))


@case
def constant_png(d):
    a, _ = pair2d(d)
    return Case(fuse(a, png(d / "flat.png", np.full((32, 32), 7, np.uint8)), d / "f.png"), 1, ("flat.png", "constant"))


@case
def constant_volume(d):
    t2, _ = pair3d(d)
    flat = nifti(d / "zeros.nii.gz", np.zeros(SHAPE3, np.float32))
    return Case(fuse(t2, flat, d / "f.nii.gz"), 1, ("zeros.nii.gz", "constant"))


@case
def clip_leaves_constant_image(d):
    a, _ = pair2d(d)
    sparse = np.zeros((32, 32), np.uint8)
    sparse[:4, :4] = 200  # 98% zeros: percentiles 0..50 are all 0
    return Case(fuse(a, png(d / "sparse.png", sparse), d / "f.png", "--clip", "0", "50"), 1,
                ("sparse.png", "--clip 0 50", "constant"))


# ------------------------------------------------------------------------------ geometry
@case
def shape_mismatch_2d(d):
    a, _ = pair2d(d)
    small = gray8(d, "small.png", size=(16, 16))
    return Case(fuse(a, small, d / "f.png"), 1, ("a.png", "small.png", "shape mismatch", "--resample"))


@case
def grid_mismatch_3d(d):
    t2, _ = pair3d(d)
    shifted = AFFINE.copy()
    shifted[0, 3] += 3.0
    other = nifti(d / "moved.nii.gz", vol(1), shifted)
    return Case(fuse(t2, other, d / "f.nii.gz"), 1, ("t2.nii.gz", "moved.nii.gz", "voxel grids differ"))


@case
def image_with_volume(d):
    a, _ = pair2d(d)
    t2, _ = pair3d(d)
    return Case(fuse(a, t2, d / "f.png"), 1, ("a.png", "t2.nii.gz", "2D"))


@case
def image_with_volume_resample(d):
    a, _ = pair2d(d)
    t2, _ = pair3d(d)
    return Case(fuse(a, t2, d / "f.png", "--resample"), 1, ("a.png", "t2.nii.gz", "2D"))


# ------------------------------------------------------------------------------ outputs
@case
def output_exists(d):
    a, b = pair2d(d)
    (d / "f.png").write_bytes(b"precious")
    return Case(fuse(a, b, d / "f.png"), 2, ("f.png", "--overwrite"))


@case
def output_is_input_a(d):
    a, b = pair2d(d)
    return Case(fuse(a, b, a, "--overwrite"), 2, ("a.png", "output is the input"))


@case
def output_is_input_b(d):
    a, b = pair2d(d)
    return Case(fuse(a, b, b, "--overwrite"), 2, ("b.png", "output is the input"))


@case
def output_is_input_other_spelling(d):
    a, b = pair2d(d)
    (d / "sub").mkdir()
    return Case(fuse(a, b, d / "sub" / ".." / "a.png", "--overwrite"), 2, ("a.png", "output is the input"))


@case
def output_is_input_hard_link(d):
    a, b = pair2d(d)
    os.link(a, d / "alias.png")
    return Case(fuse(a, b, d / "alias.png", "--overwrite"), 2, ("alias.png", "output is the input"))


@case
def output_is_input_volume(d):
    t2, flair = pair3d(d)
    return Case(fuse(t2, flair, flair, "--overwrite"), 2, ("flair.nii.gz", "output is the input"))


@case
def output_is_a_folder(d):
    a, b = pair2d(d)
    (d / "out.png").mkdir()
    return Case(fuse(a, b, d / "out.png", "--overwrite"), 2, ("out.png", "is a folder"))


@case
def output_folder_missing(d):
    a, b = pair2d(d)
    return Case(fuse(a, b, d / "nowhere" / "f.png"), 2, ("f.png", "does not exist"))


@case
def output_folder_is_a_file(d):
    a, b = pair2d(d)
    (d / "plain").write_text("a file")
    return Case(fuse(a, b, d / "plain" / "f.png"), 2, ("f.png", "is not a folder"))


@case
def output_folder_read_only(d):
    a, b = pair2d(d)
    (d / "locked").mkdir()
    os.chmod(d / "locked", 0o555)
    skip = "root writes into read-only folders" if os.geteuid() == 0 else None
    return Case(fuse(a, b, d / "locked" / "f.png"), 2, ("f.png", "not writable"), skip=skip)


@case
def volume_to_png(d):
    t2, flair = pair3d(d)
    return Case(fuse(t2, flair, d / "f.png"), 2, ("f.png", "3D result"))


@case
def image_to_nifti(d):
    a, b = pair2d(d)
    return Case(fuse(a, b, d / "f.nii.gz"), 2, ("f.nii.gz", "2D result"))


# ------------------------------------------------------------------------------ methods and options
@case
def laplacian_levels_too_many(d):
    t2, flair = pair3d(d)
    return Case(fuse(t2, flair, d / "f.nii.gz", "-m", "laplacian", "-O", "levels=100"), 2,
                ("laplacian", "levels=100", "1 to"))


@case
def cuda_on_cpu_machine(d):
    import torch

    a, b = pair2d(d)
    skip = "this machine has CUDA" if torch.cuda.is_available() else None
    return Case(fuse(a, b, d / "f.png", "-m", "lagn", "--pair", "spect-mri", "-O", "device=cuda"), 2,
                ("cuda", "not available"), skip=skip)


# Cases that fuse the standard 2D pair into f.png with bad flags: name -> (flags, exit code, words of the error).
FLAG_CASES = {
    "sixteen_bit_colour_output": (("--bit-depth", "16"), 2, ("f.png", "16-bit")),
    "unknown_method": (("-m", "nope"), 2, ("nope", "unknown fusion method")),
    "unknown_option": (("-O", "levels=2"), 2, ("average", "levels")),
    "option_not_key_value": (("-m", "dwt", "-O", "levels"), 2, ("levels", "KEY=VALUE")),
    "levels_not_a_number": (("-m", "dwt", "-O", "levels=abc"), 2, ("dwt", "levels='abc'", "integer")),
    "levels_not_an_integer": (("-m", "laplacian", "-O", "levels=2.5"), 2, ("laplacian", "integer")),
    "dwt_levels_too_many": (("-m", "dwt", "-O", "levels=100"), 2, ("dwt", "levels=100", "out of range")),
    "dwt_levels_negative": (("-m", "dwt", "-O", "levels=-1"), 2, ("dwt", "levels=-1")),
    "laplacian_levels_zero": (("-m", "laplacian", "-O", "levels=0"), 2, ("laplacian", "levels=0")),
    "unknown_wavelet": (("-m", "dwt", "-O", "wavelet=db99"), 2, ("db99", "wavelet")),
    "window_not_a_number": (("-m", "clinicalfmamba", "-O", "window=abc"), 2, ("window='abc'", "integer")),
    "clip_out_of_range": (("--clip", "5", "200"), 2, ("--clip 5 200", "0 <= LO < HI <= 100")),
    "clip_inverted": (("--clip", "80", "20"), 2, ("--clip 80 20",)),
    "clip_empty_range": (("--clip", "50", "50"), 2, ("--clip 50 50",)),
    "clip_not_numbers": (("--clip", "low", "high"), 2, ("--clip", "low")),
    "bad_bit_depth_flag": (("--bit-depth", "12"), 2, ("--bit-depth", "12")),
}


def _flag_case(flags: tuple, code: int, needles: tuple) -> Callable[[Path], Case]:
    def build(d: Path) -> Case:
        a, b = pair2d(d)
        return Case(fuse(a, b, d / "f.png", *flags), code, needles)

    return build


for _name, _spec in FLAG_CASES.items():
    CASES[_name] = _flag_case(*_spec)


# ------------------------------------------------------------------------------ weights
@case
def weights_missing(d):
    a, b = pair2d(d)
    return Case(fuse(a, b, d / "f.png", "-m", "lagn", "-O", f"weights={d / 'gone.safetensors'}"), 1,
                ("gone.safetensors", "not found"))


@case
def weights_garbage(d):
    a, b = pair2d(d)
    (d / "junk.safetensors").write_bytes(b"\x13\x00\x00\x00\x00\x00\x00\x00{not json" + b"\x00" * 40)
    return Case(fuse(a, b, d / "f.png", "-m", "lagn", "-O", f"weights={d / 'junk.safetensors'}"), 1,
                ("junk.safetensors", "safetensors"))


@case
def weights_truncated(d):
    a, b = pair2d(d)
    cut = truncated(weights(d, "full.safetensors"), d / "cut.safetensors", 0.5)
    return Case(fuse(a, b, d / "f.png", "-m", "lagn", "-O", f"weights={cut}"), 1, ("cut.safetensors",))


@case
def weights_of_another_model(d):
    a, b = pair2d(d)
    other = weights(d, "ehdran.safetensors", model="ehdran_small")
    return Case(fuse(a, b, d / "f.png", "-m", "lagn", "-O", f"weights={other}"), 1,
                ("ehdran.safetensors", "do not fit"))


@case
def weights_holding_nan(d):
    a, b = pair2d(d)
    nan = weights(d, "nan.safetensors", fill=float("nan"))
    return Case(fuse(a, b, d / "f.png", "-m", "lagn", "-O", f"weights={nan}"), 1, ("f.png", "not written", "NaN"))


@case
def weights_holding_zeros(d):  # a dead network: constant output from non-constant inputs
    a, b = pair2d(d)
    zeros = weights(d, "zeros.safetensors", fill=0.0)
    return Case(fuse(a, b, d / "f.png", "-m", "lagn", "-O", f"weights={zeros}"), 1, ("f.png", "constant"))


# ------------------------------------------------------------------------------ fuse-dir
def two_dirs(d: Path, names=("1.png", "2.png", "3.png")) -> tuple[Path, Path]:
    (d / "A").mkdir()
    (d / "B").mkdir()
    for i, n in enumerate(names):
        gray8(d / "A", n, seed=i)
        rgb8(d / "B", n, seed=10 + i)
    return d / "A", d / "B"


@case
def fuse_dir_missing_folder(d):
    da, _ = two_dirs(d)
    return Case(["fuse-dir", da, d / "nope", "-o", d / "out"], 1, ("nope", "not a folder"))


@case
def fuse_dir_no_common_names(d):
    (d / "A").mkdir()
    (d / "B").mkdir()
    for i in range(4):
        gray8(d / "A", f"a{i}.png", seed=i)
        gray8(d / "B", f"b{i}.png", seed=i)
    return Case(["fuse-dir", d / "A", d / "B", "-o", d / "out"], 2, ("A", "no file names in common"))


@case
def fuse_dir_out_is_a_file(d):
    da, db = two_dirs(d)
    (d / "out").write_text("a file")
    return Case(["fuse-dir", da, db, "-o", d / "out"], 2, ("out", "is a file"))


@case
def fuse_dir_out_is_input_folder(d):
    da, db = two_dirs(d)
    return Case(["fuse-dir", da, db, "-o", da, "--overwrite"], 2, ("1.png", "output is the input"))


@case
def fuse_dir_ext_collision(d):
    da, db = two_dirs(d)
    for folder in (da, db):
        png(folder / "1.tif", rng(5).integers(0, 255, (32, 32), dtype=np.uint8))
    return Case(["fuse-dir", da, db, "-o", d / "out", "--ext", ".png"], 2, ("1.png", "1.tif", "would be written"))


@case
def fuse_dir_bad_ext(d):
    da, db = two_dirs(d)
    return Case(["fuse-dir", da, db, "-o", d / "out", "--ext", ".txt"], 2, ("--ext .txt",))


@case
def fuse_dir_bad_weights_stop_at_once(d):
    da, db = two_dirs(d)
    (d / "junk.safetensors").write_bytes(b"garbage")
    return Case(["fuse-dir", da, db, "-o", d / "out", "-m", "lagn", "-O", f"weights={d / 'junk.safetensors'}"], 1,
                ("junk.safetensors",))


@case
def fuse_dir_nan_weights_stop_at_once(d):
    da, db = two_dirs(d)
    nan = weights(d, "nan.safetensors", fill=float("nan"))
    return Case(["fuse-dir", da, db, "-o", d / "out", "-m", "lagn", "-O", f"weights={nan}"], 1, ("not written", "NaN"))


@case
def fuse_dir_one_bad_pair(d):
    da, db = two_dirs(d)
    (db / "2.png").write_bytes(b"garbage")

    def check(folder, stdout):
        assert "2 fused, 0 skipped (exist), 1 failed" in stdout
        assert sorted(p.name for p in (folder / "out").iterdir()) == ["1.png", "3.png"]

    return Case(["fuse-dir", da, db, "-o", d / "out"], 1, ("2.png", "unreadable"), ("out/*",), check)


@case
def fuse_dir_unknown_method(d):
    da, db = two_dirs(d)
    return Case(["fuse-dir", da, db, "-o", d / "out", "-m", "nope"], 2, ("nope",))


@case
def fuse_dir_removes_stale_partials(d):
    da, db = two_dirs(d)
    (d / "out").mkdir()
    (d / "out" / ".1.partial-deadbeef.png").write_bytes(b"half a png")
    (d / "out" / ".2.png.lock").write_bytes(b"")

    def check(folder, stdout):
        assert "3 fused" in stdout
        assert sorted(p.name for p in (folder / "out").iterdir()) == ["1.png", "2.png", "3.png"]

    return Case(["fuse-dir", da, db, "-o", d / "out"], 0, (), ("out/*",), check)


# ------------------------------------------------------------------------------ evaluate
@case
def evaluate_grid_mismatch(d):
    t2, _ = pair3d(d)
    shifted = AFFINE.copy()
    shifted[:3, :3] *= 1.5
    other = nifti(d / "coarse.nii.gz", vol(1), shifted)
    return Case(["evaluate", t2, other, t2], 1, ("t2.nii.gz", "coarse.nii.gz", "voxel grids differ"))


@case
def evaluate_shape_mismatch(d):
    a, b = pair2d(d)
    small = gray8(d, "small.png", size=(16, 16))
    return Case(["evaluate", a, b, small], 1, ("a.png", "small.png", "shape mismatch"))


@case
def evaluate_truncated_fused(d):
    a, b = pair2d(d)
    fused = truncated(gray8(d, "full.png", seed=9), d / "cut.png", 0.3)
    return Case(["evaluate", a, b, fused], 1, ("cut.png", "unreadable"))


@case
def evaluate_output_is_a_folder(d):
    da, db = two_dirs(d)
    shutil.copytree(da, d / "F")
    (d / "res.csv").mkdir()
    return Case(["evaluate", "--a", da, "--b", db, "--fused", d / "F", "-o", d / "res.csv"], 2,
                ("res.csv", "is a folder"))


@case
def evaluate_two_files_only(d):
    a, b = pair2d(d)
    return Case(["evaluate", a, b], 2, ("three files",))


# ------------------------------------------------------------------------------ train
@case
def train_negative_minutes(d):
    return Case(["train", "--model", "lagn_small", "--data", harvard(d), "--out", d / "run", "--max-minutes", "-1"],
                2, ("--max-minutes", "-1"))


@case
def train_zero_steps(d):
    return Case(["train", "--model", "lagn_small", "--data", harvard(d), "--out", d / "run", "--max-steps", "0"],
                2, ("--max-steps", "0"))


@case
def train_out_is_a_file(d):
    (d / "run").write_text("a file")
    return Case(["train", "--model", "lagn_small", "--data", harvard(d), "--out", d / "run"], 2, ("run", "is a file"))


@case
def train_resume_truncated_state(d):
    import torch

    run = d / "run"
    run.mkdir()
    torch.save({"step": 1, "optimizer": {}, "pad": torch.zeros(4096)}, run / "full.pt")
    truncated(run / "full.pt", run / "last_state.pt", 0.5)
    (run / "full.pt").unlink()
    args = ["train", "--model", "ehdran_small", "--data", harvard(d), "--out", run, "--resume", "--crop", "16",
            "--epochs", "1", "--batch-size", "2", "--threads", "1"]
    return Case(args, 1, ("last_state.pt", "unreadable training state"))


# ------------------------------------------------------------------------------ benchmark
def bench(d: Path, *extra) -> list:
    return ["benchmark", "--data", harvard(d), "--split", "val", "-o", d / "bench", *extra]


@case
def benchmark_limit_zero(d):
    return Case(bench(d, "--limit", "0"), 2, ("--limit", "0"))


@case
def benchmark_limit_negative(d):
    return Case(bench(d, "--limit", "-1"), 2, ("--limit", "-1"))


@case
def benchmark_out_is_a_file(d):
    (d / "bench").write_text("a file")
    return Case(bench(d), 2, ("bench", "is a file"))


@case
def benchmark_garbage_weights(d):
    (d / "junk.safetensors").write_bytes(b"garbage")
    return Case(bench(d, "--methods", "lagn", "-O", f"weights={d / 'junk.safetensors'}"), 1, ("junk.safetensors",))


@case
def benchmark_unknown_option(d):
    return Case(bench(d, "--methods", "lagn", "-O", "colour=blue"), 2, ("lagn", "colour"))


@case
def benchmark_missing_data(d):
    return Case(["benchmark", "--data", d / "nope", "-o", d / "bench"], 1, ("nope",))


# ------------------------------------------------------------------------------ awkward but valid
def _fused_ok(name: str, color: bool | None = None):
    def check(folder: Path, stdout: str) -> None:
        img = opens(folder / name)
        assert np.ptp(img.array) > 0
        if color is not None:
            assert img.is_color == color

    return check


@case
def float32_tiff_in_unit_range(d):
    a, _ = pair2d(d)
    b = tiff(d / "b.tif", rng(1).random((32, 32)).astype(np.float32))
    return Case(fuse(a, b, d / "f.png"), 0, (), ("f.png",), _fused_ok("f.png", False))


@case
def float64_tiff_in_hounsfield(d):
    a, _ = pair2d(d)
    b = tiff(d / "ct.tif", rng(1).uniform(-1000, 3000, (32, 32)))
    return Case(fuse(a, b, d / "f.png"), 0, (), ("f.png",), _fused_ok("f.png", False))


@case
def rgb_float_tiff(d):
    a, _ = pair2d(d)
    b = tiff(d / "spect.tif", rng(1).random((32, 32, 3)).astype(np.float32), photometric="rgb")
    return Case(fuse(a, b, d / "f.png"), 0, (), ("f.png",), _fused_ok("f.png", True))


@case
def planar_rgb_tiff(d):
    a, _ = pair2d(d)
    b = tiff(d / "planar.tif", rng(1).integers(0, 255, (3, 32, 32), dtype=np.uint8), photometric="rgb",
             planarconfig="separate")
    return Case(fuse(a, b, d / "f.png"), 0, (), ("f.png",), _fused_ok("f.png", True))


@case
def sixteen_bit_png_and_output(d):
    a, _ = pair2d(d)
    b = png(d / "b16.png", rng(1).integers(0, 65535, (32, 32), dtype=np.uint16))
    return Case(fuse(a, b, d / "f.png", "--bit-depth", "16"), 0, (), ("f.png",), _fused_ok("f.png", False))


@case
def huge_float64_volume_values(d):
    t2, _ = pair3d(d)
    big = nifti(d / "big.nii", (rng(1).random(SHAPE3) * 2 - 1) * 1e300)
    return Case(fuse(t2, big, d / "f.nii.gz"), 0, (), ("f.nii.gz",), _fused_ok("f.nii.gz"))


@case
def trailing_singleton_4d(d):
    t2, _ = pair3d(d)
    v1 = nifti(d / "v1.nii", vol(1)[..., None])
    return Case(fuse(t2, v1, d / "f.nii.gz", "-m", "dwt"), 0, (), ("f.nii.gz",), _fused_ok("f.nii.gz"))


@case
def resample_coarser_volume(d):
    t2, _ = pair3d(d)
    coarse = AFFINE.copy()
    coarse[:3, :3] *= 2
    other = nifti(d / "coarse.nii.gz", vol(1, (6, 5, 4)), coarse)
    return Case(fuse(t2, other, d / "f.nii.gz", "--resample"), 0, (), ("f.nii.gz",), _fused_ok("f.nii.gz"))


@case
def dicom_series_with_nifti(d):
    from neurofuse.io import read_image, write_volume_like

    series = dicom_series(d / "dcm", (rng(4).random((6, 10, 12)) * 1000).astype(np.int16))
    other = read_image(series)
    other.array = (rng(5).random(other.array.shape) * 500).astype(np.int16)
    write_volume_like(d / "other.nii.gz", other)
    return Case(fuse(series, d / "other.nii.gz", d / "f.nii.gz", "-m", "pca"), 0, (), ("f.nii.gz",),
                _fused_ok("f.nii.gz"))


@case
def resample_without_overlap(d):
    t2, _ = pair3d(d)
    far = AFFINE.copy()
    far[:3, 3] += 500.0
    other = nifti(d / "far.nii.gz", vol(1), far)
    return Case(fuse(t2, other, d / "f.nii.gz", "--resample"), 1, ("far.nii.gz", "do not overlap"))


@case
def overwrite_an_old_result(d):
    a, b = pair2d(d)
    (d / "f.png").write_bytes(b"old result")

    def check(folder, stdout):
        assert opens(folder / "f.png").is_color

    return Case(fuse(a, b, d / "f.png", "--overwrite", "-m", "laplacian"), 0, (), ("f.png",), check, )


@case
def evaluate_float_tiff_matches_8bit(d):
    a, b = gray8(d, size=(64, 64)), rgb8(d, size=(64, 64))
    f8 = rng(7).integers(0, 256, (64, 64), dtype=np.uint8)
    png(d / "f8.png", f8)
    tiff(d / "f32.tif", f8.astype(np.float32) / 255.0)

    def check(folder, stdout):
        from neurofuse.evaluate import evaluate_triplet

        want = evaluate_triplet(folder / "a.png", folder / "b.png", folder / "f8.png", preset="standard")
        got = json.loads(stdout)
        got = got.get("values", got)
        for k, v in want.items():
            assert abs(got[k] - v) <= 1e-6 * max(1.0, abs(v)), (k, got[k], v)

    return Case(["evaluate", a, b, d / "f32.tif", "--json"], 0, (), (), check)


def write_corpus(root: str | Path) -> dict[str, Case]:
    """Write every case into root/<case>/ and return the cases by name."""
    root = Path(root)
    out = {}
    for name, build in CASES.items():
        folder = root / name
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        out[name] = build(folder)
    return out


def markdown(cases: dict[str, Case], root: Path) -> str:
    """The corpus as a Markdown table: case, command (paths relative to its folder), exit code, words."""
    def rel(x) -> str:  # root/<case>/name -> name, also inside KEY=VALUE options
        text = str(x)
        while f"{root}/" in text:
            head, tail = text.split(f"{root}/", 1)
            text = head + (tail.split("/", 1)[1] if "/" in tail else ".")
        return text

    lines = ["| case | command | exit | the error line holds |", "|---|---|---|---|"]
    for name, c in cases.items():
        cmd = " ".join(rel(a) for a in c.args)
        lines.append(f"| `{name}` | `neurofuse {cmd}` | {c.code} | {', '.join(map(rel, c.needles)) or '-'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python tests/corpus/badinput.py DIR [--markdown]
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "corpus").resolve()
    written = write_corpus(target)
    if "--markdown" in sys.argv:
        print(markdown(written, target), end="")
    else:
        for name, c in written.items():
            print(f"{name}: exit {c.code}: neurofuse {' '.join(str(a) for a in c.args)}")
