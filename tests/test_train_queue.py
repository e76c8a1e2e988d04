"""tools/train_queue.py: how each config continues from the files on this machine, and one real queue run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_data import make_harvard  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("train_queue", ROOT / "tools" / "train_queue.py")
queue = importlib.util.module_from_spec(_spec)
sys.modules["train_queue"] = queue  # dataclasses look their module up there
_spec.loader.exec_module(queue)


def _config(path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(options), encoding="utf-8")
    return path


def _progress(folder: Path, step: int, total: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "progress.json").write_text(json.dumps({"step": step, "total_steps": total}), encoding="utf-8")


def test_plan_follows_the_files(tmp_path):
    ck = tmp_path / "checkpoints"
    cfg = _config(tmp_path / "configs" / "m_ct.yaml", model="m", out="runs/m_ct")
    assert queue.plan_job(cfg, ck, tmp_path).action == "fresh"
    _progress(ck / "m_ct", 40, 100)
    job = queue.plan_job(cfg, ck, tmp_path)
    assert job.action == "continue" and job.args == ["--continue-from", str(ck / "m_ct")]
    run = tmp_path / "runs" / "m_ct"
    _progress(run, 30, 100)
    (run / "last_state.pt").write_bytes(b"")
    assert queue.plan_job(cfg, ck, tmp_path).action == "continue"  # the snapshot is further on
    _progress(run, 40, 100)
    assert queue.plan_job(cfg, ck, tmp_path).args == ["--resume"]
    _progress(ck / "m_ct", 100, 100)
    assert queue.plan_job(cfg, ck, tmp_path).action == "done"


def test_stage_two_waits_for_stage_one_and_takes_its_snapshot(tmp_path):
    ck = tmp_path / "checkpoints"
    cfg = _config(tmp_path / "m_ct_fusion.yaml", model="m", out="runs/m_ct_fusion",
                  init="runs/m_ct_autoencoder/best.safetensors")
    assert queue.plan_job(cfg, ck, tmp_path).action == "wait"
    _progress(ck / "m_ct_autoencoder", 50, 60)
    assert queue.plan_job(cfg, ck, tmp_path).action == "wait"
    _progress(ck / "m_ct_autoencoder", 60, 60)
    job = queue.plan_job(cfg, ck, tmp_path)
    assert job.action == "fresh" and job.args == ["--init", str(ck / "m_ct_autoencoder" / "weights.safetensors")]
    best = tmp_path / "runs" / "m_ct_autoencoder" / "best.safetensors"
    best.parent.mkdir(parents=True)
    best.write_bytes(b"")
    assert queue.plan_job(cfg, ck, tmp_path).args == []  # this machine has stage 1's run: the config's init
    best.unlink()
    _progress(ck / "m_ct_autoencoder", 10, 60)
    _progress(ck / "m_ct_fusion", 90, 90)
    assert queue.plan_job(cfg, ck, tmp_path).action == "done"  # a finished stage 2 waits for nothing


def test_stage_from_a_snapshot_waits_until_that_run_is_done(tmp_path):
    ck = tmp_path / "checkpoints"
    cfg = _config(tmp_path / "m_ct_ssim.yaml", model="m", out="runs/m_ct_ssim",
                  init="checkpoints/m_ct/weights.safetensors")
    assert queue.plan_job(cfg, ck, tmp_path).action == "wait"
    _progress(ck / "m_ct", 99, 100)
    assert queue.plan_job(cfg, ck, tmp_path).action == "wait"
    _progress(ck / "m_ct", 100, 100)
    job = queue.plan_job(cfg, ck, tmp_path)
    assert job.action == "fresh" and job.args == []  # the config's own init is used as it stands


def test_peer_configs_exist_in_stage_order():
    args = queue.parse_args(["--peers", "pet-mri", "--dry-run"])
    paths = queue.configs_from(args)
    assert len(paths) == 9 and all(p.is_file() for p in paths)
    for first, second in zip(paths, paths[1:], strict=False):
        init = yaml.safe_load(second.read_text(encoding="utf-8")).get("init") or ""
        if init.endswith("best.safetensors"):
            assert Path(init).parent.name == first.stem  # stage 2 right after its stage 1


def test_queue_trains_then_skips_what_is_done(tmp_path, capsys):
    data = make_harvard(tmp_path / "SPECT-MRI", n_train=3, n_val=1, size=32)
    cfg = _config(tmp_path / "tiny_spect.yaml", model="clinicalfmamba_2d_tiny", data=str(data),
                  out=str(tmp_path / "runs" / "tiny_spect"), epochs=1, batch_size=2, crop=32, val_limit=1,
                  val_metrics=False, threads=1, precision="fp32")
    ck = tmp_path / "checkpoints"
    argv = [str(cfg), "--checkpoints", str(ck), "--minutes", "10", "--reserve", "1", "--min-minutes", "2",
            "--threads", "1"]
    assert queue.main(argv) == 0
    progress = json.loads((ck / "tiny_spect" / "progress.json").read_text(encoding="utf-8"))
    assert progress["step"] == progress["total_steps"] >= 1
    assert (ck / "tiny_spect" / "weights.safetensors").is_file()
    capsys.readouterr()
    assert queue.main(argv) == 0
    assert "tiny_spect: done" in capsys.readouterr().out
