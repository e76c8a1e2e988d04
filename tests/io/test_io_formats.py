"""Round trips for every format neurofuse reads and writes, and colour handling."""

from __future__ import annotations

import warnings

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from neurofuse.errors import InputError, UsageError
from neurofuse.io import (
    normalize01,
    read_image,
    read_luma,
    rgb_to_ycbcr,
    write_image,
    write_volume_like,
    ycbcr_to_rgb,
)


@pytest.mark.parametrize("ext", [".png", ".tif", ".bmp"])
def test_gray_8bit_round_trip(tmp_path, rng, ext):
    arr = rng.random((17, 23)).astype(np.float32)
    p = write_image(tmp_path / f"x{ext}", arr)
    img = read_image(p)
    assert img.bit_depth == 8 and img.array.dtype == np.uint8 and not img.is_color
    np.testing.assert_array_equal(img.array, np.round(arr * 255).astype(np.uint8))


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_gray_16bit_round_trip(tmp_path, rng, ext):
    arr = rng.random((9, 12)).astype(np.float32)
    img = read_image(write_image(tmp_path / f"x{ext}", arr, bit_depth=16))
    assert img.bit_depth == 16
    np.testing.assert_array_equal(img.array.astype(np.int64), np.round(arr * 65535).astype(np.int64))


def test_rgb_round_trip_and_16bit_rgb_refused(tmp_path, rng):
    arr = rng.random((8, 10, 3)).astype(np.float32)
    img = read_image(write_image(tmp_path / "c.png", arr))
    assert img.is_color and img.array.shape == (8, 10, 3)
    np.testing.assert_array_equal(img.array, np.round(arr * 255).astype(np.uint8))
    with pytest.raises(UsageError, match="16-bit"):
        write_image(tmp_path / "c16.png", arr, bit_depth=16)


def test_jpeg_warns_lossy(tmp_path, rng):
    with pytest.warns(UserWarning, match="lossy"):
        p = write_image(tmp_path / "x.jpg", rng.random((16, 16)))
    with pytest.warns(UserWarning, match="lossy"):
        read_image(p)


