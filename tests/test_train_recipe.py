"""Training recipe: growing crops, EMA weights, whole-split final validation, pixel accounting, snapshots."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neurofuse.errors import UsageError
from neurofuse.train import TrainConfig, crop_at, read_snapshot, train, write_snapshot

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_data import make_harvard  # noqa: E402
from test_train import TinyFuse, _seeded  # noqa: E402


@pytest.fixture
def pairs(tmp_path) -> Path:
    return make_harvard(tmp_path / "pairs", n_train=8, n_val=3, size=40)


def _cfg(pairs: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="tinyfuse", data=str(pairs), out=str(out), epochs=2, batch_size=2, crop=16,
                schedule="cosine", lr=1e-2, threads=1, precision="fp32")
    return TrainConfig(**{**base, **kw})


def _log(out: Path) -> list[dict[str, str]]:
    with open(out / "log.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_crop_at_follows_the_schedule():
    cfg = TrainConfig(data="d", crop=64, crop_schedule=[[0.0, 64], [0.5, 128], [0.75, 256]])
    assert [crop_at(cfg, s, 100) for s in (0, 49, 50, 74, 75, 99)] == [64, 64, 128, 128, 256, 256]
    assert crop_at(TrainConfig(data="d", crop=48), 99, 100) == 48


@pytest.mark.parametrize("bad", [[], [[0.2, 64]], [[0.0, 64], [0.5, 0]], [[0.0, 64], [0.6, 96], [0.5, 128]],
                                 [[0.0, 64], [1.0, 128]], [["x", 64]]])
def test_bad_crop_schedules_are_refused(bad):
    with pytest.raises(UsageError, match="crop_schedule"):
        TrainConfig(data="d", crop_schedule=bad).validate()


def test_growing_crops_count_pixels_and_whole_images(pairs, tmp_path):
    out = tmp_path / "grow"
    # 8 training pairs, batch 2: 4 steps per epoch, 8 in all; the second half on whole 40x40 images.
    result = train(_cfg(pairs, out, crop_schedule=[[0.0, 16], [0.5, 64]], val_every=1), model=_seeded())
    assert result.step == 8
    progress = json.loads((out / "progress.json").read_text(encoding="utf-8"))
    assert progress["images"] == 16
    assert progress["pixels"] == 8 * 16 * 16 + 8 * 40 * 40
    assert progress["pixels_full"] == 8 * 40 * 40
    rows = _log(out)
    assert [int(r["crop"]) for r in rows] == [16, 64]


def test_ema_weights_are_validated_and_resume_exactly(pairs, tmp_path):
    kw = dict(ema=0.9, val_raw=True, epochs=3)
    straight = train(_cfg(pairs, tmp_path / "a", **kw), model=_seeded())
    train(_cfg(pairs, tmp_path / "b", max_steps=5, **kw), model=_seeded())
    resumed = train(_cfg(pairs, tmp_path / "b", resume=True, **kw), model=_seeded())
    assert resumed.step == straight.step == 12
    for name in ("last.safetensors", "last_ema.safetensors"):
        a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ema, raw = load_file(str(tmp_path / "a/last_ema.safetensors")), load_file(str(tmp_path / "a/last.safetensors"))
    assert any(not torch.equal(ema[k], raw[k]) for k in ema if ema[k].is_floating_point())
    row = _log(tmp_path / "a")[-1]
    assert "val_raw_loss" in row and row["val_raw_loss"] != row["val_loss"]


def test_ema_is_the_moving_average_of_the_weights(pairs, tmp_path):
    """One step with decay d from weights w0: ema = w1 after the first update (torch copies), then
    ema = d * ema + (1 - d) * w2 after the second."""
    out = tmp_path / "e"
    model = _seeded()
    train(_cfg(pairs, out, ema=0.5, ema_warmup=False, max_steps=1, epochs=1), model=model)
    w1 = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(torch.equal(load_file(str(out / "last_ema.safetensors"))[k], w1[k]) for k in w1)
    train(_cfg(pairs, out, ema=0.5, ema_warmup=False, max_steps=2, epochs=1, resume=True), model=model)
    w2 = model.state_dict()
    ema = load_file(str(out / "last_ema.safetensors"))
    for k, v in w2.items():
        if v.is_floating_point():
            torch.testing.assert_close(ema[k], 0.5 * w1[k] + 0.5 * v)


def test_final_validation_uses_the_whole_split_and_does_not_compete_for_best(pairs, tmp_path):
    out = tmp_path / "v"
    train(_cfg(pairs, out, val_limit=1, epochs=2, val_every=1), model=_seeded())
    rows = _log(out)
    assert [int(r["val_items"]) for r in rows] == [1, 3]
    best = json.loads((out / "best.json").read_text(encoding="utf-8"))
    assert int(best["val_items"]) == 1


def test_snapshot_continues_the_schedule_elsewhere(pairs, tmp_path):
    first = tmp_path / "first"
    train(_cfg(pairs, first, ema=0.9, max_steps=3, epochs=2), model=_seeded())
    snap = write_snapshot(first, tmp_path / "committed")
    weights = load_file(str(snap / "weights.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values() if v.is_floating_point())
    progress = read_snapshot(snap)
    assert progress["weights_from"] == "last_ema.safetensors"
    raw = read_snapshot(write_snapshot(first, tmp_path / "raw", raw=True))
    assert raw["weights_from"] == "last.safetensors"
    assert progress["step"] == 3 and progress["images"] == 6 and progress["config"]["ema"] == 0.9
    assert progress["ema_n"] == 3
    # A new machine: no run folder, only the snapshot. The run continues at step 3 of the same schedule.
    again = train(_cfg(pairs, tmp_path / "second", ema=0.9, epochs=2, continue_from=str(snap / "progress.json")),
                  model=TinyFuse())
    assert again.step == 8
    done = json.loads((tmp_path / "second/progress.json").read_text(encoding="utf-8"))
    assert done["images"] == 16 and done["pixels"] == 16 * 16 * 16
    assert done["ema_n"] == 8  # the EMA continued its count: 3 updates before, 5 after
    # The log, the training time and the machine history go on from the snapshot's, not from zero.
    before, after = _log(snap), _log(tmp_path / "second")
    assert before and after[:len(before)] == before
    steps = [int(r["step"]) for r in after]
    assert steps == sorted(steps) and steps[-1] == 8 and len(after) > len(before)
    assert float(after[-1]["seconds"]) > progress["train_seconds"] == done["history"][0]["seconds"]
    assert done["train_seconds"] >= progress["train_seconds"]
    assert [(h["from_step"], h["to_step"]) for h in done["history"]] == [(0, 3), (3, 8)]


def test_a_continued_run_keeps_its_machine_history_through_a_resume(pairs, tmp_path):
    train(_cfg(pairs, tmp_path / "a", max_steps=3, epochs=2), model=_seeded())
    snap = write_snapshot(tmp_path / "a", tmp_path / "snap")
    kw = dict(epochs=2, continue_from=str(snap))
    train(_cfg(pairs, tmp_path / "b", max_steps=5, **kw), model=TinyFuse())
    train(_cfg(pairs, tmp_path / "b", resume=True, **kw), model=TinyFuse())
    done = json.loads((tmp_path / "b/progress.json").read_text(encoding="utf-8"))
    assert [(h["from_step"], h["to_step"]) for h in done["history"]] == [(0, 3), (3, 8)]
    assert sum(h["seconds"] for h in done["history"]) == pytest.approx(done["train_seconds"], abs=0.2)


def test_snapshot_past_the_schedule_end_is_refused(pairs, tmp_path):
    train(_cfg(pairs, tmp_path / "r", epochs=1), model=_seeded())
    snap = write_snapshot(tmp_path / "r", tmp_path / "s")
    with pytest.raises(UsageError, match="raise epochs"):
        train(_cfg(pairs, tmp_path / "t", epochs=1, continue_from=str(snap)), model=TinyFuse())


def test_init_accepts_a_shipped_arch_tag(tmp_path):
    from neurofuse.models.pretrained import get_pretrained_cfg
    from neurofuse.train import resolve_init

    shipped = Path(get_pretrained_cfg("clinicalfmamba_2d", "spect-mri").path)
    assert resolve_init("clinicalfmamba_2d.spect-mri") == shipped
    with pytest.raises(Exception, match="not found"):
        resolve_init(str(tmp_path / "missing"))


def test_gain_jitter_scales_inputs_within_bounds(pairs):
    from neurofuse.data import HarvardPairs

    plain = HarvardPairs(pairs, "train", crop=16, augment=True, seed=1)
    jittered = HarvardPairs(pairs, "train", crop=16, augment=True, seed=1)
    jittered.gain_jitter = 0.4
    ratios = []
    for i in range(len(plain)):
        x, y = plain[i], jittered[i]
        for k in ("a", "b"):
            if x[k].max() > 0:
                ratios.append(float(y[k].max() / x[k].max()))
    assert min(ratios) >= 0.6 - 1e-6 and max(ratios) <= 1.0 + 1e-6
    assert any(r < 0.999 for r in ratios) and any(r > 0.999 for r in ratios)


def test_weight_decay_spares_biases_and_norms(pairs, tmp_path):
    """Issue 17 bug 5: weight decay only on conv weights (TinyFuse: 2 conv weights; biases and BatchNorm exempt)."""
    out = tmp_path / "wd"
    train(_cfg(pairs, out, weight_decay=0.1, max_steps=1, epochs=1, val_metrics=False), model=_seeded())
    state = torch.load(out / "last_state.pt", weights_only=True)
    groups = {g["weight_decay"]: g for g in state["optimizer"]["param_groups"]}
    assert sorted(groups) == [0.0, 0.1]
    assert sorted(groups[0.1]["names"]) == ["body.0.weight", "body.4.weight"]
    assert sorted(groups[0.0]["names"]) == ["body.0.bias", "body.1.bias", "body.1.weight", "body.4.bias"]


class OneStage(TinyFuse):
    training_stages = ["only"]

    def set_stage(self, name: str) -> None:
        self.stage = name


def test_train_leaves_the_callers_config_alone(pairs, tmp_path):
    """Issue 17 bug 4: the default stage is filled in the trainer's copy, not in the caller's config."""
    cfg = _cfg(pairs, tmp_path / "st", max_steps=1, epochs=1, val_metrics=False)
    model = OneStage()
    train(cfg, model=model)
    assert cfg.stage is None and model.stage == "only"


def test_deadline_flag_lives_on_the_training_device(monkeypatch):
    """Issue 17 bug 3: with several processes the time-out flag is all-reduced on the run's device (nccl
    reduces CUDA tensors only), not on the CPU."""
    import neurofuse.train as T

    seen = []
    monkeypatch.setattr(T.dist, "all_reduce", lambda t, op=None: seen.append(t.device))
    trainer = T.Trainer.__new__(T.Trainer)
    trainer.device, trainer.world = torch.device("cpu"), 2
    assert trainer._out_of_time(0.0) is True and seen == [torch.device("cpu")]
    trainer.device = torch.device("meta")
    with pytest.raises(Exception):  # noqa: B017 (a meta tensor has no value; what matters is where it was made)
        trainer._out_of_time(0.0)
    assert seen[-1] == torch.device("meta")


def test_ema_warmup_follows_recent_weights():
    """With warm-up the n-th update uses decay min(d, (1 + n) / (10 + n)): after 100 updates of a weight
    moving from 0 to 1, the warmed-up EMA has followed it far more than a plain 0.999 EMA."""
    from neurofuse.train import ema_update_fn

    for warmup, lo, hi in ((True, 0.6, 0.95), (False, 0.0, 0.1)):
        ema, fn = [torch.zeros(1)], ema_update_fn(0.999, warmup)
        for n in range(1, 101):
            fn(ema, [torch.full((1,), n / 100)], torch.tensor(n))
        assert lo < float(ema[0]) < hi, (warmup, float(ema[0]))
    first = [torch.zeros(1)]
    ema_update_fn(0.999)(first, [torch.ones(1)], torch.tensor(1))
    assert float(first[0]) == pytest.approx(1 - 2 / 11)


def test_negative_budget_in_a_config_is_refused():
    with pytest.raises(UsageError, match="max_minutes"):
        TrainConfig(data="d", max_minutes=-1).validate()
