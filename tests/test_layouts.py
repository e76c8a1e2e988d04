"""Pair folders in the published layouts (Harvard, CDDFuse, EMFusion, IFCNN), split files, and
`benchmark` / `evaluate` / `split` running on them unchanged."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from neurofuse.cli import main
from neurofuse.errors import InputError
from neurofuse.layouts import case_of, find_pairs, make_split, read_split, select_split


def _img(rng: np.random.Generator, size: int = 40, colour: bool = False) -> Image.Image:
    """A smooth blob image (metrics need structure, not white noise)."""
    y, x = np.mgrid[:size, :size] / size
    c = rng.uniform(0.3, 0.7, 2)
    v = np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2) / 0.05) + 0.2 * rng.random((size, size))
    v = np.round(255 * v / v.max()).astype(np.uint8)
    return Image.fromarray(np.stack([v, v // 2, 255 - v], -1) if colour else v)


def make_folders(root: Path, names: tuple[str, str], ids, colour_b: bool = False, ext: str = ".png",
                 extra_a=(), extra_b=(), seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for folder, extra, colour in ((names[0], extra_a, False), (names[1], extra_b, colour_b)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in [*ids, *extra]:
            _img(rng, colour=colour).save(root / folder / f"{i}{ext}")
    return root


def make_ifcnn(root: Path, ids, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in ids:
        for k in (1, 2):
            _img(rng).save(root / f"{i}_{k}.tif")
    return root


def test_cddfuse_emfusion_ifcnn_layouts(tmp_path):
    cdd = make_folders(tmp_path / "test_img/MRI_SPECT", ("MRI", "SPECT"), ["1", "2", "10"], colour_b=True)
    ps = find_pairs(data=cdd)
    assert (ps.name_a, ps.name_b, [p[0] for p in ps.pairs]) == ("MRI", "SPECT", ["1", "2", "10"])
    assert find_pairs(data=tmp_path / "test_img").pairs == ps.pairs  # one pair set inside: found
    emf = make_folders(tmp_path / "emf", ("mri", "ct"), ["a", "b"], extra_a=["only_a"], extra_b=["only_b"])
    ps = find_pairs(data=emf)
    assert (ps.name_a, ps.name_b, len(ps.pairs)) == ("mri", "ct", 2)
    assert [p.name for p in ps.only_a] == ["only_a.png"] and [p.name for p in ps.only_b] == ["only_b.png"]
    assert "1 mri file(s) without a partner (only_a.png)" in ps.unpaired_message()
    ifc = make_ifcnn(tmp_path / "ifcnn", ["c01", "c02", "c10"])
    ps = find_pairs(data=ifc)
    assert [(i, a.name, b.name) for i, a, b in ps.pairs] == [
        ("c01", "c01_1.tif", "c01_2.tif"), ("c02", "c02_1.tif", "c02_2.tif"), ("c10", "c10_1.tif", "c10_2.tif")]
    ps = find_pairs(a=ifc, b=ifc, pattern=("{id}_1.tif", "{id}_2.tif"))
    assert len(ps.pairs) == 3 and not ps.only_a and not ps.only_b


def test_layout_errors_name_the_problem(tmp_path):
    make_folders(tmp_path / "sets/MRI_CT", ("MRI", "CT"), ["1"])
    make_folders(tmp_path / "sets/MRI_PET", ("MRI", "PET"), ["1"])
    with pytest.raises(InputError, match="several pair sets .*MRI_CT, MRI_PET"):
        find_pairs(data=tmp_path / "sets")
    make_folders(tmp_path / "odd", ("scans", "other"), ["1"])
    with pytest.raises(InputError, match="no pairs found.*any case.*other, scans"):
        find_pairs(data=tmp_path / "odd")
    ps = find_pairs(data=tmp_path / "sets/MRI_CT")
    with pytest.raises(InputError, match="no split file for split 'val': use `split=\"all\"`.*neurofuse split"):
        select_split(ps, "val")  # the library names its keyword; the CLI says --split all:
    res = CliRunner().invoke(main, ["benchmark", "--data", str(tmp_path / "sets/MRI_CT"), "--split", "val",
                                    "-o", str(tmp_path / "r"), "--methods", "average"])
    assert res.exit_code == 1 and "use --split all, or write one with `neurofuse split`" in res.output
    assert select_split(ps, "all") == ps.pairs


def test_patient_level_split_file(tmp_path):
    ids = [f"{p}{s:03d}" for p in (2, 3, 16, 21, 28) for s in range(4)]
    rows = make_split(ids, val=0.2, test=0.2, seed=1)
    assert {r["case"] for r in rows} == {"2", "3", "16", "21", "28"}
    by_case: dict[str, set[str]] = {}
    for r in rows:
        by_case.setdefault(r["case"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_case.values())  # whole patients
    assert sorted(s.pop() for s in by_case.values()).count("train") == 3
    assert case_of("BraTS_017_s12", r"(\d+)_s") == "017" and case_of("c01") == "c01"
    with pytest.raises(InputError, match="too few"):
        make_split(["c01", "c02"], val=0.5, test=0.5 - 1e-9)


def test_split_command_then_benchmark_test_split(tmp_path):
    root = make_folders(tmp_path / "MRI_CT", ("mri", "ct"), [f"{p}{s:03d}" for p in (1, 2, 3) for s in range(2)])
    res = CliRunner().invoke(main, ["split", str(root), "--val", "0.34", "--test", "0.34", "--seed", "0"])
    assert res.exit_code == 0, res.output
    table = read_split(root / "split.csv")
    assert sorted(s for _, s in table.values()).count("test") == 2
    out = tmp_path / "res"
    res = CliRunner().invoke(main, ["benchmark", "--data", str(root), "--split", "test", "--methods", "average",
                                    "-o", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out / "per_image.csv", encoding="utf-8")))
    assert {r["id"] for r in rows} == {i for i, (_, s) in table.items() if s == "test"}


@pytest.mark.parametrize("layout", ["cddfuse", "emfusion", "ifcnn"])
def test_benchmark_runs_on_published_layouts(tmp_path, layout):
    if layout == "cddfuse":
        make_folders(tmp_path / "cdd_spect/MRI_SPECT", ("MRI", "SPECT"), ["1", "2"], colour_b=True)
        args, tag = ["--data", str(tmp_path / "cdd_spect")], "spect-mri"
    elif layout == "emfusion":
        make_folders(tmp_path / "emf", ("mri", "ct"), ["1", "2"], extra_b=["9"])
        args, tag = ["--data", str(tmp_path / "emf")], "ct-mri"
    else:
        make_ifcnn(tmp_path / "ifcnn", ["c01", "c02"])
        args, tag = ["--data", str(tmp_path / "ifcnn"), "--pair", "ct-mri"], "ct-mri"
    out = tmp_path / "res"
    res = CliRunner().invoke(main, ["benchmark", *args, "--methods", "average,ehdran", "--preset", "standard",
                                    "-o", str(out), "--no-progress", "--grid-rows", "1"])
    assert res.exit_code == 0, res.output
    assert "split: all (no split.csv: every pair)" in res.output
    assert "2 methods measured, 0 skipped" in res.output
    if layout == "emfusion":
        assert "warning:" in res.output and "1 ct file(s) without a partner (9.png)" in res.output
    summary = list(csv.DictReader(open(out / "summary_standard.csv", encoding="utf-8")))
    assert [r["method"] for r in summary] == ["average", "ehdran"] and all(r["n"] == "2" for r in summary)
    assert tag in {"spect-mri", "ct-mri"}


def test_benchmark_prints_skips_and_fails_when_every_learned_method_is_skipped(tmp_path):
    root = make_folders(tmp_path / "PET-MRI", ("MRI", "PET"), ["1", "2"], colour_b=True)
    out = tmp_path / "res"
    res = CliRunner().invoke(main, ["benchmark", "--data", str(root), "--methods", "average,ehdran",
                                    "-o", str(out), "--no-progress", "--preset", "standard"])
    assert res.exit_code == 1, res.output  # peers ship no PET-MRI weights
    assert "skipped ehdran: " in res.output and "pet-mri" in res.output
    assert "every requested learned method was skipped" in res.output
    assert (out / "summary.md").is_file()  # the classical results are still written
    res = CliRunner().invoke(main, ["benchmark", "--data", str(root), "--methods", "average", "-o",
                                    str(tmp_path / "r2"), "--no-progress", "--preset", "standard"])
    assert res.exit_code == 0, res.output  # no learned method requested


def test_evaluate_on_pattern_layout_reports_missing_fused(tmp_path):
    ifc = make_ifcnn(tmp_path / "ifcnn", ["c01", "c02", "c03"])
    fused = tmp_path / "fused"
    fused.mkdir()
    for i in ("c01", "c02"):
        Image.open(ifc / f"{i}_1.tif").save(fused / f"{i}.png")
    out = tmp_path / "ev.csv"
    res = CliRunner().invoke(main, ["evaluate", "--data", str(ifc), "--fused", str(fused), "-o", str(out),
                                    "--metrics", "PSNR,SSIM", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "1 source pair(s) have no fused file" in res.output and "c03" in res.output
    rows = list(csv.DictReader(open(out, encoding="utf-8")))
    assert [r["name"] for r in rows] == ["c01", "c02"]


def test_cli_split_names_match_the_library():
    from neurofuse.cli.options import SPLITS as CLI_SPLITS
    from neurofuse.layouts import SPLITS

    assert CLI_SPLITS == SPLITS