def test_palette_la_rgba_converted(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    pal = PILImage.fromarray(np.stack([gray, 255 - gray, gray // 2], -1)).convert("P", palette=PILImage.ADAPTIVE)
    pal.save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").is_color
    PILImage.fromarray(gray).convert("P").save(tmp_path / "pg.png")  # gray palette -> gray
    assert read_image(tmp_path / "pg.png").array.ndim == 2
    la = np.stack([gray, np.full_like(gray, 255)], -1)
    PILImage.fromarray(la, mode="LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(read_image(tmp_path / "la.png").array, gray)
    rgba = np.concatenate([np.stack([gray, gray // 2, 255 - gray], -1), np.full((8, 8, 1), 100, np.uint8)], -1)
    PILImage.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    with pytest.warns(UserWarning, match="alpha"):
        img = read_image(tmp_path / "rgba.png")
    assert img.array.shape == (8, 8, 3)


def test_rgb_that_is_gray_is_read_as_gray(tmp_path):
    g = np.arange(100, dtype=np.uint8).reshape(10, 10)
    PILImage.fromarray(np.stack([g, g, g], -1)).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").array.shape == (10, 10)


def test_ycbcr_round_trip_matches_pil(rng):
    rgb = (rng.random((32, 32, 3)) * 255).round()
    np.testing.assert_allclose(ycbcr_to_rgb(rgb_to_ycbcr(rgb)), rgb, atol=1e-3)
    pil = np.asarray(PILImage.fromarray(rgb.astype(np.uint8)).convert("YCbCr")).astype(np.float64)
    assert np.abs(rgb_to_ycbcr(rgb) - pil).max() < 1.01  # PIL truncates its fixed-point result


def test_read_luma_is_y_channel(data_dir):
    p = data_dir / "harvard/SPECT-MRI/SPECT/4012.png"
    rgb = np.asarray(PILImage.open(p)).astype(np.float64)
    np.testing.assert_allclose(read_luma(p), rgb_to_ycbcr(rgb)[..., 0], atol=1e-4)


def test_normalize01_and_percentile_clip(rng):
    x = rng.normal(size=(50, 50))
    x[0, 0] = 1e6  # an outlier that the clip removes
    n = normalize01(x)
    assert n.min() == 0 and n.max() == 1
    c = normalize01(x, clip_percentiles=(1, 99))
    assert c.min() == 0 and c.max() == 1 and np.median(c) > 0.3
    with pytest.raises(InputError, match="constant"):
        normalize01(np.ones((4, 4)))


def _reference_nifti(path, shape=(10, 12, 8)):
    affine = np.array([[-0.9, 0.05, 0, 90.0], [0.0, 1.1, 0.1, -120.0], [0, -0.05, 2.0, -60.0], [0, 0, 0, 1]])
    data = np.arange(np.prod(shape), dtype=np.int16).reshape(shape)
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=2)
    img.set_sform(affine, code=4)
    img.header.set_xyzt_units("mm", "sec")
    nib.save(img, str(path))
    return affine


def test_nifti_write_keeps_reference_geometry(tmp_path, rng):
    affine = _reference_nifti(tmp_path / "ref.nii.gz")
    ref = read_image(tmp_path / "ref.nii.gz")
    arr = rng.random(ref.array.shape).astype(np.float32)
    out = nib.load(str(write_image(tmp_path / "out.nii.gz", arr, reference=ref)))
    np.testing.assert_allclose(out.affine, affine, atol=1e-5)
    assert int(out.header["qform_code"]) == 2 and int(out.header["sform_code"]) == 4
    np.testing.assert_allclose(out.header.get_zooms(), ref.header.get_zooms(), atol=1e-5)
    assert out.header.get_xyzt_units() == ("mm", "sec")
    assert out.get_data_dtype() == np.float32
    np.testing.assert_allclose(np.asarray(out.dataobj), arr, atol=1e-7)
    as_int = nib.load(str(write_image(tmp_path / "o16.nii", arr, reference=ref, dtype="int16")))
    assert as_int.get_data_dtype() == np.int16 and int(np.asarray(as_int.dataobj).max()) <= 32767


def _write_dicom_series(folder, vol, spacing=(0.8, 0.7, 2.5), origin=(-10.0, 20.0, 5.0)):
    """A DICOM series from a (z, y, x) array, written slice by slice with SimpleITK."""
    import SimpleITK as sitk

    folder.mkdir()
    img = sitk.GetImageFromArray(vol)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series_uid = "1.2.826.0.1.3680043.2.1125.1"
    for k in range(vol.shape[0]):
        sl = img[:, :, k]
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        for tag, value in {
            "0020|000e": series_uid,
            "0020|000d": "1.2.826.0.1.3680043.2.1125.2",
            "0008|0060": "MR",
            "0020|0032": "\\".join(str(v) for v in pos),
            "0020|0013": str(k + 1),
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0018|0050": str(spacing[2]),
            "0028|0030": f"{spacing[1]}\\{spacing[0]}",
        }.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"s{k:03d}.dcm"))
        writer.Execute(sl)
    return img


def test_dicom_series_read_and_export(tmp_path):
    import SimpleITK as sitk

    vol = (np.arange(4 * 6 * 5).reshape(4, 6, 5) * 10).astype(np.int16)
    sitk_img = _write_dicom_series(tmp_path / "dcm", vol)
    img = read_image(tmp_path / "dcm")
    assert img.format == "dicom" and img.array.shape == (5, 6, 4)  # (x, y, z) voxel order
    np.testing.assert_array_equal(img.array, vol.transpose(2, 1, 0))
    np.testing.assert_allclose(img.spacing, (0.8, 0.7, 2.5), atol=1e-4)
    # SimpleITK's own NIfTI export of the same image, read back by nibabel, is the ground truth.
    sitk.WriteImage(sitk_img, str(tmp_path / "sitk.nii.gz"))
    truth = nib.load(str(tmp_path / "sitk.nii.gz"))
    np.testing.assert_allclose(img.affine, truth.affine, atol=1e-4)
    out = nib.load(str(write_volume_like(tmp_path / "conv.nii.gz", img)))
    np.testing.assert_allclose(out.affine, truth.affine, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(out.dataobj), np.asarray(truth.dataobj))


def test_dicom_folder_with_two_series_is_refused(tmp_path):
    import shutil

    vol = np.arange(3 * 4 * 4, dtype=np.int16).reshape(3, 4, 4)
    _write_dicom_series(tmp_path / "one", vol)
    (tmp_path / "mixed").mkdir()
    for p in (tmp_path / "one").iterdir():
        shutil.copy(p, tmp_path / "mixed" / p.name)
    other = tmp_path / "two"
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(vol)
    other.mkdir()
    for k in range(3):
        sl = img[:, :, k]
        sl.SetMetaData("0020|000e", "1.2.826.0.1.3680043.2.1125.9")
        sl.SetMetaData("0020|0013", str(k + 1))
        w = sitk.ImageFileWriter()
        w.KeepOriginalImageUIDOn()
        w.SetFileName(str(tmp_path / "mixed" / f"t{k}.dcm"))
        w.Execute(sl)
    with pytest.raises(InputError, match="2 DICOM series"):
        read_image(tmp_path / "mixed")


def test_nifti_slope_and_intercept_applied_once(tmp_path):
    """scl_slope 2, scl_inter 5 on int16 storage: the volume reads as 2 x stored + 5, not scaled twice."""
    raw = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_data_dtype(np.int16)
    img.header.set_slope_inter(2.0, 5.0)
    nib.save(img, str(tmp_path / "scaled.nii.gz"))
    stored = nib.load(str(tmp_path / "scaled.nii.gz"))
    assert (stored.dataobj.slope, stored.dataobj.inter) == (2.0, 5.0)  # the file really carries the scaling
    np.testing.assert_array_equal(stored.dataobj.get_unscaled(), raw)
    vol = read_image(tmp_path / "scaled.nii.gz")
    np.testing.assert_array_equal(vol.array, 2.0 * raw + 5.0)
    np.testing.assert_array_equal(vol.array, stored.get_fdata())


def test_4d_volume_refused_and_trailing_singleton_accepted(tmp_path, rng):
    nib.save(nib.Nifti1Image(rng.random((4, 5, 6, 2)).astype(np.float32), np.eye(4)), str(tmp_path / "v4.nii"))
    with pytest.raises(InputError, match="4D"):
        read_image(tmp_path / "v4.nii")
    nib.save(nib.Nifti1Image(rng.random((4, 5, 6, 1)).astype(np.float32), np.eye(4)), str(tmp_path / "v1.nii"))
    assert read_image(tmp_path / "v1.nii").array.shape == (4, 5, 6)


def test_no_warning_for_plain_png(tmp_path, rng):
    p = write_image(tmp_path / "x.png", rng.random((8, 8)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_image(p)
