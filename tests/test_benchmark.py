"""`neurofuse benchmark` on three generated pairs: tables, per-image rows computed directly, the one
mean ± std convention, and the grid's size."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from neurofuse.benchmark import write_grid
from neurofuse.cli import main
from neurofuse.data import harvard_split
from neurofuse.errors import UsageError
from neurofuse.evaluate import mean_std, summarize, summary_markdown

IDS = ["4007", "4008", "4009"]


@pytest.fixture
def subset(tmp_path):
    """A Harvard-layout SPECT-MRI folder of three generated 256x256 pairs: 8-bit gray MRI spanning 0-255,
    colour SPECT (its Y channel is what the methods fuse), and a split.csv putting all three in val."""
    root = tmp_path / "SPECT-MRI"
    for mod in ("MRI", "SPECT"):
        (root / mod).mkdir(parents=True)
    g = np.stack(np.meshgrid(np.linspace(-1, 1, 256), np.linspace(-1, 1, 256), indexing="ij"))
    for k, i in enumerate(IDS):
        rng = np.random.default_rng(k)
        head = (g[0] / 0.8) ** 2 + (g[1] / 0.7) ** 2 < 1
        mri = head * (0.5 + 0.3 * np.sin((5 + k) * g[0]) * np.cos(4 * g[1]) + 0.1 * rng.random((256, 256)))
        mri = np.round(255 * mri / mri.max()).astype(np.uint8)
        uptake = head * np.exp(-((g[0] - 0.2 * k) ** 2 + (g[1] + 0.1) ** 2) / 0.1)
        spect = np.stack([uptake, uptake**2, 0.3 * uptake], -1)
        Image.fromarray(mri).save(root / "MRI" / f"{i}.png")
        Image.fromarray(np.round(250 * spect).astype(np.uint8), "RGB").save(root / "SPECT" / f"{i}.png")
    (root / "split.csv").write_text("id,case,split\n" + "".join(f"{i},4,val\n" for i in IDS))
    return root


def _inputs(root, i):
    """A and B as every method sees them, written out: MRI / 255 (it spans 0-255), SPECT's full-range BT.601
    Y min-max scaled."""
    a = np.asarray(Image.open(root / "MRI" / f"{i}.png"), dtype=np.float64) / 255.0
    rgb = np.asarray(Image.open(root / "SPECT" / f"{i}.png"), dtype=np.float64)
    y = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    return a, (y - y.min()) / (y.max() - y.min())


def _psnr(x, f, peak):
    return 10 * math.log10(peak**2 / np.mean((x - f) ** 2))


def test_benchmark_command_on_three_pairs(subset, tmp_path):
    out = tmp_path / "res"
    res = CliRunner().invoke(
        main, ["benchmark", "--data", str(subset), "--methods", "average,maximum", "-o", str(out), "--grid-rows", "2"]
    )
    assert res.exit_code == 0, res.output
    rows = list(csv.DictReader(open(out / "per_image.csv", encoding="utf-8")))
    assert len(rows) == 2 * 3 * 2  # methods x pairs x presets
    assert {r["method"] for r in rows} == {"average", "maximum"}
    summary = list(csv.DictReader(open(out / "summary_clinicalfmamba.csv", encoding="utf-8")))
    assert [r["method"] for r in summary] == ["average", "maximum"]
    cols = list(summary[0])
    assert cols[6:16:2] == ["PSNR_mean", "SSIM_mean", "FMI_mean", "FSIM_mean", "EN_mean"]  # the paper's order
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "## Preset `standard`" in md and "| average |" in md
    # per-image values against a direct computation: PSNR under the clinicalfmamba preset (float [0, 1],
    # the mean of PSNR(F, A) and PSNR(F, B)) and MSE under standard (8-bit: round(255 x), mean over sources)
    fusions = {"average": lambda a, b: (a + b) / 2, "maximum": np.maximum}
    expect: dict[tuple[str, str], dict[str, float]] = {}
    for i in IDS:
        a, b = _inputs(subset, i)
        for method, rule in fusions.items():
            f = rule(a, b)
            a8, b8, f8 = (np.round(255 * x) for x in (a, b, f))
            expect[method, i] = {"PSNR": 0.5 * (_psnr(a, f, 1.0) + _psnr(b, f, 1.0)),
                                 "MSE": 0.5 * (np.mean((f8 - a8) ** 2) + np.mean((f8 - b8) ** 2))}
    for r in rows:
        want = expect[r["method"], r["id"]]
        if r["preset"] == "clinicalfmamba":
            assert float(r["PSNR"]) == pytest.approx(want["PSNR"], rel=1e-6)
        else:
            assert float(r["MSE"]) == pytest.approx(want["MSE"], rel=1e-9)
    # summaries: mean and sample std (ddof 1) of those rows, for every metric of every preset
    for preset in ("clinicalfmamba", "standard"):
        for srow in csv.DictReader(open(out / f"summary_{preset}.csv", encoding="utf-8")):
            mine = [r for r in rows if r["method"] == srow["method"] and r["preset"] == preset]
            for c in (k[:-5] for k in srow if k.endswith("_mean")):
                vals = np.array([float(r[c]) for r in mine])
                assert float(srow[f"{c}_mean"]) == pytest.approx(vals.mean(), rel=1e-5, abs=1e-12), c
                assert float(srow[f"{c}_std"]) == pytest.approx(vals.std(ddof=1), rel=1e-5, abs=1e-12), c
    psnr = [expect["maximum", i]["PSNR"] for i in IDS]
    assert f"{np.mean(psnr):.4g} ± {np.std(psnr, ddof=1):.2g}" in md
    grid = Image.open(out / "grid.png")
    assert grid.size == (4 * 256 + 3 * 4, 18 + 2 * 256 + 4) and grid.mode == "RGB"
    assert (out / "bars.png").stat().st_size > 0


def test_one_mean_std_convention_for_every_table():
    """mean_std: sample std (ddof 1), NaN and inf left out, inf counted; evaluate.summarize and the benchmark
    tables both use it, and their Markdown says '(k inf)'."""
    s = mean_std([1.0, 3.0, float("inf"), float("nan"), 5.0])
    assert (s.mean, s.std, s.n, s.inf) == (3.0, 2.0, 3, 1)
    assert s.cell(".2f") == "3.00 ± 2.00 (1 inf)" and mean_std([2.0, 4.0]).cell(".1f") == "3.0 ± 1.4"
    one = mean_std([7.0])
    assert (one.mean, one.std, one.n) == (7.0, 0.0, 1)
    none = mean_std([float("inf")])
    assert math.isnan(none.mean) and math.isnan(none.std) and (none.n, none.inf) == (0, 1)
    rows = [{"name": "x", "PSNR": 30.0}, {"name": "y", "PSNR": float("inf")}, {"name": "z", "PSNR": 34.0}]
    (t,) = summarize(rows)
    assert (t["mean"], t["std"], t["n"], t["inf"]) == (32.0, pytest.approx(2 * math.sqrt(2)), 2, 1)
    assert "| PSNR | 32.0000 ± 2.8284 (1 inf) | 2 | higher |" in summary_markdown([t])


def test_benchmark_leaves_inf_out_and_says_so(subset, tmp_path):
    """F = A on a pair (a method that returns its first input) makes PSNR infinite there: the mean and
    std are over the finite pairs, and the table cell says how many were left out."""
    from neurofuse.benchmark import MethodResult, _write_markdown, _write_summary_csv

    r = MethodResult("first", "classical", 0, latencies=[0.1, 0.1, 0.1])
    r.metrics = {"standard": [{"id": "1", "PSNR": 30.0}, {"id": "2", "PSNR": float("inf")},
                              {"id": "3", "PSNR": 34.0}]}
    _write_summary_csv(tmp_path / "s.csv", [r], "standard")
    row = next(csv.DictReader(open(tmp_path / "s.csv", encoding="utf-8")))
    assert float(row["PSNR_mean"]) == 32.0 and float(row["PSNR_std"]) == pytest.approx(2 * math.sqrt(2), rel=1e-5)
    _write_markdown(tmp_path / "s.md", [r], ["standard"], subset, "val", 3)
    assert "| first | 32 ± 2.8 (1 inf) |" in (tmp_path / "s.md").read_text(encoding="utf-8")


def test_split_pairs_reads_split(subset):
    modality, pairs = harvard_split(subset, "val")
    assert modality == "SPECT" and [p[0] for p in pairs] == ["4007", "4008", "4009"]


def test_write_grid_layout(tmp_path):
    cells = [[np.zeros((10, 12))] * 3, [np.ones((10, 12, 3))] * 3]
    write_grid(tmp_path / "g.png", ["a", "b"], cells, header=5, pad=2)
    img = np.asarray(Image.open(tmp_path / "g.png"))
    assert img.shape == (5 + 3 * 10 + 2 * 2, 2 * 12 + 2, 3)
    assert img[5:15, 14:26].min() == 255 and img[5:15, :12].max() == 0
    write_grid(tmp_path / "r.png", ["a", "b"], cells, header=5, pad=2, row_labels=["one\nrow", "2", "3"])
    img = np.asarray(Image.open(tmp_path / "r.png"))
    left = 6 * 3 + 4 + 2  # the longest label line, 6 px a character, and a gap
    assert img.shape == (5 + 3 * 10 + 2 * 2, left + 2 * 12 + 2, 3)
    assert img[5:15, left:left + 12].max() == 0 and img[5:15, :left].min() < 255  # cell black, label drawn
    with pytest.raises(UsageError, match="row labels"):
        write_grid(tmp_path / "x.png", ["a", "b"], cells, row_labels=["1"])


def test_undefined_metric_becomes_nan_not_a_crash(rng):
    from neurofuse.benchmark import metrics_or_nan

    a = rng.random((32, 32))
    b = rng.random((32, 32))
    row = metrics_or_nan(a, b, a.copy(), "standard")  # F = A: SCD's correlation with F - A is undefined
    assert np.isnan(row["SCD"]) and np.isfinite(row["PSNR"]) and np.isfinite(row["SSIM"])
