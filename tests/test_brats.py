"""BraTS readers, preprocessing, cache and `fuse-brats`, on the real volumes in ../shared/data laid out
(by symlinks) the way the official releases are."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from neurofuse import brats
from neurofuse.brats import (
    PreprocessConfig,
    brain_bbox,
    center_crop_pad,
    discover,
    load_preprocessed,
    normalize_volume,
    read_name_mapping,
    resample_to_fit,
    select_slices,
)
from neurofuse.cli import main
from neurofuse.errors import InputError
from neurofuse.fusion import fuse_axial

DATA = Path(__file__).resolve().parents[1] / "../shared/data"
LGG_ID = "BraTS19_TCIA10_130_1"
LGG_DIR = DATA / "brats2019" / "LGG" / LGG_ID
MET_ID = "BraTS-MET-00110-000"
MET_DIR = DATA / "brats2023_met" / MET_ID
MAPPING = DATA / "brats2019" / "metadata" / "name_mapping.csv"

needs_data = pytest.mark.skipif(not (LGG_DIR.is_dir() and MET_DIR.is_dir() and MAPPING.is_file()),
                                reason="shared BraTS data not available")


def _link_case(src_dir: Path, src_id: str, dst_parent: Path, dst_id: str, sep: str, mods: list[str]) -> Path:
    folder = dst_parent / dst_id
    folder.mkdir(parents=True)
    for m in mods:
        os.symlink(src_dir / f"{src_id}{sep}{m}.nii.gz", folder / f"{dst_id}{sep}{m}.nii.gz")
    return folder


@pytest.fixture(scope="module")
def layout_2019(tmp_path_factory) -> Path:
    """tmp/MICCAI_BraTS_2019_Data_Training/{LGG/<real>, HGG/<alias>} plus an ungraded-folder case whose
    grade comes from name_mapping.csv (a real HGG id)."""
    base = tmp_path_factory.mktemp("b19")
    train = base / "MICCAI_BraTS_2019_Data_Training"
    mods = ["t1", "t1ce", "t2", "flair"]
    _link_case(LGG_DIR, LGG_ID, train / "LGG", LGG_ID, "_", mods)
    _link_case(LGG_DIR, LGG_ID, train / "HGG", "BraTS19_FAKE_001_1", "_", ["t2", "flair"])
    _link_case(LGG_DIR, LGG_ID, train / "extra", "BraTS19_CBICA_AAB_1", "_", ["t2", "flair"])
    os.symlink(MAPPING, train / "name_mapping.csv")
    return base


@needs_data
def test_name_mapping_real_file():
    m = read_name_mapping(MAPPING)
    ids19 = {k: v for k, v in m.items() if k.startswith("BraTS19_")}
    assert len(ids19) == 335
    assert sum(v == "HGG" for v in ids19.values()) == 259
    assert m[LGG_ID] == "LGG"


@needs_data
@pytest.mark.parametrize("level", ["", "MICCAI_BraTS_2019_Data_Training", "MICCAI_BraTS_2019_Data_Training/LGG",
                                   f"MICCAI_BraTS_2019_Data_Training/LGG/{LGG_ID}"])
def test_discover_2019_at_any_level(layout_2019: Path, level: str):
    cases = {c.id: c for c in discover(layout_2019 / level)}
    assert cases[LGG_ID].grade == "LGG"
    assert sorted(cases[LGG_ID].paths) == ["flair", "t1", "t1ce", "t2"]
    assert cases[LGG_ID].layout == "2019"
    if level in ("", "MICCAI_BraTS_2019_Data_Training"):
        assert set(cases) == {LGG_ID, "BraTS19_FAKE_001_1", "BraTS19_CBICA_AAB_1"}
        assert cases["BraTS19_FAKE_001_1"].grade == "HGG"  # from the folder
        assert cases["BraTS19_CBICA_AAB_1"].grade == "HGG"  # from name_mapping.csv
        assert cases["BraTS19_CBICA_AAB_1"].label == 1 and cases[LGG_ID].label == 0
    else:
        assert set(cases) == {LGG_ID}


@needs_data
def test_discover_2023_layout_and_missing_modality(tmp_path: Path):
    _link_case(MET_DIR, MET_ID, tmp_path, MET_ID, "-", ["t1n", "t1c", "t2w", "t2f"])
    (case,) = discover(tmp_path)
    assert case.layout == "2023" and case.grade is None
    assert case.paths["t2"].name.endswith("-t2w.nii.gz") and case.paths["flair"].name.endswith("-t2f.nii.gz")
    assert case.paths["t1ce"].name.endswith("-t1c.nii.gz")
    with pytest.raises(InputError, match="no grade"):
        _ = case.label
    with pytest.raises(InputError, match="no seg volume"):
        discover(tmp_path, require=("seg",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no BraTS case"):
        discover(tmp_path / "empty")
    with pytest.raises(InputError, match="not a folder"):
        discover(tmp_path / "missing")


def test_grid_helpers():
    vol = np.zeros((10, 12, 8), np.float32)
    vol[2:5, 3:9, 1:7] = 1.0
    assert brain_bbox([vol]) == (slice(2, 5), slice(3, 9), slice(1, 7))
    assert brain_bbox([vol], margin=2) == (slice(0, 7), slice(1, 11), slice(0, 8))
    cp = center_crop_pad(vol, 9)
    assert cp.shape == (9, 9, 9) and cp.sum() == pytest.approx(vol[:, 1:10, :].sum())
    rs = resample_to_fit(np.ones((20, 10, 5), np.float32), 8)
    assert rs.shape == (8, 8, 8)
    assert rs[:, 2:6, 3:5].min() == pytest.approx(1.0) and rs[:, 0, :].max() == 0.0  # scaled by 0.4, padded


def test_normalize_volume_brain_only():
    rng = np.random.default_rng(0)
    vol = np.zeros((8, 8, 8), np.float32)
    vol[2:6, 2:6, 2:6] = rng.uniform(100, 200, (4, 4, 4))
    vol[3, 3, 3] = 10000.0  # hot voxel
    out = normalize_volume(vol)
    assert out.min() == 0.0 and out.max() == 1.0 and np.all(out[vol == 0] == 0)
    robust = normalize_volume(vol, (1, 98))
    assert np.median(robust[2:6, 2:6, 2:6]) > 0.3 > np.median(out[2:6, 2:6, 2:6])


def test_one_min_max_rule_for_constant_images():
    """io.normalize01 is the one min-max (fusion inputs, training images, BraTS brains): a constant image is
    an InputError naming it, wherever it comes from; the maximum maps to exactly 1."""
    from neurofuse.data import HarvardPairs
    from neurofuse.io import normalize01

    with pytest.raises(InputError, match="x.png: image is constant"):
        normalize01(np.full((4, 4), 7.0, np.float32), name="x.png")
    vol = np.zeros((6, 6, 6), np.float32)
    with pytest.raises(InputError, match="t2.nii.gz: no non-zero voxel"):
        normalize_volume(vol, name="t2.nii.gz")
    vol[1:4, 1:4, 1:4] = 5.0  # a brain of one value
    with pytest.raises(InputError, match="t2.nii.gz: image is constant"):
        normalize_volume(vol, name="t2.nii.gz")
    x = np.random.default_rng(0).uniform(0.1, 7.3, (50, 50)).astype(np.float32)
    assert normalize01(x).max() == 1.0 and normalize01(x).min() == 0.0
    ds = HarvardPairs.__new__(HarvardPairs)  # the training dataset's per-item scaling, without files
    ds.root, ds.ids, ds._a, ds._b = Path("h"), ["1"], [x], [np.full((50, 50), 3, np.uint8)]
    with pytest.raises(InputError, match="image is constant"):
        ds._arrays(0)


def test_select_slices():
    seg = np.zeros((4, 4, 20), np.uint8)
    for k, area in {5: 1, 6: 4, 7: 9, 8: 16, 9: 2}.items():
        seg[:, :, k].flat[:area] = 2
    assert list(select_slices(seg, 3)) == [6, 7, 8]
    assert list(select_slices(seg, 10)) == [5, 6, 7, 8, 9]
    assert list(select_slices(None, 4, depth=20)) == [8, 9, 10, 11]
    assert list(select_slices(np.zeros_like(seg), 4)) == [8, 9, 10, 11]


@needs_data
def test_preprocess_real_case_and_cache(layout_2019: Path, tmp_path: Path, monkeypatch):
    case = next(c for c in discover(layout_2019) if c.id == LGG_ID)
    cfg = PreprocessConfig(size=32)
    first = load_preprocessed(case, cfg, tmp_path)
    assert set(first) == {"t2", "flair"}
    for arr in first.values():
        assert arr.shape == (32, 32, 32) and arr.dtype == np.float32
        assert arr.min() == 0.0 and arr.max() == 1.0
        assert (arr > 0).mean() > 0.2  # the brain fills the grid (about 0.1 of the raw volume)
    assert len(list(tmp_path.glob(f"{LGG_ID}-*.npz"))) == 1

    def boom(*_a, **_k):
        raise AssertionError("cache miss")

    monkeypatch.setattr(brats, "preprocess_case", boom)
    again = load_preprocessed(case, cfg, tmp_path)
    np.testing.assert_array_equal(again["t2"], first["t2"])
    with pytest.raises(AssertionError, match="cache miss"):  # other settings, other key
        load_preprocessed(case, PreprocessConfig(size=32, mode="crop"), tmp_path)


@needs_data
def test_fuse_brats_geometry_and_resume(tmp_path: Path):
    root = tmp_path / "in"
    _link_case(MET_DIR, MET_ID, root, MET_ID, "-", ["t2w", "t2f"])
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["fuse-brats", str(root), "-o", str(out), "--method", "average", "--dims", "both"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "1 done, 0 skipped, 0 failed" in res.output
    ref = nib.load(str(MET_DIR / f"{MET_ID}-t2w.nii.gz"))
    for d in (2, 3):
        img = nib.load(str(out / MET_ID / f"{MET_ID}_fused-average-{d}d.nii.gz"))
        assert img.shape == ref.shape == (240, 240, 155)
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-4)
        data = np.asarray(img.dataobj)
        assert 0.0 <= data.min() and data.max() <= 1.0 and data.max() > 0.5
    res = runner.invoke(main, args)
    assert "0 done, 1 skipped" in res.output
    res = runner.invoke(main, ["fuse-brats", str(root), "-o", str(out), "--method", "nope"])
    assert res.exit_code == 2 and "unknown fusion method" in res.output


def test_fuse_axial_handles_empty_slices():
    rng = np.random.default_rng(1)
    a = np.zeros((6, 6, 4), np.float32)
    b = np.zeros((6, 6, 4), np.float32)
    a[:, :, 1:3] = rng.random((6, 6, 2))
    b[:, :, 2:4] = rng.random((6, 6, 2))
    out = fuse_axial(a, b, "average")
    assert np.all(out[:, :, 0] == 0)  # both empty
    np.testing.assert_array_equal(out[:, :, 1], a[:, :, 1])  # FLAIR empty: T2 alone
    np.testing.assert_allclose(out[:, :, 2], (a[:, :, 2] + b[:, :, 2]) / 2, atol=1e-6)
    np.testing.assert_array_equal(out[:, :, 3], b[:, :, 3])


def test_fuse_brats_runs_learned_methods_with_pair_and_options(tmp_path: Path):
    """Regression: `fuse-brats --dims 2|both --method clinicalfmamba` failed on every case (no --pair/-O,
    and the 2D model ships three weight files); now --pair picks the 2D weights (default: the first tag)."""
    from neurofuse.synthetic import SynthConfig, write_cohort

    root = write_cohort(tmp_path / "syn", SynthConfig(cases=2, size=16), progress=False)
    shutil.rmtree(discover(root)[1].path("t2").parent)  # one case is enough
    out = tmp_path / "out"
    runner = CliRunner()
    base = ["fuse-brats", str(root), "-o", str(out), "--method", "clinicalfmamba", "--dims", "both"]
    res = runner.invoke(main, base)
    assert res.exit_code == 0 and "1 done, 0 skipped, 0 failed" in res.output, res.output
    (case,) = [p for p in out.iterdir() if p.is_dir()]
    default = np.asarray(nib.load(str(case / f"{case.name}_fused-clinicalfmamba-2d.nii.gz")).dataobj)
    assert (case / f"{case.name}_fused-clinicalfmamba-3d.nii.gz").is_file()
    res = runner.invoke(main, [*base[:-1], "2", "--pair", "spect-mri", "--overwrite"])
    assert res.exit_code == 0 and "1 done" in res.output, res.output
    spect = np.asarray(nib.load(str(case / f"{case.name}_fused-clinicalfmamba-2d.nii.gz")).dataobj)
    assert default.shape == spect.shape and not np.allclose(default, spect)  # other weights, other result
    res = runner.invoke(main, ["fuse-brats", str(root), "-o", str(out), "--method", "dwt", "-O", "wavelet=haar"])
    assert res.exit_code == 0 and "1 done" in res.output, res.output
    res = runner.invoke(main, ["fuse-brats", str(root), "-o", str(out), "--method", "dwt", "-O", "wavelet=nope",
                               "--overwrite"])
    assert res.exit_code == 1 and "unknown discrete wavelet" in res.output


def test_discover_every_real_layout(data_dir: Path):
    """All 15 real T2/FLAIR volumes of the development data: 2012 converted, 2019 training and
    validation, 2021, 2023 GLI and MET, found through the one discovery with their grades where known."""
    from neurofuse.brats import discover

    cases = {c.id: c for c in discover(data_dir, require=("t2", "flair"))}
    assert len(cases) == 15
    assert cases["BRATS_HG0015"].grade == "HGG"  # from the 2012 name
    assert cases["BraTS19_CBICA_ASK_1"].grade == "HGG" and cases["BraTS19_TCIA10_130_1"].grade == "LGG"
    assert cases["BraTS19_TCIA10_311_1"].grade is None  # validation: grade not published
    assert cases["BraTS-GLI-00001-000"].layout == "2023" and cases["BraTS2021_00000"].paths["seg"].is_file()
    assert sum(c.id.startswith("BraTS2021_") for c in cases.values()) == 8
