"""The peers' configs (configs/peers/): each loads, names a registered model and loadable initial weights,
and every pair set's peers train on ClinicalFMamba-2D's pixel budget for that set (issue 14).

Two-stage peers (MRSCFusion, DM-FNet, LAGN) split the budget between their stages: the epochs of the two
stages add up to ClinicalFMamba's, and stage 2 starts from stage 1's run output. With the development data
present, the pixels are counted from the split sizes (`split.csv`) through the trainer's own crop schedule.
"""

from __future__ import annotations

import csv
import functools
from collections import defaultdict
from pathlib import Path

import pytest

from neurofuse.models import create_model, list_models
from neurofuse.models.pretrained import split_name
from neurofuse.models.registry import load_weights
from neurofuse.train import TrainConfig, crop_at, resolve_init

ROOT = Path(__file__).resolve().parents[1]
PEERS = sorted((ROOT / "configs/peers").glob("*.yaml"))
SETS = {"ct-mri": "CT-MRI", "spect-mri": "SPECT-MRI", "pet-mri": "PET-MRI"}
METHODS = ("ehdran_small", "swinfusion_small", "mambadfuse_small", "mrscfusion_small", "dmfnet_small", "lagn_small")
HARVARD = (ROOT / "../shared/data/harvard").resolve()
IMAGE_SIDE = 256  # Harvard pairs are 256x256; a crop side at or above it trains on whole images


def _load(path: Path, monkeypatch) -> TrainConfig:
    monkeypatch.setenv("NEUROFUSE_DATA", "/data/root")
    return TrainConfig.from_yaml(path)


def _pair_set(cfg: TrainConfig) -> str:
    folder = Path(cfg.data).name
    return next(k for k, v in SETS.items() if v == folder)


@functools.lru_cache
def _stages(model: str) -> tuple[str | None, ...]:
    return tuple(getattr(create_model(model), "training_stages", None) or [None])


def _chains(monkeypatch) -> dict[str, dict[str, list[TrainConfig]]]:
    """{pair set: {model: [configs in stage order]}} for every peer config."""
    out: dict[str, dict[str, list[TrainConfig]]] = defaultdict(lambda: defaultdict(list))
    for path in PEERS:
        cfg = _load(path, monkeypatch)
        out[_pair_set(cfg)][cfg.model].append(cfg)
    for models in out.values():
        for model, cfgs in models.items():
            cfgs.sort(key=lambda c: _stages(model).index(c.stage))
    return out


def _cfm(set_key: str, monkeypatch) -> TrainConfig:
    return _load(ROOT / f"configs/clinicalfmamba_2d_{set_key}.yaml", monkeypatch)


def pixels(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Training pixels of a whole run: batch x crop side^2 per step, the side from the trainer's `crop_at`."""
    total = cfg.epochs * steps_per_epoch
    sides = (min(crop_at(cfg, s, total) or IMAGE_SIDE, IMAGE_SIDE) for s in range(total))
    return cfg.batch_size * sum(side * side for side in sides)


def _train_items(folder: str) -> int:
    with open(HARVARD / folder / "split.csv", newline="", encoding="utf-8") as fh:
        return sum(row["split"] == "train" for row in csv.DictReader(fh))


@pytest.mark.parametrize("path", PEERS, ids=lambda p: p.name)
def test_peer_config_loads(path, monkeypatch):
    text = path.read_text(encoding="utf-8")
    assert "../shared" not in text and "${NEUROFUSE_DATA}/harvard/" in text
    cfg = _load(path, monkeypatch)
    assert cfg.model in list_models() and cfg.model in METHODS
    assert Path(cfg.data).parts[:4] == ("/", "data", "root", "harvard")
    set_key = _pair_set(cfg)
    assert path.stem == f"{cfg.model}_{set_key}" + (f"_{cfg.stage}" if cfg.stage else "")
    assert cfg.out == f"runs/peers/{path.stem}"
    assert (cfg.ema, cfg.val_limit, cfg.val_every, cfg.precision) == (0.999, 4, 4, "auto")
    model = create_model(cfg.model)
    stages = list(getattr(model, "training_stages", None) or [])
    assert (cfg.stage in stages) if stages else cfg.stage is None
    if cfg.init is None:
        return
    if cfg.init.startswith("runs/"):  # stage 2: stage 1's run output
        assert stages and cfg.stage == stages[1]
        assert cfg.init == f"runs/peers/{cfg.model}_{set_key}_{stages[0]}/best.safetensors"
        return
    assert split_name(cfg.init) == (cfg.model, set_key)  # shipped weights of this model and pair set
    load_weights(model, resolve_init(cfg.init))  # they exist and fit (strict)


def test_every_set_has_every_peer(monkeypatch):
    chains = _chains(monkeypatch)
    assert sorted(chains) == sorted(SETS)
    for set_key, models in chains.items():
        assert sorted(models) == sorted(METHODS), set_key
        for model, cfgs in models.items():
            assert tuple(c.stage for c in cfgs) == _stages(model), (set_key, model)
            if len(cfgs) == 2:
                assert cfgs[1].init == f"{cfgs[0].out}/best.safetensors"


@pytest.mark.parametrize("set_key", list(SETS))
def test_peers_match_clinicalfmamba_budget(set_key, monkeypatch):
    """Same batch and crop schedule and the same epochs in all (split over stages): the same pixels."""
    cfm = _cfm(set_key, monkeypatch)
    for model, cfgs in _chains(monkeypatch)[set_key].items():
        assert sum(c.epochs for c in cfgs) == cfm.epochs, model
        for c in cfgs:
            assert (c.batch_size, c.crop_schedule, c.crop) == (cfm.batch_size, cfm.crop_schedule, cfm.crop), model


@pytest.mark.parametrize("set_key", list(SETS))
def test_peer_pixels_from_the_splits(set_key, monkeypatch):
    if not (HARVARD / SETS[set_key] / "split.csv").is_file():
        pytest.skip("../shared/data is not available")
    steps = _train_items(SETS[set_key]) // 8  # one process: every full batch of the train split is a step
    cfm = _cfm(set_key, monkeypatch)
    want = pixels(cfm, steps)
    assert want >= 200e6  # issue 14: at least 200 million pixels per pair set
    for model, cfgs in _chains(monkeypatch)[set_key].items():
        got = sum(pixels(c, _train_items(SETS[set_key]) // c.batch_size) for c in cfgs)
        assert got == want, f"{set_key} {model}: {got} pixels, ClinicalFMamba-2D {want}"
