"""tools/gpu_train_all.py (train every issue-14 weight on one GPU, pack the results) and tools/gpu_unpack.py.

The GPU run itself needs a GPU; here its plan is checked against the paper's schedule, its packer against
the limits of what a device call brings back, and the whole path runs on the CPU in `--smoke` mode on a
generated Harvard-layout folder (2 pair sets x 2 methods, one step each, the chunked scan backend, the
stand-in modules of the GPU machine), followed by unpacking and shipping into a temporary weights folder.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_data import make_harvard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu = _tool("gpu_train_all")


def _harvard(root: Path) -> Path:
    """CT-MRI and SPECT-MRI folders of 3 train + 2 val 32x32 pairs."""
    make_harvard(root / "harvard" / "SPECT-MRI", n_train=3, n_val=2, size=32)
    ct = make_harvard(root / "harvard" / "CT-MRI", n_train=3, n_val=2, size=32, seed=1)
    (ct / "SPECT").rename(ct / "CT")
    return root


def test_pack_files_respects_the_limits(tmp_path):
    files = []
    sizes = {0: [2_000] * 4, 1: [300_000] * 3, 2: [300_000] * 3, 3: [700_000] * 2}
    for prio, group in sizes.items():
        for i, size in enumerate(group):
            path = tmp_path / "src" / f"p{prio}_{i}.bin"
            path.parent.mkdir(exist_ok=True)
            path.write_bytes(os.urandom(size))  # incompressible: the estimate is tight
            files.append((f"run{prio}/f{i}.bin", path, prio))
    out = tmp_path / "out"
    out.mkdir()
    shards, left_out = gpu.pack_files(files, out, shard_bytes=MIB, max_shards=3, total_bytes=int(2.2 * MIB))
    assert 1 <= len(shards) <= 3 and sorted(p.name for p in out.iterdir()) == sorted(s["file"] for s in shards)
    assert all((out / s["file"]).stat().st_size == s["bytes"] <= MIB for s in shards)
    assert sum(s["bytes"] for s in shards) <= 2.2 * MIB
    packed, dropped = {m["path"] for s in shards for m in s["members"]}, {x["path"] for x in left_out}
    assert packed | dropped == {f[0] for f in files} and not packed & dropped
    assert {f[0] for f in files if f[2] == 0} <= packed and left_out  # text always; not everything fits
    assert max(x["priority"] for x in left_out) == 3 and all(x["priority"] > 0 for x in left_out)
    by_name = {f[0]: f[1] for f in files}
    for s in shards:
        with tarfile.open(out / s["file"]) as tar:
            assert sorted(tar.getnames()) == sorted(m["path"] for m in s["members"])
            for m in s["members"]:
                assert tar.extractfile(m["path"]).read() == by_name[m["path"]].read_bytes()


def test_plan_is_the_papers_schedule_for_every_weight(tmp_path):
    args = gpu.parse_args(["--out", str(tmp_path / "out"), "--data", str(tmp_path)])
    chains = gpu.plan(args, tmp_path)
    assert len(chains) == 21 and sum(len(c.stages) for c in chains) == 30  # 7 methods x 3 sets, 3 two-stage
    for chain in chains:
        assert sum(st.epochs for st in chain.stages) == 200
        first = chain.stages[0]
        for st in chain.stages:
            assert st.config["crop"] is None and st.config["crop_schedule"] is None  # whole images
            assert (st.config["batch_size"], st.config["ema"], st.config["final_val_all"]) == (8, 0.999, False)
        shipped = first.pair != "pet-mri" or first.model == "clinicalfmamba_2d"
        assert first.config["init"] == (f"{first.model}.{first.pair}" if shipped else None)
        if len(chain.stages) == 2:
            assert chain.stages[1].config["init"] == str(tmp_path / "runs" / first.run / "best.safetensors")
            assert 0.35 <= chain.stages[0].share <= 0.45  # the configs' split of the budget
    gpu.write_configs(chains, tmp_path, {"NEUROFUSE_DATA": "/data/root"})  # every derived config loads


def test_missing_data_stops_before_anything_runs(tmp_path):
    with pytest.raises(SystemExit, match="split.csv"):
        gpu.main(["--data", str(tmp_path), "--out", str(tmp_path / "out"), "--work", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


def test_stand_ins_let_training_and_metrics_import(tmp_path):
    shim = gpu.stand_in_dir(tmp_path, force=True)
    code = ("import nibabel, pywt, neurofuse.train, neurofuse.metrics; "
            "assert nibabel.__doc__.startswith('Stand-in') and pywt.__doc__.startswith('Stand-in')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), str(ROOT / "src")])}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)


@pytest.mark.slow
def test_smoke_trains_packs_unpacks_and_ships(tmp_path, monkeypatch):
    data, out, work = _harvard(tmp_path / "data"), tmp_path / "out", tmp_path / "work"
    cmd = [sys.executable, str(ROOT / "tools/gpu_train_all.py"), "--smoke", "--check-scan", "--stand-ins",
           "--data", str(data), "--out", str(out), "--work", str(work), "--shard-mib", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all((out / f).stat().st_size <= MIB for f in files if f.endswith(".tar.gz"))
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert files == sorted([s["file"] for s in manifest["shards"]] + ["manifest.json", "scan_check.json"])
    assert len(manifest["shards"]) >= 2 and not manifest["left_out"]  # split by size, nothing dropped
    assert sum(s["bytes"] for s in manifest["shards"]) <= manifest["limits"]["max_total_bytes"]
    runs = {r["run"]: r for r in manifest["runs"]}
    assert len(runs) == 6  # 2 sets x (clinicalfmamba_2d_tiny + mrscfusion_small's two stages)
    for info in runs.values():
        assert info["exit_code"] == 0 and info["step"] == 1 and info["pixels"] == 2 * 32 * 32
        assert {"best.safetensors", "weights.safetensors", "progress.json", "log.csv"} <= set(info["files"])
    assert {r for r, i in runs.items() if i["final"]} == {
        "clinicalfmamba_2d_tiny_ct-mri_gpu", "clinicalfmamba_2d_tiny_spect-mri_gpu",
        "mrscfusion_small_ct-mri_fusion_gpu", "mrscfusion_small_spect-mri_fusion_gpu"}
    scan = json.loads((out / "scan_check.json").read_text(encoding="utf-8"))
    assert scan["ok"] and scan["auto_backend"] == "chunked"  # smoke runs the GPU's scan path (forced here)
    assert {c["case"] for c in scan["cases"]} == {c["name"] for c in gpu.SCAN_CASES_CPU}

    unpack = _tool("gpu_unpack")
    dest, weights = tmp_path / "checkpoints", tmp_path / "weights"
    unpack.unpack(out, dest)
    from neurofuse.train import TrainConfig, read_snapshot

    snap = read_snapshot(dest / "mrscfusion_small_ct-mri_fusion_gpu")
    assert snap["step"] == 1 and snap["weights_path"].is_file()
    monkeypatch.setenv("NEUROFUSE_DATA", str(data))
    cfg = TrainConfig.from_yaml(dest / "mrscfusion_small_ct-mri_fusion_gpu/config.yaml")
    assert cfg.init == str(dest / "mrscfusion_small_ct-mri_autoencoder_gpu/best.safetensors")
    assert cfg.out == "runs/mrscfusion_small_ct-mri_fusion_gpu" and cfg.max_steps is None
    with pytest.raises(SystemExit, match="exist already"):
        unpack.unpack(out, dest)
    with pytest.raises(SystemExit, match="smoke"):
        unpack.ship_all(manifest, dest)  # never into the package
    weights.mkdir()
    shipped = unpack.ship_all(manifest, dest, weights)
    assert sorted(shipped) == ["clinicalfmamba_2d_tiny.ct-mri", "clinicalfmamba_2d_tiny.spect-mri",
                               "mrscfusion_small.ct-mri", "mrscfusion_small.spect-mri"]
    entries = json.loads((weights / "manifest.json").read_text(encoding="utf-8"))
    assert entries["mrscfusion_small.ct-mri"]["source"] == "mrscfusion_small_ct-mri_fusion_gpu/best"


def test_out_of_memory_relaunches_once_at_half_the_batch(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "runs" / "r").mkdir(parents=True)
    st = gpu.Stage("r", "swinfusion_small", "ct-mri", None, 200, 1.0, {"batch_size": 8},
                   config_path=tmp_path / "r.yaml")
    chain = gpu.Chain("c", [st])
    clock = gpu.Clock(0.0, 600.0, 30.0, 45.0, 25.0, 20.0)
    for expected_next, batch in ((0, 4), (1, 4)):  # the first OOM retries, the second gives up
        log = tmp_path / "logs" / "r.log"
        log.write_text("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
        chain.log = open(log, "rb")  # noqa: SIM115
        gpu.finish(chain, clock, 1, tmp_path)
        assert chain.next == expected_next and st.config["batch_size"] == batch
    assert st.retried and st.status.startswith("failed") and not (tmp_path / "runs" / "r").exists()
    assert "batch_size: 4" in st.config_path.read_text(encoding="utf-8")
