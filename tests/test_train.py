"""Generic trainer: exact resume, logs and checkpoints, stages, fp16 export, CLI config merging, 2-process DDP."""

from __future__ import annotations

import copy
import csv
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from click.testing import CliRunner
from safetensors.torch import load_file

from neurofuse.errors import UsageError
from neurofuse.train import TrainConfig, evaluate, export_fp16, lr_at, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_data import make_harvard  # noqa: E402


class TinyFuse(nn.Module):
    """A protocol-following toy fusion net: conv stack on [a, b] with dropout, L1-to-max + gradient loss."""

    spatial_dims = 2

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Conv2d(8, 1, 3, padding=1))

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.body(torch.cat([a, b], 1)))

    def training_loss(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        f = self(a, b).float()
        target = torch.maximum(a, b)
        l1 = F.l1_loss(f, target)
        grad = F.l1_loss(f.diff(dim=-1).abs(), target.diff(dim=-1).abs())
        loss = l1 + grad
        return loss, {"l1": l1.item(), "grad": grad.item()}


class TwoStage(TinyFuse):
    """TinyFuse trained in two stages: stage 'first' trains the first conv only, 'second' the last."""

    training_stages = ["first", "second"]

    def set_stage(self, name: str) -> None:
        for p in self.body[0].parameters():
            p.requires_grad_(name == "first")
        for p in self.body[4].parameters():
            p.requires_grad_(name == "second")


@pytest.fixture
def pairs(tmp_path) -> Path:
    return make_harvard(tmp_path / "pairs", n_train=8, n_val=2, size=40)


def _cfg(pairs: Path, out: Path, **kw) -> TrainConfig:
    base = dict(model="tinyfuse", data=str(pairs), out=str(out), epochs=3, batch_size=2, crop=32,
                schedule="cosine", lr=1e-2, threads=1)
    return TrainConfig(**{**base, **kw})


def _seeded(cls: type[nn.Module] = TinyFuse, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_resume_three_plus_three_equals_six(pairs, tmp_path):
    """Steps 1-3, stop, resume for steps 4-6 (mid-epoch stop, then an epoch boundary) equals 6 straight steps."""
    straight = train(_cfg(pairs, tmp_path / "a", max_steps=6, precision="bf16"), model=_seeded())
    first = train(_cfg(pairs, tmp_path / "b", max_steps=3, precision="bf16"), model=_seeded())
    assert (first.step, first.stopped) == (3, "max_steps")
    resumed = train(_cfg(pairs, tmp_path / "b", max_steps=6, precision="bf16", resume=True), model=_seeded())
    assert resumed.step == straight.step == 6
    wa, wb = _weights(tmp_path / "a/last.safetensors"), _weights(tmp_path / "b/last.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    sa = torch.load(tmp_path / "a/last_state.pt", weights_only=True)["optimizer"]["state"]
    sb = torch.load(tmp_path / "b/last_state.pt", weights_only=True)["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    # a different seed really changes the result, so the equality above is not vacuous
    train(_cfg(pairs, tmp_path / "c", max_steps=6, precision="bf16", seed=1), model=_seeded())
    wc = _weights(tmp_path / "c/last.safetensors")
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_outputs_log_and_best(pairs, tmp_path):
    out = tmp_path / "run"
    result = train(_cfg(pairs, out, epochs=2, precision="fp32", validate_first=True), model=_seeded())
    assert (result.step, result.total_steps, result.stopped) == (8, 8, "done")
    for name in ("last.safetensors", "last_state.pt", "best.safetensors", "best.json", "config.yaml", "log.csv"):
        assert (out / name).is_file(), name
    with open(out / "log.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 4, 8]
    for col in ("epoch", "train_loss", "train_l1", "train_grad", "val_loss", "val_l1", "lr", "seconds"):
        assert col in rows[-1], col
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])  # it learns
    assert json.loads((out / "best.json").read_text(encoding="utf-8"))["val_loss"] == pytest.approx(
        min(float(r["val_loss"]) for r in rows))
    assert TrainConfig.from_yaml(out / "config.yaml").crop == 32
    half = export_fp16(out / "best.safetensors", tmp_path / "ship.safetensors")
    w16, w32 = load_file(str(half)), _weights(out / "best.safetensors")
    for k, v in w32.items():
        assert w16[k].dtype == (torch.float16 if v.is_floating_point() else v.dtype)
        torch.testing.assert_close(w16[k].to(v.dtype), v, rtol=1e-3, atol=1e-3)


def test_resume_refuses_changed_config(pairs, tmp_path):
    train(_cfg(pairs, tmp_path / "r", max_steps=1, precision="fp32"), model=_seeded())
    with pytest.raises(UsageError, match="lr"):
        train(_cfg(pairs, tmp_path / "r", lr=0.5, resume=True, precision="fp32"), model=_seeded())
    with pytest.raises(UsageError, match="--resume"):
        train(_cfg(pairs, tmp_path / "r", max_steps=1, precision="fp32"), model=_seeded())
    with pytest.raises(UsageError, match="nothing to resume"):
        train(_cfg(pairs, tmp_path / "none", resume=True), model=_seeded())


def test_resume_accepts_the_same_data_folder_spelled_differently(pairs, tmp_path):
    train(_cfg(pairs, tmp_path / "r", max_steps=1, precision="fp32"), model=_seeded())
    spelled = os.path.relpath(pairs) + "/"
    res = train(_cfg(spelled, tmp_path / "r", max_steps=2, resume=True, precision="fp32"), model=_seeded())
    assert res.step == 2


def test_resume_with_an_incompatible_optimiser_state_says_what_to_do(pairs, tmp_path):
    train(_cfg(pairs, tmp_path / "r", max_steps=1, precision="fp32"), model=_seeded())
    state_path = tmp_path / "r" / "last_state.pt"
    state = torch.load(state_path, weights_only=True)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1] * 3  # another optimiser's layout
    torch.save(state, state_path)
    with pytest.raises(UsageError, match="continue-from"):
        train(_cfg(pairs, tmp_path / "r", max_steps=2, resume=True, precision="fp32"), model=_seeded())


def test_stages(pairs, tmp_path):
    with pytest.raises(UsageError, match="--stage"):
        train(_cfg(pairs, tmp_path / "s0"), model=_seeded(TwoStage))
    with pytest.raises(UsageError, match="no training stages"):
        train(_cfg(pairs, tmp_path / "s1", stage="first"), model=_seeded())
    model = _seeded(TwoStage)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train(_cfg(pairs, tmp_path / "s2", stage="second", max_steps=2, precision="fp32"), model=model)
    after = model.state_dict()
    assert torch.equal(before["body.0.weight"], after["body.0.weight"])
    assert not torch.equal(before["body.4.weight"], after["body.4.weight"])


def test_cosine_schedule_and_config_errors(tmp_path):
    cfg = TrainConfig(data="x", lr=1e-3, min_lr=1e-6, schedule="cosine")
    assert lr_at(cfg, 0, 100) == pytest.approx(1e-3)
    assert lr_at(cfg, 50, 100) == pytest.approx((1e-3 + 1e-6) / 2)
    assert lr_at(cfg, 100, 100) == pytest.approx(1e-6)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\ndata: d\nlearning_rate: 3\n")
    with pytest.raises(UsageError, match="learning_rate"):
        TrainConfig.from_yaml(bad)
    bad.write_text("model: m\ndata: d\nepochs: many\n")
    with pytest.raises(UsageError, match="epochs"):
        TrainConfig.from_yaml(bad)
    with pytest.raises(UsageError, match="precision"):
        TrainConfig(data="d", precision="fp8").validate()


def test_cli_config_then_flags(tmp_path):
    from neurofuse.cli.train import resolve_config  # imported here: DDP workers re-import this module

    path = tmp_path / "c.yaml"
    path.write_text("model: clinicalfmamba_2d\ndata: some/where\nout: runs/x\ncrop: 96\nbatch_size: 8\nmin_lr: 1e-5\n")
    cfg = resolve_config(str(path), False, {"crop": 64, "lr": None, "out": str(tmp_path / "run")})
    assert (cfg.crop, cfg.batch_size, cfg.lr, cfg.min_lr) == (64, 8, 1e-4, 1e-5)
    assert cfg.out == str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    (tmp_path / "run/config.yaml").write_text("model: m\ndata: d\ncrop: 48\n")
    resumed = resolve_config(None, True, {"out": str(tmp_path / "run"), "max_steps": 9})
    assert (resumed.model, resumed.crop, resumed.max_steps, resumed.resume) == ("m", 48, 9, True)


def _ddp_worker(rank: int, port: int, pairs: str, out: str, dump: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    cfg = TrainConfig(model="tinyfuse", data=pairs, out=out, epochs=1, batch_size=2, crop=32, lr=1e-2,
                      precision="fp32", threads=1, device="cpu")
    torch.manual_seed(rank)  # different init per rank: DDP must broadcast rank 0's weights
    result = train(cfg, model=_seeded())
    torch.save({k: v.clone() for k, v in result.model.state_dict().items()}, Path(dump) / f"rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes_keep_replicas_equal(pairs, tmp_path):
    out = tmp_path / "ddp"
    torch.optim.Adam([nn.Parameter(torch.zeros(1))])  # import torch's lazy optimiser machinery once, before forking
    mp.start_processes(_ddp_worker, args=(_free_port(), str(pairs), str(out), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    w0, w1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    saved = _weights(out / "last.safetensors")
    assert all(torch.equal(saved[k], w0[k]) for k in saved)
    state = torch.load(out / "last_state.pt", weights_only=True)
    assert state["step"] == 2  # 8 items / (2 processes x batch 2) = 2 steps per epoch


def test_tiny_clinicalfmamba_via_cli(pairs, tmp_path):
    from neurofuse.cli import main

    out, ship = tmp_path / "cfm", tmp_path / "cfm16.safetensors"
    args = ["train", "--model", "clinicalfmamba_2d_tiny", "--data", str(pairs), "--out", str(out), "--epochs", "1",
            "--batch-size", "2", "--crop", "32", "--max-steps", "2", "--threads", "1", "--precision", "fp32",
            "--export-fp16", str(ship)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "step 2/4" in res.output
    assert all(v.dtype == torch.float16 for v in load_file(str(ship)).values() if v.is_floating_point())


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_configs_load(path, monkeypatch):
    from neurofuse.models import list_models

    assert "../shared" not in path.read_text(encoding="utf-8")  # no machine's folder in a config
    monkeypatch.setenv("NEUROFUSE_DATA", "/data/root")
    cfg = TrainConfig.from_yaml(path)
    assert cfg.model in list_models()
    assert cfg.out.startswith("runs/") and Path(cfg.data).parts[:3] == ("/", "data", "root")
    monkeypatch.delenv("NEUROFUSE_DATA")
    with pytest.raises(UsageError, match="NEUROFUSE_DATA"):
        TrainConfig.from_yaml(path)
    assert TrainConfig.from_yaml(path, data="/elsewhere").data == "/elsewhere"  # --data needs no variable


def test_val_every_and_limit(pairs, tmp_path):
    out = tmp_path / "v"
    train(_cfg(pairs, out, epochs=2, precision="fp32", val_every=2, val_limit=1), model=_seeded())
    with open(out / "log.csv", newline="", encoding="utf-8") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [8]  # epoch 1 skipped, the last epoch validated


class Exploding(TinyFuse):
    """Returns a NaN loss: the trainer must stop with a clear error instead of training on it."""

    def training_loss(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        loss, terms = super().training_loss(a, b)
        return loss * float("nan"), terms


def test_non_finite_loss_stops(pairs, tmp_path):
    from neurofuse.errors import NeurofuseError

    with pytest.raises(NeurofuseError, match="training loss is nan at step 1"):
        train(_cfg(pairs, tmp_path / "nan", precision="fp32"), model=_seeded(Exploding))


def test_one_group_optimiser_state_is_regrouped_exactly():
    """A state saved by Adam(model.parameters()) continues under the weight-decay groups as if never saved."""
    from neurofuse.models.optim import param_groups
    from neurofuse.train import _regroup

    def step(model, opt, seed):
        g = torch.Generator().manual_seed(seed)
        a, b = torch.rand(2, 1, 16, 16, generator=g), torch.rand(2, 1, 16, 16, generator=g)
        torch.manual_seed(seed)  # the same dropout masks in both models
        opt.zero_grad()
        model.training_loss(a, b)[0].backward()
        opt.step()

    old = _seeded()
    opt_old = torch.optim.Adam(old.parameters(), lr=1e-2)
    for s in range(3):
        step(old, opt_old, s)
    new = _seeded()
    new.load_state_dict(old.state_dict())
    opt_new = torch.optim.Adam(param_groups(new, 0.0), lr=1e-2)
    opt_new.load_state_dict(_regroup(copy.deepcopy(opt_old.state_dict()), opt_new, new))  # as read from disk
    step(old, opt_old, 9)
    step(new, opt_new, 9)
    for p, q in zip(old.parameters(), new.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    decayed = torch.optim.Adam(param_groups(new, 0.1), lr=1e-2)
    assert len(_regroup(opt_old.state_dict(), decayed, new)["param_groups"]) == 1  # settings differ: left alone
    foreign = copy.deepcopy(opt_old.state_dict())
    foreign["state"][0]["exp_avg"] = torch.zeros(3)  # another model's parameter
    assert len(_regroup(foreign, opt_new, new)["param_groups"]) == 1  # left alone: loading then refuses


def test_resume_ignores_the_starting_point(pairs, tmp_path):
    """init / continue_from only say where step 0 came from: changing them does not block a resume."""
    train(_cfg(pairs, tmp_path / "r", max_steps=1, precision="fp32"), model=_seeded())
    res = train(_cfg(pairs, tmp_path / "r", max_steps=2, resume=True, precision="fp32", init=str(tmp_path / "x")),
                model=_seeded())
    assert res.step == 2


def test_3d_validation_reports_sharpness_of_fused_and_sources():
    """evaluate() on volumes gives the fused volume's AG and the sources' AG_a / AG_b (the sharpness a
    fusion should reach), each equal to the `standard` preset's AG of that volume."""
    from neurofuse.metrics import compute_metrics
    from neurofuse.models import create_model

    torch.manual_seed(0)
    model = create_model("clinicalfmamba_3d_tiny")
    g = torch.Generator().manual_seed(2)
    a = F.avg_pool3d(torch.rand(1, 1, 20, 20, 20, generator=g), 3, 1, 1)
    b = torch.rand(1, 1, 20, 20, 20, generator=g)  # rougher than a
    row = evaluate(model, [{"a": a[0], "b": b[0]}], TrainConfig(model="clinicalfmamba_3d_tiny", data="."),
                   torch.device("cpu"))
    with torch.no_grad():
        f = model.eval()(a, b)[0, 0].clamp(0, 1).numpy()
    arr = [t[0, 0].numpy() for t in (a, b)]
    for key, vol in (("AG", f), ("AG_a", arr[0]), ("AG_b", arr[1])):
        assert row[f"val_{key}"] == pytest.approx(compute_metrics(*arr, vol, ["AG"], "standard")["AG"], rel=1e-6)
    assert row["val_AG_b"] > 2 * row["val_AG_a"] > 0


def test_lr_scale_multiplies_the_scheduled_lr_of_its_parameters(pairs, tmp_path):
    """`lr_scale: {prefix: k}`: those parameters' optimiser group runs at k times the schedule's lr."""
    from neurofuse.train import Trainer

    cfg = _cfg(pairs, tmp_path / "run", lr_scale={"body.4": 10.0}, max_steps=1)
    trainer = Trainer(cfg, _seeded())
    trainer.train_step(next(iter(trainer._loader())))
    lrs = {g.get("lr_scale", 1.0): g["lr"] for g in trainer.opt.param_groups}
    assert lrs[10.0] == pytest.approx(10.0 * lrs[1.0]) and lrs[1.0] == pytest.approx(lr_at(cfg, 0, trainer.total_steps))
    with pytest.raises(UsageError, match="lr_scale"):
        TrainConfig(data="d", lr_scale={"body": 0}).validate()
