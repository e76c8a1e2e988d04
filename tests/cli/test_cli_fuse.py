"""`neurofuse fuse`, `fuse-dir`, `methods`: results, bad input (exit code + one line), atomic writes."""

from __future__ import annotations

import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from neurofuse.cli import main
from neurofuse.io import read_image, write_image


def run(*args):
    res = CliRunner().invoke(main, [str(a) for a in args])
    return res.exit_code, res.stdout, res.stderr


def assert_one_line_error(code, err, expected_code, *needles):
    assert code == expected_code, err
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert str(n) in lines[0], (n, lines[0])


@pytest.fixture
def pair_2d(tmp_path, rng):
    a = write_image(tmp_path / "a.png", rng.random((32, 32)))
    b = write_image(tmp_path / "b.png", rng.random((32, 32, 3)))
    return a, b


@pytest.fixture
def pair_3d(tmp_path, rng):
    affine = np.diag([1.2, 1.0, 2.0, 1.0])
    affine[:3, 3] = [-10, 5, 3]
    for name in ("t2", "flair"):
        nib.save(nib.Nifti1Image(rng.random((12, 10, 8)).astype(np.float32), affine), str(tmp_path / f"{name}.nii.gz"))
    return tmp_path / "t2.nii.gz", tmp_path / "flair.nii.gz"


def test_help_lists_commands():
    code, out, _ = run("--help")
    assert code == 0
    for cmd in ("fuse", "fuse-dir", "methods"):
        assert cmd in out


def test_methods_lists_classical():
    code, out, _ = run("methods")
    assert code == 0
    for m in ("average", "maximum", "pca", "dwt", "laplacian"):
        assert m in out


def test_fuse_colour_2d_keeps_chroma(pair_2d, tmp_path):
    a, b = pair_2d
    code, out, err = run("fuse", a, b, "-o", tmp_path / "f.png", "-m", "dwt")
    assert code == 0, err
    f = read_image(tmp_path / "f.png")
    assert f.is_color and f.array.shape == (32, 32, 3)
    code, _, _ = run("fuse", a, b, "-o", tmp_path / "g.png", "--gray", "-m", "dwt", "-O", "levels=2")
    assert code == 0 and read_image(tmp_path / "g.png").array.ndim == 2


def test_fuse_3d_keeps_affine(pair_3d, tmp_path):
    a, b = pair_3d
    code, _, err = run("fuse", a, b, "-o", tmp_path / "f.nii.gz", "-m", "laplacian")
    assert code == 0, err
    out, ref = nib.load(str(tmp_path / "f.nii.gz")), nib.load(str(a))
    np.testing.assert_allclose(out.affine, ref.affine)
    assert out.shape == ref.shape


def test_resample_path(pair_3d, tmp_path, rng):
    a, _ = pair_3d
    ref = nib.load(str(a))
    # B covers the same field of view on a coarser grid: 6x5x4 voxels of twice the size.
    coarse = ref.affine.copy()
    coarse[:3, :3] *= 2
    coarse[:3, 3] += 0.5 * np.diag(ref.affine)[:3]  # voxel centres of the coarse grid
    nib.save(nib.Nifti1Image(rng.random((6, 5, 4)).astype(np.float32), coarse), str(tmp_path / "coarse.nii.gz"))
    code, _, err = run("fuse", a, tmp_path / "coarse.nii.gz", "-o", tmp_path / "f.nii.gz")
    assert_one_line_error(code, err, 1, a, "coarse.nii.gz", "--resample")
    code, _, err = run("fuse", a, tmp_path / "coarse.nii.gz", "-o", tmp_path / "f.nii.gz", "--resample")
    assert code == 0, err
    assert nib.load(str(tmp_path / "f.nii.gz")).shape == ref.shape


