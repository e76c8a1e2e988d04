"""evaluate_dirs, summarize and the `neurofuse evaluate` command on small generated PNG folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from neurofuse.cli import main
from neurofuse.evaluate import evaluate_dirs, summarize


@pytest.fixture()
def folders(tmp_path):
    rng = np.random.default_rng(0)
    dirs = {k: tmp_path / k for k in ("a", "b", "f")}
    for d in dirs.values():
        d.mkdir()
    for i in (1, 2, 10):
        a = (rng.random((48, 48)) * 255).astype(np.uint8)
        b = (rng.random((48, 48)) * 255).astype(np.uint8)
        f = ((a.astype(int) + b) // 2).astype(np.uint8)
        for k, x in (("a", a), ("b", b), ("f", f)):
            Image.fromarray(x).save(dirs[k] / f"{i}.png")
    return dirs


def test_summarize_mean_std():
    rows = [{"name": "x", "PSNR": 1.0, "SSIM": 0.5}, {"name": "y", "PSNR": 3.0, "SSIM": 0.5}]
    t = {r["metric"]: r for r in summarize(rows)}
    assert t["PSNR"]["mean"] == 2.0 and t["PSNR"]["std"] == pytest.approx(np.sqrt(2.0))
    assert t["SSIM"]["std"] == 0.0 and t["SSIM"]["better"] == "higher" and t["PSNR"]["n"] == 2


def test_evaluate_dirs_writes_tables(folders, tmp_path):
    out = tmp_path / "res.csv"
    res = evaluate_dirs(folders["a"], folders["b"], folders["f"], ["PSNR", "EN", "CC"], "standard", out,
                        progress=False)
    assert [r["name"] for r in res.rows] == ["1.png", "2.png", "10.png"]
    lines = out.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "name,PSNR,EN,CC" and len(lines) == 4
    assert (tmp_path / "res_summary.csv").exists()
    assert "| PSNR |" in (tmp_path / "res_summary.md").read_text(encoding="utf-8")


def test_cli_triplet_json_and_folders(folders, tmp_path):
    r = CliRunner()
    a, b, f = (str(folders[k] / "1.png") for k in "abf")
    res = r.invoke(main, ["evaluate", a, b, f, "--json", "--metrics", "PSNR,SSIM"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert set(out["values"]) == set(out["conventions"]) == {"PSNR", "SSIM"} and out["preset"] == "standard"
    assert "sum over sources" in out["conventions"]["SSIM"] and out["better"]["PSNR"] == "higher"
    res = r.invoke(main, ["evaluate", "--a", str(folders["a"]), "--b", str(folders["b"]), "--fused",
                          str(folders["f"]), "--preset", "clinicalfmamba", "-o", str(tmp_path / "r.csv"),
                          "--no-progress"])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "r_summary.md").read_text(encoding="utf-8")
    assert "| EN_unique † |" in md and "not comparable between float and 8-bit" in md and "| convention |" in md
    res = r.invoke(main, ["evaluate", a, b, f, "--metrics", "BOGUS"])
    assert res.exit_code == 2 and "unknown metric" in res.output
    res = r.invoke(main, ["evaluate", "--a", str(folders["a"])])
    assert res.exit_code == 2


def _evaluate_ok(*args: str) -> str:
    res = CliRunner().invoke(main, ["evaluate", *args])
    assert res.exit_code == 0, res.output
    return res.output


def test_en_unique_is_flagged_and_last(folders, tmp_path):
    """EN_unique (not comparable between float and 8-bit outputs) is never a headline: last, daggered, explained."""
    triplet = [str(folders[k] / "1.png") for k in "abf"]
    out = json.loads(_evaluate_ok(*triplet, "--json", "--metrics", "EN_unique,PSNR,EN"))
    assert list(out["values"]) == ["PSNR", "EN", "EN_unique"]
    assert list(out["flags"]) == ["EN_unique"] and "not comparable" in out["flags"]["EN_unique"]
    lines = _evaluate_ok(*triplet, "--metrics", "EN_unique,PSNR").splitlines()
    assert lines[1].startswith("PSNR ") and lines[2].startswith("EN_unique † ")
    assert lines[3].startswith("† EN_unique: entropy over distinct float values")
    dirs = [x for k in "abf" for x in (f"--{'fused' if k == 'f' else k}", str(folders[k]))]
    _evaluate_ok(*dirs, "--metrics", "EN_unique,PSNR", "-o", str(tmp_path / "r.csv"), "--no-progress")
    assert (tmp_path / "r.csv").read_text(encoding="utf-8").splitlines()[0] == "name,PSNR,EN_unique"
    rows = [ln for ln in (tmp_path / "r_summary.md").read_text(encoding="utf-8").splitlines() if ln.startswith("| ")]
    assert rows[-2].startswith("| PSNR |") and rows[-1].startswith("| EN_unique † |")
