"""Datasets: Harvard pairs (split, Y channel, normalisation, paired augmentation) and BraTS volumes."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from neurofuse.brats import PreprocessConfig, brain_bbox
from neurofuse.data import HarvardPairs, VolumePairs
from neurofuse.errors import InputError
from neurofuse.io import rgb_to_ycbcr


def make_harvard(root: Path, n_train: int = 4, n_val: int = 2, size: int = 40, seed: int = 0) -> Path:
    """A SPECT-MRI-like folder: gray MRI, RGB 'SPECT' whose Y is 255 - MRI, split.csv."""
    rng = np.random.default_rng(seed)
    (root / "MRI").mkdir(parents=True)
    (root / "SPECT").mkdir()
    rows = []
    for i in range(n_train + n_val):
        id_ = str(1000 + i)
        mri = rng.integers(10, 240, (size, size), dtype=np.uint8)
        inv = (255 - mri.astype(np.int32)).astype(np.uint8)
        Image.fromarray(mri).save(root / "MRI" / f"{id_}.png")
        Image.fromarray(np.stack([inv] * 3, axis=-1)).save(root / "SPECT" / f"{id_}.png")
        rows.append({"id": id_, "case": str(i % 3), "split": "train" if i < n_train else "val"})
    with open(root / "split.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "case", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_harvard_split_range_and_luma(tmp_path):
    root = make_harvard(tmp_path / "pairs", n_train=3, n_val=2)
    train, val = HarvardPairs(root, "train"), HarvardPairs(root, "val")
    assert (len(train), len(val), len(HarvardPairs(root, "all"))) == (3, 2, 5)
    assert val.ids == ["1003", "1004"] and train.modality_b == "SPECT"
    item = val[0]
    assert item["a"].shape == (1, 40, 40) and item["b"].shape == (1, 40, 40) and item["id"] == "1003"
    for x in (item["a"], item["b"]):
        assert float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0)
    # b is the Y channel of an RGB image whose Y is 255 - MRI, so after min-max b == 1 - a
    rgb = np.asarray(Image.open(root / "SPECT" / "1003.png"), dtype=np.float64)
    y = rgb_to_ycbcr(rgb)[..., 0]
    np.testing.assert_allclose(item["b"][0].numpy(), (y - y.min()) / (y.max() - y.min()), atol=1e-6)
    np.testing.assert_allclose(item["b"][0].numpy(), 1 - item["a"][0].numpy(), atol=1e-5)


def test_harvard_augmentation_is_paired_and_seeded(tmp_path):
    root = make_harvard(tmp_path / "pairs")
    ds = HarvardPairs(root, "train", crop=16, augment=True, seed=5)
    first = [ds[i] for i in range(len(ds))]
    for item in first:
        assert item["a"].shape == (1, 16, 16)
        np.testing.assert_allclose(item["b"].numpy(), 1 - item["a"].numpy(), atol=1e-5)  # same crop/flip/rot
    again = HarvardPairs(root, "train", crop=16, augment=True, seed=5)
    assert all(np.array_equal(again[i]["a"], first[i]["a"]) for i in range(len(ds)))
    ds.set_epoch(1)
    assert not all(np.array_equal(ds[i]["a"], first[i]["a"]) for i in range(len(ds)))


def test_harvard_errors(tmp_path):
    root = make_harvard(tmp_path / "pairs")
    with pytest.raises(InputError, match="crop 64"):
        HarvardPairs(root, "train", crop=64)[0]
    with pytest.raises(InputError, match="unknown split"):
        HarvardPairs(root, "bogus")
    with pytest.raises(InputError, match="no rows for split 'test'"):
        HarvardPairs(root, "test")
    (root / "split.csv").unlink()
    with pytest.raises(InputError, match="split.csv"):
        HarvardPairs(root)


def test_harvard_real_split(data_dir):
    root = data_dir / "harvard/SPECT-MRI"
    with open(root / "split.csv", newline="", encoding="utf-8") as fh:
        val_ids = {r["id"] for r in csv.DictReader(fh) if r["split"] == "val"}
    ds = HarvardPairs(root, "val", ids=sorted(val_ids)[:4])
    assert set(ds.ids) <= val_ids and len(ds) == 4
    item = ds[0]
    assert item["a"].shape == (1, 256, 256) and float(item["b"].max()) == pytest.approx(1.0)


def _write_case(folder: Path, t2_tag: str, flair_tag: str, rng: np.random.Generator) -> None:
    """Case folder `<ID>/<ID><tag>.nii.gz`: a 40x36x30 volume with a 20x24x10 'brain' at an offset;
    FLAIR = 2 * T2 (the same after normalisation)."""
    folder.mkdir(parents=True)
    t2 = np.zeros((40, 36, 30), np.float32)
    t2[5:25, 6:30, 10:20] = rng.uniform(1, 100, (20, 24, 10))
    for tag, vol in ((t2_tag, t2), (flair_tag, 2 * t2)):
        nib.save(nib.Nifti1Image(vol, np.eye(4)), folder / f"{folder.name}{tag}.nii.gz")


def test_volume_pairs_layouts_bbox_and_patches(tmp_path):
    rng = np.random.default_rng(1)
    _write_case(tmp_path / "HGG/BraTS19_X_1", "_t2", "_flair", rng)
    _write_case(tmp_path / "BraTS-MET-00001-000", "-t2w", "-t2f", rng)
    prep = PreprocessConfig(size=32, mode="crop")
    train, val = VolumePairs(tmp_path, "train", prep=prep), VolumePairs(tmp_path, "val", prep=prep)
    assert train.ids == ["BraTS-MET-00001-000"] and val.ids == ["BraTS19_X_1"]  # two cases: last one is val
    a = train[0]["a"][0].numpy()
    assert a.shape == (32, 32, 32) and a.max() == pytest.approx(1.0)
    box = brain_bbox([a])
    assert [s.stop - s.start for s in box] == [20, 24, 10]  # the brain, centred by the crop/pad
    resampled = VolumePairs(tmp_path, "train", prep=PreprocessConfig(size=32, margin=0))[0]["a"][0].numpy()
    assert max(s.stop - s.start for s in brain_bbox([resampled])) == 32  # longest brain axis fills the cube
    patches = VolumePairs(tmp_path, "all", crop=12, augment=True, prep=prep, seed=2)
    for i in range(2):
        item = patches[i]
        assert item["a"].shape == (1, 12, 12, 12)
        np.testing.assert_allclose(item["a"].numpy(), item["b"].numpy(), atol=1e-6)


def test_volume_single_case_and_errors(tmp_path):
    _write_case(tmp_path / "C1", "_t2", "_flair", np.random.default_rng(0))
    prep = PreprocessConfig(size=24)
    assert VolumePairs(tmp_path, "train", prep=prep).ids == VolumePairs(tmp_path, "val", prep=prep).ids == ["C1"]
    (tmp_path / "C1" / "C1_flair.nii.gz").unlink()
    with pytest.raises(InputError, match="flair"):
        VolumePairs(tmp_path, "all", prep=prep)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no BraTS case"):
        VolumePairs(tmp_path / "empty", "all", prep=prep)
    with pytest.raises(InputError, match="not a folder"):
        VolumePairs(tmp_path / "missing", "all", prep=prep)


def test_volume_real_brats(data_dir):
    ds = VolumePairs(data_dir / "brats2019", "all", prep=PreprocessConfig(size=64, margin=0),
                     ids=["BraTS19_TCIA10_130_1"])
    item = ds[0]
    assert item["id"] == "BraTS19_TCIA10_130_1" and item["a"].shape == (1, 64, 64, 64)
    box = brain_bbox([item["a"][0].numpy(), item["b"][0].numpy()])
    assert max(s.stop - s.start for s in box) == 64