def test_resample_is_linear_interpolation(tmp_path):
    from neurofuse.io import resample_to

    # A linear ramp sampled on two grids: linear interpolation reproduces it inside the field of view.
    fine, coarse = np.eye(4), np.diag([2.0, 2.0, 2.0, 1.0])
    i, j, k = np.meshgrid(np.arange(8), np.arange(8), np.arange(8), indexing="ij")
    ci, cj, ck = np.meshgrid(np.arange(4), np.arange(4), np.arange(4), indexing="ij")
    nib.save(nib.Nifti1Image((i + 2 * j + 3 * k).astype(np.float32), fine), str(tmp_path / "f.nii"))
    nib.save(nib.Nifti1Image((2 * ci + 4 * cj + 6 * ck).astype(np.float32), coarse), str(tmp_path / "c.nii"))
    out = resample_to(read_image(tmp_path / "c.nii"), read_image(tmp_path / "f.nii")).array
    np.testing.assert_allclose(out[:7, :7, :7], (i + 2 * j + 3 * k)[:7, :7, :7], atol=1e-4)


def test_resample_2d_resizes(tmp_path, rng):
    a = write_image(tmp_path / "a.png", rng.random((32, 32)))
    b = write_image(tmp_path / "b.png", rng.random((16, 16)))
    code, _, err = run("fuse", a, b, "-o", tmp_path / "f.png")
    assert_one_line_error(code, err, 1, "shape mismatch", "a.png", "b.png")
    code, _, err = run("fuse", a, b, "-o", tmp_path / "f.png", "--resample")
    assert code == 0 and read_image(tmp_path / "f.png").array.shape == (32, 32)


def test_bad_inputs_give_one_line_errors(tmp_path, pair_2d, pair_3d, rng):
    a, b = pair_2d
    t2, _ = pair_3d
    out = tmp_path / "out.png"
    trunc = tmp_path / "trunc.png"
    trunc.write_bytes(a.read_bytes()[:60])
    code, _, err = run("fuse", trunc, b, "-o", out)
    assert_one_line_error(code, err, 1, "trunc.png")
    trunc_nii = tmp_path / "trunc.nii.gz"
    trunc_nii.write_bytes(t2.read_bytes()[:200])
    code, _, err = run("fuse", trunc_nii, t2, "-o", tmp_path / "o.nii.gz")
    assert_one_line_error(code, err, 1, "trunc.nii.gz", "unreadable")
    (tmp_path / "x.txt").write_text("hello")
    code, _, err = run("fuse", tmp_path / "x.txt", b, "-o", out)
    assert_one_line_error(code, err, 1, "x.txt", "unsupported extension")
    nib.save(nib.Nifti1Image(rng.random((4, 4, 4, 3)).astype(np.float32), np.eye(4)), str(tmp_path / "v4.nii"))
    code, _, err = run("fuse", tmp_path / "v4.nii", t2, "-o", tmp_path / "o.nii.gz")
    assert_one_line_error(code, err, 1, "v4.nii", "4D")
    nan = rng.random((12, 10, 8)).astype(np.float32)
    nan[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, nib.load(str(t2)).affine), str(tmp_path / "nan.nii.gz"))
    code, _, err = run("fuse", t2, tmp_path / "nan.nii.gz", "-o", tmp_path / "o.nii.gz")
    assert_one_line_error(code, err, 1, "nan.nii.gz", "NaN")
    write_image(tmp_path / "const.png", np.full((32, 32), 0.5))
    code, _, err = run("fuse", a, tmp_path / "const.png", "-o", out)
    assert_one_line_error(code, err, 1, "const.png", "constant")
    code, _, err = run("fuse", a, t2, "-o", out)
    assert_one_line_error(code, err, 1, "a.png", "t2.nii.gz", "2D")
    code, _, err = run("fuse", a, b, "-o", tmp_path / "missing" / "f.png")
    assert_one_line_error(code, err, 2, "missing", "does not exist")
    code, _, err = run("fuse", a, b, "-o", out, "-O", "levels=2")
    assert_one_line_error(code, err, 2, "average", "levels")
    code, _, err = run("fuse", a, b, "-o", out, "-m", "nope")
    assert_one_line_error(code, err, 2, "nope")
    code, _, err = run("fuse", t2, t2, "-o", tmp_path / "f.png")
    assert_one_line_error(code, err, 2, "f.png", "3D")
    assert not out.exists()


