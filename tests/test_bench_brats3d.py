"""benchmarks/brats3d.py on tiny synthetic volumes: the held-out volumes of a config as the trainer builds
them, a classical and a tiny learned row, metrics equal to direct `compute_metrics` calls (and, with
`-O crop=false`, to the trainer's own validation), time and memory from the fusion's own process."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["method", "case", "preset", "PSNR", "MS_SSIM", "EN", "SSIM_axial", "Qabf_axial", "AG", "EN_unique",
           "seconds", "load_seconds", "peak_rss_mb", "fusion_rss_mb", "cuda_peak_mb", "threads", "gpu", "rss_from"]


@pytest.fixture
def brats3d(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))  # the spawned fusion processes inherit sys.path
    import brats3d

    return brats3d


@pytest.fixture
def cohort(tmp_path, monkeypatch):
    """Three synthetic BraTS-2019 cases under $NEUROFUSE_DATA, a tiny 3D config holding out two of them,
    and weights of the tiny 3D model saved as `neurofuse train` saves them."""
    import torch

    from neurofuse.models.registry import create_model
    from neurofuse.synthetic import SynthConfig, write_cohort
    from neurofuse.train import save_weights

    write_cohort(tmp_path / "data", SynthConfig(cases=3, size=32), progress=False)
    monkeypatch.setenv("NEUROFUSE_DATA", str(tmp_path / "data"))
    for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):  # restored after the test (--threads sets them)
        monkeypatch.setenv(var, "1")
    val_ids = ["BraTS19_SYN_0000_1", "BraTS19_SYN_0002_1"]
    config = tmp_path / "tiny_3d.yaml"
    config.write_text(
        "model: clinicalfmamba_3d_tiny\ndata: ${NEUROFUSE_DATA}\ndataset: volumes\n"
        f"val_ids: [{', '.join(val_ids)}]\nvolume_size: 24\nvolume_fit: crop\nvolume_clip: [0.5, 99.5]\ncrop: 16\n",
        encoding="utf-8",
    )
    torch.manual_seed(0)
    weights = tmp_path / "tiny.safetensors"
    save_weights(create_model("clinicalfmamba_3d_tiny"), weights,
                 {"model": "clinicalfmamba_3d_tiny", "model_args": "{}", "step": "7"})
    return config, weights, val_ids


def test_table_on_the_held_out_volumes(brats3d, cohort, tmp_path):
    from neurofuse.fusion import fuse
    from neurofuse.inference import load_model
    from neurofuse.metrics import compute_metrics
    from neurofuse.train import TrainConfig, build_datasets, evaluate

    config, weights, val_ids = cohort
    out = tmp_path / "out"
    res = brats3d.main(["--config", str(config), "--out", str(out), "--method", "average", "--threads", "1",
                        "--learned", f"tiny=clinicalfmamba_3d_tiny:{weights}", "-O", "crop=false"], keep_fused=True)

    # the volumes: the config's held-out ones, exactly as the trainer builds them
    cfg = TrainConfig.from_yaml(config)
    val = build_datasets(cfg)[1]
    assert list(res.volumes.pairs) == val.ids == val_ids
    for i, cid in enumerate(val.ids):
        a, b = res.volumes.pairs[cid]
        assert a.shape == (24, 24, 24)
        np.testing.assert_array_equal(a, val[i]["a"][0].numpy())
        np.testing.assert_array_equal(b, val[i]["b"][0].numpy())

    with open(out / "per_case.csv", newline="", encoding="utf-8") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == COLUMNS and len(table) == 2 * 2 * 2  # methods x volumes x presets
    for row, csv_row in zip(res.rows, table, strict=True):
        a, b = res.volumes.pairs[row["case"]]
        f = res.fused[(row["method"], row["case"])]
        if row["method"] == "average":
            np.testing.assert_array_equal(f, fuse(a, b, "average"))
            assert row["load_seconds"] == 0 and row["threads"] == ""
        else:
            assert row["load_seconds"] > 0 and row["threads"] == 1
        direct = compute_metrics(a, b, f, ["PSNR", "MS_SSIM", "EN", "AG", "EN_unique", "SSIM", "Qabf"], row["preset"],
                                 slicewise="axial", per_slice=("SSIM",))
        for name, value in direct.items():
            col = f"{name}_axial" if name in ("SSIM", "Qabf") else name
            assert row[col] == value and float(csv_row[col]) == value
        assert row["seconds"] > 0 and row["peak_rss_mb"] > 0 and row["fusion_rss_mb"] >= 0
        assert np.isnan(row["cuda_peak_mb"]) and row["rss_from"] == "proc"

    # -O crop=false: the whole volume in one pass, the trainer's validation forward and metrics
    model = load_model("clinicalfmamba_3d_tiny", str(weights), None)
    import torch

    trainer = evaluate(model, val, cfg, torch.device("cpu"))
    mine = [r for r in res.rows if r["method"] == "tiny" and r["preset"] == "clinicalfmamba"]
    for name in ("PSNR", "MS_SSIM", "EN", "EN_unique"):
        # same weights and volumes; the benchmark fuses on 1 thread, the trainer on torch's count, so fp32
        # reductions differ in order (1e-5 relative in PSNR on an AVX2-only Zen 3)
        assert np.mean([r[name] for r in mine]) == pytest.approx(trainer[f"val_{name}"], rel=1e-4)

    with open(out / "summary.csv", newline="", encoding="utf-8") as fh:
        summary = list(csv.DictReader(fh))
    assert [(r["method"], r["preset"], r["n"]) for r in summary] == [
        ("average", "clinicalfmamba", "2"), ("average", "standard", "2"),
        ("tiny", "clinicalfmamba", "2"), ("tiny", "standard", "2")]
    avg = [r["Qabf_axial"] for r in res.rows if r["method"] == "average" and r["preset"] == "standard"]
    assert float(summary[1]["Qabf_axial_mean"]) == pytest.approx(np.mean(avg))
    assert float(summary[1]["Qabf_axial_std"]) == pytest.approx(np.std(avg, ddof=1))

    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "Machine:" in md and "Torch threads in the learned fusions: 1" in md and "NUMBA_NUM_THREADS=1" in md
    assert "EN_unique †" in md and "† EN_unique" in md and "peak RSS MiB" in md and "CUDA peak MiB" not in md
    t2_ag = [compute_metrics(a, b, a, ["AG"], "clinicalfmamba")["AG"] for a, b in res.volumes.pairs.values()]
    assert f"sources (a fusion as sharp as its sources reaches theirs): T2 {np.mean(t2_ag):.4g} ± " in md
    assert "model clinicalfmamba_3d_tiny" in md and "step 7" in md and ", ".join(val_ids) in md

    grid = np.asarray(Image.open(out / "grid.png"))
    rows, cols = 2 * 4, 4  # volumes x (axial, coronal, sagittal, axial 2x); T2, FLAIR, average, tiny
    assert grid.shape[0] == 18 + rows * 24 + (rows - 1) * 4
    assert grid.shape[1] > cols * 24 + (cols - 1) * 4  # plus the row labels' margin


def test_folder_mode_and_usage_errors(brats3d, cohort, tmp_path):
    config, weights, _ = cohort
    res = brats3d.main(["--data", str(tmp_path / "data"), "--size", "16", "--method", "maximum",
                        "--variant", "lap 1=laplacian:levels=1"], keep_fused=True)
    cases = [f"BraTS19_SYN_{i:04d}_1" for i in range(3)]
    assert [(r["method"], r["case"]) for r in res.rows if r["preset"] == "standard"] == [
        *(("maximum", c) for c in cases), *(("lap 1", c) for c in cases)]
    from neurofuse.fusion import fuse

    a, b = res.volumes.pairs[cases[0]]  # the variant's row is the method with its options
    np.testing.assert_array_equal(res.fused[("lap 1", cases[0])], fuse(a, b, "laplacian", levels=1))
    assert not np.array_equal(res.fused[("lap 1", cases[0])], fuse(a, b, "laplacian"))
    assert all(a.shape == (16, 16, 16) for a, _ in res.volumes.pairs.values()) and not res.files
    for argv in (["--method", "average"],  # neither --config nor --data
                 ["--config", str(config), "--size", "32"],
                 ["--data", ".", "--learned", "no-colon"],
                 ["--data", ".", "--learned", f"x=nope:{weights}"],
                 ["--data", ".", "--method", "nope"],
                 ["--data", ".", "--variant", "x=nope:levels=1"],
                 ["--data", ".", "--variant", "x=laplacian:levels"],
                 ["--data", ".", "--method", "average", "--variant", "average=laplacian:levels=1"]):
        with pytest.raises(SystemExit) as exc:
            brats3d.main(argv)
        assert exc.value.code == 2
