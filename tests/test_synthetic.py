"""Synthetic graded cohorts: layout, determinism, planted attributes and the shuffled-label null."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from neurofuse.brats import discover
from neurofuse.cli import main
from neurofuse.errors import UsageError
from neurofuse.synthetic import SynthConfig, ideal_auc, make_case, read_truth, write_cohort


def test_ideal_auc_values():
    assert ideal_auc(0.0, 1) == pytest.approx(0.5)
    assert ideal_auc(1.0, 1) == pytest.approx(0.7602, abs=1e-4)  # Phi(1 / sqrt 2)
    assert ideal_auc(1.0, 2) == pytest.approx(0.8413, abs=1e-4)  # Phi(1)


def test_cohort_layout_and_truth(tmp_path: Path):
    res = CliRunner().invoke(main, ["synth-brats", str(tmp_path), "--cases", "6", "--size", "16",
                                    "--effect", "1", "--seed", "3"])
    assert res.exit_code == 0, res.output
    root = tmp_path / "MICCAI_BraTS_2019_Data_Training"
    cases = discover(tmp_path)
    assert len(cases) == 6 and sum(c.label for c in cases) == 3
    truth = {r["id"]: r for r in read_truth(root)}
    for c in cases:
        assert sorted(c.paths) == ["flair", "seg", "t1", "t1ce", "t2"]
        assert c.paths["t2"].parent.parent.name == c.grade == truth[c.id]["grade"] == truth[c.id]["true_grade"]
        t2 = nib.load(str(c.paths["t2"]))
        seg = np.asarray(nib.load(str(c.paths["seg"])).dataobj)
        assert t2.shape == (16, 16, 16) and t2.get_data_dtype() == np.int16
        assert set(np.unique(seg)) <= {0, 1, 2, 4} and (seg == 2).any()
        assert np.all(np.asarray(t2.dataobj)[seg > 0] > 0)  # the lesion lies in the brain
    mapping = (root / "name_mapping.csv").read_text(encoding="utf-8").splitlines()
    assert mapping[0] == "Grade,BraTS_2019_subject_ID" and len(mapping) == 7
    meta = json.loads((root / "synthetic.json").read_text(encoding="utf-8"))
    assert meta["config"]["effect"] == 1.0 and meta["ideal_auc"]["both"] > meta["ideal_auc"]["t2"]
    res = CliRunner().invoke(main, ["synth-brats", str(tmp_path), "--cases", "4", "--size", "16"])
    assert res.exit_code == 2 and "--overwrite" in res.output
    res = CliRunner().invoke(main, ["synth-brats", str(tmp_path), "--cases", "4", "--size", "16", "--overwrite"])
    assert res.exit_code == 0 and len(discover(tmp_path)) == 4  # old cases are gone


def test_refuses_to_overwrite_foreign_folder(tmp_path: Path):
    (tmp_path / "MICCAI_BraTS_2019_Data_Training" / "HGG").mkdir(parents=True)
    with pytest.raises(UsageError, match="not a synthetic cohort"):
        write_cohort(tmp_path, SynthConfig(cases=2, size=16), overwrite=True, progress=False)


def test_make_case_is_deterministic():
    cfg = SynthConfig(size=16)
    a, ta = make_case(np.random.default_rng(5), cfg, hgg=True)
    b, tb = make_case(np.random.default_rng(5), cfg, hgg=True)
    assert ta == tb
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_attributes_follow_grade_and_are_visible():
    """a_t2 and a_flair differ by `effect` SDs between grades; necrosis size shows in the seg and the
    T2 image; the FLAIR halo shows in FLAIR but leaves T2 at normal-tissue values."""
    cfg = SynthConfig(size=24, effect=2.0)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(24):
        vols, attrs = make_case(rng, cfg, hgg=i % 2 == 0)
        seg, t2, flair = vols["seg"], vols["t2"], vols["flair"]
        normal = (seg == 0) & (t2 > 0)
        bright_flair = (flair[seg == 2] > 1.2 * np.median(flair[normal])).sum()
        bright_t2 = (t2[seg == 2] > 1.3 * np.median(t2[normal])).sum()
        rows.append((i % 2 == 0, attrs["a_t2"], attrs["a_flair"], (seg == 1).sum() / (seg == 4).sum(),
                     (bright_flair - bright_t2) / (seg > 0).sum()))
    r = np.array(rows, dtype=float)
    hgg = r[:, 0] == 1
    assert r[hgg, 1].mean() - r[~hgg, 1].mean() == pytest.approx(2.0, abs=1.0)
    assert r[hgg, 2].mean() - r[~hgg, 2].mean() == pytest.approx(2.0, abs=1.0)
    assert np.corrcoef(r[:, 1], r[:, 3])[0, 1] > 0.6  # necrosis / rim volume tracks a_t2
    assert np.corrcoef(r[:, 2], r[:, 4])[0, 1] > 0.6  # FLAIR-only bright volume tracks a_flair
    assert np.all(r[:, 4] > 0)  # the halo is brighter in FLAIR than in T2


def test_shuffled_labels_keep_counts_and_images(tmp_path: Path):
    plain = write_cohort(tmp_path / "a", SynthConfig(cases=10, size=16, seed=1), progress=False)
    shuf = write_cohort(tmp_path / "b", SynthConfig(cases=10, size=16, seed=1, shuffle_labels=True),
                        progress=False)
    ta, tb = read_truth(plain), read_truth(shuf)
    assert [r["true_grade"] for r in ta] == [r["true_grade"] for r in tb]
    assert sorted(r["grade"] for r in tb) == sorted(r["grade"] for r in ta)
    assert any(r["grade"] != r["true_grade"] for r in tb)
    assert [r["a_t2"] for r in ta] == [r["a_t2"] for r in tb]  # same images, only the grades move