def test_existing_output_is_kept_without_overwrite(pair_2d, tmp_path):
    a, b = pair_2d
    out = tmp_path / "f.png"
    out.write_bytes(b"precious")
    code, _, err = run("fuse", a, b, "-o", out)
    assert_one_line_error(code, err, 2, "f.png", "--overwrite")
    assert out.read_bytes() == b"precious"
    code, _, _ = run("fuse", a, b, "-o", out, "--overwrite")
    assert code == 0 and read_image(out).array.shape[:2] == (32, 32)


def test_interrupted_write_leaves_nothing_behind(pair_3d, tmp_path, monkeypatch):
    a, b = pair_3d
    out = tmp_path / "f.nii.gz"
    out.write_bytes(b"old result")

    def half_write_then_fail(img, filename):
        with open(filename, "wb") as fh:
            fh.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", half_write_then_fail)
    code, _, _ = run("fuse", a, b, "-o", out, "--overwrite")
    assert code != 0
    assert out.read_bytes() == b"old result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.nii.gz", "flair.nii.gz", "t2.nii.gz"]


def test_debug_shows_traceback(tmp_path, pair_2d):
    _, b = pair_2d
    res = CliRunner().invoke(
        main, ["--debug", "fuse", str(tmp_path / "nope.png"), str(b), "-o", str(tmp_path / "f.png")]
    )
    assert res.exit_code != 0 and res.exception is not None


def _harvard_subset(data_dir, tmp_path, n=3):
    src = data_dir / "harvard/SPECT-MRI"
    names = ["4007.png", "4008.png", "4009.png"][:n]
    for mod in ("MRI", "SPECT"):
        (tmp_path / mod).mkdir()
        for nm in names:
            shutil.copy(src / mod / nm, tmp_path / mod / nm)
    return tmp_path / "MRI", tmp_path / "SPECT", names


def test_fuse_dir_resumes_and_survives_a_bad_pair(data_dir, tmp_path):
    da, db, names = _harvard_subset(data_dir, tmp_path)
    out = tmp_path / "out"
    code, stdout, err = run("fuse-dir", da, db, "-o", out, "-m", "dwt")
    assert code == 0, err
    assert "3 fused, 0 skipped" in stdout and read_image(out / names[0]).is_color
    (out / names[1]).unlink()
    code, stdout, _ = run("fuse-dir", da, db, "-o", out, "-m", "dwt")
    assert code == 0 and "1 fused, 2 skipped" in stdout
    (db / names[2]).write_bytes(b"garbage")
    code, stdout, err = run("fuse-dir", da, db, "-o", out, "-m", "dwt", "--overwrite")
    assert code == 1 and "2 fused, 0 skipped (exist), 1 failed" in stdout
    assert names[2] in err


def test_entry_point_exit_codes(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "neurofuse", "fuse", "a.png", "b.png", "-o", str(tmp_path / "f.png")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and res.stderr.strip() == "error: a.png: no such file or folder"


def test_pair_is_inferred_from_file_names():
    from neurofuse.pipeline import infer_pair, learned_options

    assert infer_pair("harvard/SPECT-MRI/MRI/4012.png", "harvard/SPECT-MRI/SPECT/4012.png") == "spect-mri"
    assert infer_pair("scans/mri.png", "scans/ct.png") == "ct-mri"
    assert infer_pair("a.png", "b.png") is None
    assert infer_pair("pet/a.png", "ct/b.png") is None  # ambiguous: no guess
    assert learned_options("dwt", ("x/ct.png", "x/mri.png"), None, {}) == {}  # classical: untouched
    opts = learned_options("clinicalfmamba", ("x/ct.png", "x/mri.png"), None, {})
    assert opts == {"pretrained": "ct-mri"}
    assert learned_options("clinicalfmamba", ("x/ct.png", "x/mri.png"), "pet-mri", {}) == {"pretrained": "pet-mri"}
    assert learned_options("clinicalfmamba", ("x/ct.png",), None, {"weights": "w.safetensors"}) == {
        "weights": "w.safetensors"
    }
