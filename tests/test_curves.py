"""Learning curves from training logs: the PNG and the last-row table."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from neurofuse.cli import main
from neurofuse.curves import last_rows_table, plot_learning_curves, read_log
from neurofuse.errors import InputError


def _log(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "log.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder


def _rows(offset: float) -> list[dict]:
    return [{"step": s, "pixels": s * 1000, "pixels_full": 0, "images": s, "val_items": n,
             "val_SSIM": 0.5 + offset + s / 100, "val_PSNR": 15 + s, "val_FMI": 0.8, "val_Qabf": 0.4}
            for s, n in ((1, 4), (2, 4), (3, 50))]


def test_plot_and_table(tmp_path):
    a, b = _log(tmp_path / "a", _rows(0.0)), _log(tmp_path / "b", _rows(0.1))
    png = plot_learning_curves({"A": a, "B": b}, tmp_path / "c.png", title="t")
    assert Image.open(png).size[0] > 400
    table = last_rows_table({"A": a, "B": b}, tmp_path / "t.csv")
    with open(table, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["run"] for r in rows] == ["A", "B"] and float(rows[1]["val_SSIM"]) == pytest.approx(0.63)
    assert "| B |" in (tmp_path / "t.md").read_text(encoding="utf-8")


def test_cli_labels_and_missing_log(tmp_path):
    a = _log(tmp_path / "run", _rows(0.0))
    res = CliRunner().invoke(main, ["curves", f"mine={a}", "-o", str(tmp_path / "x.png"), "--table",
                                    str(tmp_path / "x.csv")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.png").is_file() and "mine" in (tmp_path / "x.md").read_text(encoding="utf-8")
    with pytest.raises(InputError, match="training log not found"):
        read_log(tmp_path / "nothing")


def test_3d_logs_get_the_3d_metrics():
    from neurofuse.curves import METRICS_3D, metrics_in

    assert metrics_in([[{"step": 1.0, "val_PSNR": 20.0, "val_MS_SSIM": 0.7, "val_EN": 4.0}]]) == METRICS_3D
    assert metrics_in([[{"step": 1.0, "val_PSNR": 20.0, "val_SSIM": 0.7}]])[0] == "val_SSIM"


def test_stages_continue_the_counts(tmp_path):
    from neurofuse.curves import read_stages

    first, second = _log(tmp_path / "s1", _rows(0.0)), _log(tmp_path / "s2", _rows(0.1))
    joined = read_stages([first, second])
    assert [r["step"] for r in joined] == [1, 2, 3, 4, 5, 6]
    assert [r["pixels"] for r in joined] == [1000, 2000, 3000, 4000, 5000, 6000]
    assert joined[3]["val_SSIM"] == pytest.approx(0.61)  # metrics are not shifted
    assert read_stages(first) == read_log(first)
    res = CliRunner().invoke(main, ["curves", f"both={first}+{second}", "-o", str(tmp_path / "x.png"), "--table",
                                    str(tmp_path / "x.csv")])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "x.csv", newline="", encoding="utf-8") as fh:
        assert [float(r["pixels"]) for r in csv.DictReader(fh)] == [6000]


def test_3d_sharpness_panel_shows_the_sources_levels(tmp_path):
    """A 3D log's AG panel carries the sources' AG (val_AG_a / val_AG_b of the last row that has them) as
    reference lines, and logs without AG (older stages) still plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [{"step": s, "pixels": s * 1000, "val_items": 2, "val_MS_SSIM": 0.7, "val_PSNR": 20.0, "val_EN": 4.0,
             **({"val_AG": 3.0 + s / 10, "val_AG_a": 3.5, "val_AG_b": 3.9} if s > 1 else {})} for s in (1, 2, 3)]
    stages = [_log(tmp_path / "s1", rows[:1]), _log(tmp_path / "s2", rows[1:])]
    seen = []
    real = plt.Axes.axhline
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plt.Axes, "axhline", lambda self, y, **kw: seen.append(y) or real(self, y, **kw))
        plot_learning_curves({"3d": stages}, tmp_path / "c.png")
    assert seen == [3.5, 3.9] and (tmp_path / "c.png").stat().st_size > 0
