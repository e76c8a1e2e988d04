"""Generic trainer for fusion models that follow the fusion-model protocol.

A model needs `training_loss(a, b) -> (loss, {term: float})`, `forward(a, b) -> f` and `spatial_dims`.
Two-stage methods may also declare `training_stages: list[str]` and `set_stage(name)`; the trainer
calls `set_stage(cfg.stage)` before building the optimiser (so a stage can freeze parameters) and
optimises only parameters that require grad. Train stage 2 from stage 1 with `init=<stage-1 weights>`.

Outputs in `cfg.out` (rank 0 only):
- `last.safetensors` (weights) + `last_state.pt` (optimiser, step, schedule, RNG, log accumulators:
  plain tensors and containers, loaded with `weights_only=True`): `resume=True` continues bit-identically;
- `best.safetensors` + `best.json`: lowest validation loss so far;
- `log.csv`: one row per validation (epoch, step, train loss terms, val loss terms and metrics, lr, seconds);
- `config.yaml`: the resolved config.

The learning rate is a pure function of the optimiser step (constant, or cosine from `lr` to
`min_lr` over `epochs`), so the step is the whole schedule state. Augmentation draws are seeded by
(seed, epoch, item) and the batch order by (seed, epoch), so resuming mid-epoch skips the batches
already seen. Multi-process: launch with `torchrun --nproc_per_node N -m neurofuse train ...`;
DDP uses `gloo` on CPU and `nccl` on CUDA, every rank reads its DistributedSampler shard.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn
import yaml
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from neurofuse.brats import PreprocessConfig
from neurofuse.data import HarvardPairs, VolumePairs
from neurofuse.errors import InputError, NeurofuseError, UsageError
from neurofuse.io import atomic_write_path, write_csv, write_text
from neurofuse.metrics import compute_metrics
from neurofuse.models.optim import param_groups
from neurofuse.models.pretrained import get_pretrained_cfg, split_name
from neurofuse.models.registry import create_model, load_weights
from neurofuse.precision import PRECISIONS, cpu_info, guard_bf16, resolve_precision

# Settings that may change between a run and its resume without breaking exactness.
_RESUME_FREE = {"resume", "out", "max_steps", "max_minutes", "threads", "num_workers", "val_limit", "val_metrics",
                "validate_first", "val_every", "val_raw", "final_val_all",
                "init", "continue_from"}  # starting points only: a resumed run takes its own last weights


DATA_ENV = "NEUROFUSE_DATA"
_PATH_OPTIONS = ("data", "init", "continue_from")


def _expand_data_var(value: str, where: str) -> str:
    """`$NEUROFUSE_DATA` / `${NEUROFUSE_DATA}` in a config path replaced by the variable (configs name no
    machine's folders); a UsageError saying what to set when it is unset."""
    if DATA_ENV not in value:
        return value
    root = os.environ.get(DATA_ENV)
    if not root:
        raise UsageError(f"{where} uses ${DATA_ENV}, which is not set: export {DATA_ENV}=<folder holding "
                         "harvard/ and the BraTS folders>, or pass --data")
    return value.replace("${" + DATA_ENV + "}", root).replace("$" + DATA_ENV, root)


@dataclass
class TrainConfig:
    """Everything a training run depends on; loadable from YAML (`TrainConfig.from_yaml`).

    Budget options (`max_steps`, `max_minutes`) stop a run early with a resumable `last` checkpoint;
    they do not change the learning-rate schedule, which always spans `epochs`.
    """

    model: str = "clinicalfmamba_2d"
    data: str = ""
    out: str = "runs/train"
    model_args: dict[str, Any] = field(default_factory=dict)
    dataset: str = "auto"  # auto | harvard | volumes
    epochs: int = 100
    batch_size: int = 8
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    # lr multipliers by parameter-name prefix, e.g. {refine: 30}: a part added to warm-started weights
    # learns at its own pace while the rest keeps the small fine-tuning lr
    lr_scale: dict[str, float] = field(default_factory=dict)
    schedule: str = "constant"  # constant | cosine
    min_lr: float = 1e-6
    crop: int | None = 96  # 2D crop side / 3D patch side; None trains on whole images
    # Growing crops: [[fraction of total steps, crop side], ...]; from each fraction on, that crop is used
    # (a side >= the image trains on whole images). Replaces `crop` when set.
    crop_schedule: list[list[float]] | None = None
    augment: bool = True
    volume_size: int = 128
    volume_fit: str = "resample"  # resample | crop (neurofuse.brats.PreprocessConfig.mode)
    volume_clip: list[float] | None = field(default_factory=lambda: [0.5, 99.5])  # brain percentiles -> 0, 1
    val_ids: list[str] | None = None  # hold out exactly these case/image ids (volumes; else split.csv / rule)
    gain_jitter: float = 0.0  # with augment: half the items get each input scaled by U(1 - gain_jitter, 1)
    seed: int = 3407
    precision: str = "auto"  # auto | bf16 | fp32 (auto: bf16 where native, neurofuse.precision)
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None
    num_workers: int = 0
    channels_last: bool = True
    grad_clip: float | None = None
    fused_adam: bool = True
    max_steps: int | None = None
    max_minutes: float | None = None
    val_metrics: bool = True
    val_limit: int | None = None
    val_every: int = 1  # validate every N epochs (and always when a run stops)
    validate_first: bool = False
    stage: str | None = None
    init: str | None = None  # weights file, or a shipped `arch.tag` (e.g. clinicalfmamba_2d.spect-mri)
    # Continue a committed snapshot (`progress.json` beside its weights, `write_snapshot`): its weights and
    # its schedule position (step, images and pixels seen); the optimiser starts afresh.
    continue_from: str | None = None
    ema: float | None = None  # decay of an exponential moving average of the weights (validated, shipped)
    ema_warmup: bool = True  # decay min(ema, (1 + n) / (10 + n)) after n updates, so a short run's EMA is not stale
    val_raw: bool = False  # with `ema`, also validate the raw weights (val_raw_* columns) to measure the EMA
    final_val_all: bool = True  # the validation at a stop uses the whole val split (ignores val_limit)
    resume: bool = False

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> TrainConfig:
        """Build from a mapping, rejecting unknown keys with a one-line error naming `source`."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UsageError(f"{source}: unknown training option(s) {', '.join(unknown)}")
        types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
        values = dict(values)
        try:
            if values.get("betas") is not None:
                values["betas"] = tuple(float(x) for x in values["betas"])
            for key, value in values.items():  # YAML reads `1e-4` as a string; numbers may come as strings
                if isinstance(value, str | int) and not isinstance(value, bool):
                    if types[key].startswith("float"):
                        values[key] = float(value)
                    elif types[key].startswith("int"):
                        values[key] = int(value)
        except (TypeError, ValueError):
            raise UsageError(f"{source}: option {key!r} has a value of the wrong type") from None
        cfg = cls(**values)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Load a YAML mapping of options; `overrides` that are not None win over the file."""
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{path}: config file not found")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(values, dict):
            raise UsageError(f"{path}: expected a mapping of training options")
        values.update({k: v for k, v in overrides.items() if v is not None})
        for key in _PATH_OPTIONS:
            if isinstance(values.get(key), str):
                values[key] = _expand_data_var(values[key], f"{path}: {key}")
        return cls.from_dict(values, str(path))

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    def validate(self, source: str = "config") -> None:
        """Raise UsageError for values that cannot work."""
        checks = [
            (self.dataset in ("auto", "harvard", "volumes"), f"dataset {self.dataset!r} (auto|harvard|volumes)"),
            (self.schedule in ("constant", "cosine"), f"schedule {self.schedule!r} (constant|cosine)"),
            (self.precision in PRECISIONS, f"precision {self.precision!r} (auto|bf16|fp32)"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), f"device {self.device!r}"),
            (self.volume_fit in ("resample", "crop"), f"volume_fit {self.volume_fit!r} (resample|crop)"),
            (self.epochs >= 1 and self.batch_size >= 1 and self.val_every >= 1,
             "epochs, batch_size and val_every must be >= 1"),
            (self.lr > 0 and self.min_lr >= 0, "lr must be > 0 and min_lr >= 0"),
            (isinstance(self.lr_scale, dict) and all(isinstance(v, (int, float)) and v > 0
                                                      for v in self.lr_scale.values()),
             f"lr_scale {self.lr_scale} ({{parameter-name prefix: multiplier > 0}})"),
            (self.crop is None or self.crop >= 1, f"crop {self.crop}"),
            (self.ema is None or 0.0 < self.ema < 1.0, f"ema {self.ema} (a decay in (0, 1))"),
            (0.0 <= self.gain_jitter < 1.0, f"gain_jitter {self.gain_jitter} (in [0, 1))"),
            (self.crop_schedule is None or _valid_crop_schedule(self.crop_schedule),
             f"crop_schedule {self.crop_schedule} ([[fraction, side], ...], fractions rising from 0, sides >= 1)"),
            (self.max_steps is None or self.max_steps >= 0, f"max_steps {self.max_steps}"),
            (self.max_minutes is None or self.max_minutes > 0, f"max_minutes {self.max_minutes} (must be > 0)"),
            (bool(self.data), "data folder not set"),
        ]
        for ok, what in checks:
            if not ok:
                raise UsageError(f"{source}: bad training option: {what}")


def _valid_crop_schedule(schedule: Any) -> bool:
    try:
        fracs = [float(f) for f, _ in schedule]
        sides = [int(c) for _, c in schedule]
    except (TypeError, ValueError):
        return False
    return bool(fracs) and fracs[0] == 0.0 and fracs == sorted(fracs) and fracs[-1] < 1.0 and min(sides) >= 1


def ema_update_fn(decay: float, warmup: bool = True):
    """`AveragedModel` update applying torch's EMA step with decay `decay`, or with the warm-up
    min(decay, (1 + n) / (10 + n)) after n updates (as timm's ModelEmaV2 warm-up and TF's num_updates):
    with decay 0.999 and no warm-up, the EMA after 100 steps still holds 90% of the starting weights."""

    def update(ema_params, params, n_averaged) -> None:
        n = int(n_averaged)
        step_decay = min(decay, (1.0 + n) / (10.0 + n)) if warmup else decay
        get_ema_multi_avg_fn(step_decay)(ema_params, params, n_averaged)

    return update


def crop_at(cfg: TrainConfig, step: int, total_steps: int) -> int | None:
    """Crop side for optimiser step `step`: the last `crop_schedule` entry whose fraction is reached."""
    if not cfg.crop_schedule:
        return cfg.crop
    t = step / max(total_steps, 1)
    side = int(cfg.crop_schedule[0][1])
    for frac, crop in cfg.crop_schedule:
        if t >= float(frac):
            side = int(crop)
    return side


@dataclass
class TrainResult:
    """What a run did: final step, why it stopped, the best validation loss, the trained model."""

    out: Path
    step: int
    total_steps: int
    stopped: str  # "done" | "max_steps" | "max_minutes"
    best_val_loss: float | None
    model: nn.Module = field(repr=False)


# ------------------------------------------------------------------------------------------- data
def build_datasets(cfg: TrainConfig) -> tuple[Dataset, Dataset, int]:
    """(train, val, spatial_dims) for `cfg.data`: Harvard pairs (2D) or BraTS-layout volumes (3D)."""
    root = Path(cfg.data)
    if not root.is_dir():
        raise InputError(f"{root}: data folder not found")
    kind = cfg.dataset
    if kind == "auto":
        kind = "harvard" if (root / "split.csv").is_file() and (root / "MRI").is_dir() else "volumes"
    if kind == "harvard":
        train = HarvardPairs(root, "train", crop=cfg.crop, augment=cfg.augment, seed=cfg.seed)
        train.gain_jitter = cfg.gain_jitter
        return train, HarvardPairs(root, "val"), 2
    clip = None if cfg.volume_clip is None else (float(cfg.volume_clip[0]), float(cfg.volume_clip[1]))
    prep = PreprocessConfig(size=cfg.volume_size, mode=cfg.volume_fit, clip_percentiles=clip)
    train = VolumePairs(root, "train", crop=cfg.crop, augment=cfg.augment, prep=prep, seed=cfg.seed,
                        val_ids=cfg.val_ids)
    train.gain_jitter = cfg.gain_jitter
    return train, VolumePairs(root, "val", prep=prep, val_ids=cfg.val_ids), 3


# ---------------------------------------------------------------------------------- checkpoints
def save_weights(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write `model`'s state dict as safetensors (contiguous CPU copies), atomically."""
    state = {k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
             for k, v in model.state_dict().items()}
    with atomic_write_path(path) as tmp:
        save_file(state, str(tmp), metadata=metadata)


def export_fp16(src: str | Path, dst: str | Path) -> Path:
    """Copy safetensors weights with floating tensors cast to float16 (for shipping); returns `dst`."""
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise InputError(f"{src}: weights file not found")
    from safetensors import safe_open

    with safe_open(str(src), "pt") as fh:
        metadata = dict(fh.metadata() or {})
    state = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(src)).items()}
    metadata["dtype"] = "float16"
    with atomic_write_path(dst) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    return dst


def resolve_init(init: str) -> Path:
    """The weights file `init` names: a path, or a shipped `arch.tag` (`clinicalfmamba_2d.spect-mri`)."""
    path = Path(init)
    if path.is_file() or path.suffix == ".safetensors":
        return path
    arch, tag = split_name(init)
    if tag is None:
        raise InputError(f"{init}: weights file not found (give a .safetensors path or a shipped arch.tag)")
    return Path(get_pretrained_cfg(arch, tag).path)


def machine_summary(device: torch.device) -> str:
    """One line naming the processor (or GPU) and thread count, for progress and model cards."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA)"
    model = cpu_info()[0] or platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, " \
           f"capability {torch.backends.cpu.get_cpu_capability()}"


SNAPSHOT_WEIGHTS = "weights.safetensors"


def write_snapshot(run: str | Path, dest: str | Path, raw: bool = False) -> Path:
    """Copy a run's current state to `dest` for committing: float16 weights (EMA ones when the run keeps an
    EMA), `progress.json` (steps, images and pixels seen, config, last validation) and `log.csv`.

    `continue_from: <dest>/progress.json` continues the schedule from there on any machine. `raw` takes the
    raw weights even when an EMA is kept (for a run too short for its EMA; the JSON says which).
    """
    run, dest = Path(run), Path(dest)
    progress_path = run / "progress.json"
    if not progress_path.is_file():
        raise InputError(f"{progress_path}: not found (the run has not written a checkpoint yet)")
    progress = json.loads(progress_path.read_text(encoding="utf-8"))
    dest.mkdir(parents=True, exist_ok=True)
    source = "last.safetensors" if raw else progress["weights"]
    export_fp16(run / source, dest / SNAPSHOT_WEIGHTS)
    progress["weights"], progress["weights_from"] = SNAPSHOT_WEIGHTS, source
    write_text(dest / "progress.json", json.dumps(progress, indent=1))
    if (run / "log.csv").is_file():
        write_text(dest / "log.csv", (run / "log.csv").read_text(encoding="utf-8"))
    return dest


def read_snapshot(path: str | Path) -> dict[str, Any]:
    """A snapshot's progress (a `progress.json`, or the folder holding one) with `weights_path` resolved."""
    path = Path(path)
    if path.is_dir():
        path = path / "progress.json"
    if not path.is_file():
        raise InputError(f"{path}: snapshot progress file not found")
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
        progress["weights_path"] = path.parent / progress["weights"]
        int(progress["step"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a training snapshot ({exc})") from None
    return progress


def _save_state(path: Path, state: dict[str, Any]) -> None:
    with atomic_write_path(path) as tmp:
        torch.save(state, tmp)


def _read_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------ the run
class _LossModule(nn.Module):
    """Routes `training_loss` through `forward` so DistributedDataParallel sees (and syncs) it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        return self.model.training_loss(a, b)


def lr_at(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """Learning rate for optimiser step `step` (0-based): constant or cosine from lr to min_lr."""
    if cfg.schedule == "constant":
        return cfg.lr
    t = min(step, total_steps) / max(total_steps, 1)
    return cfg.min_lr + (cfg.lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * t))


def _resolve_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        name = cfg.device
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UsageError(f"device {cfg.device!r}: CUDA is not available here")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    return torch.device("cpu")


def _uses_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    return resolve_precision(cfg.precision, device) == "bf16"


def _autocast(cfg: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=_uses_bf16(cfg, device))


def _prep(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset, cfg: TrainConfig, device: torch.device,
             channels_last: bool = False) -> dict[str, float]:
    """Mean validation loss, loss terms and (when available) `clinicalfmamba` preset metrics, plus Qabf in
    2D and in 3D the average gradient AG (sharpness) of the fused volume and of the sources (AG_a, AG_b).

    With `cfg.val_limit` N, N items evenly spaced over the (id-sorted) set, so every case is represented.
    """
    metrics = compute_metrics if cfg.val_metrics else None
    n = len(data) if cfg.val_limit is None else max(1, min(cfg.val_limit, len(data)))
    chosen = sorted({round(i * (len(data) - 1) / max(n - 1, 1)) for i in range(n)})
    sums: dict[str, float] = {}
    was_training = model.training
    model.eval()
    for i in tqdm(chosen, desc="validate", leave=False, disable=n < 2):
        item = data[i]
        a, b = (_prep(item[k][None], device, channels_last) for k in ("a", "b"))
        with _autocast(cfg, device):
            loss, terms = model.training_loss(a, b)
        row = {"val_loss": float(loss), **{f"val_{k}": float(v) for k, v in terms.items()}}
        if metrics is not None:
            with _autocast(cfg, device):
                f = model(a, b)
            arr = [t[0, 0].float().clamp(0, 1).cpu().numpy() for t in (a, b, f)]
            row.update({f"val_{k}": float(v) for k, v in metrics(*arr, preset="clinicalfmamba").items()})
            if a.ndim == 4:  # 2D: Petrovic's edge-preservation Qabf too, for the learning curves
                row["val_Qabf"] = float(metrics(*arr, metrics=["Qabf"], preset="standard")["Qabf"])
            else:  # 3D: sharpness, the average gradient of the fused volume and of each source
                for key, vol in (("AG", arr[2]), ("AG_a", arr[0]), ("AG_b", arr[1])):
                    row[f"val_{key}"] = float(metrics(arr[0], arr[1], vol, metrics=["AG"], preset="standard")["AG"])
        for k, v in row.items():
            sums[k] = sums.get(k, 0.0) + v
    model.train(was_training)
    return {k: v / len(chosen) for k, v in sums.items()}


def _check_protocol(model: nn.Module, name: str) -> None:
    for attr in ("training_loss", "spatial_dims"):
        if not hasattr(model, attr):
            raise UsageError(f"model {name!r} cannot be trained: it has no {attr} (fusion-model protocol)")


def _apply_stage(model: nn.Module, cfg: TrainConfig) -> list[str]:
    stages = list(getattr(model, "training_stages", None) or [])
    if not stages:
        if cfg.stage is not None:
            raise UsageError(f"model {cfg.model!r} has no training stages; drop --stage {cfg.stage}")
        return stages
    if cfg.stage is None:
        if len(stages) > 1:
            raise UsageError(f"model {cfg.model!r} trains in stages ({', '.join(stages)}); choose one with --stage")
        cfg.stage = stages[0]
    if cfg.stage not in stages:
        raise UsageError(f"model {cfg.model!r}: unknown stage {cfg.stage!r}; stages: {', '.join(stages)}")
    model.set_stage(cfg.stage)
    return stages


def _same_setting(key: str, a: Any, b: Any) -> bool:
    """Equal settings; the data folder is one folder however spelled (relative, absolute)."""
    if key == "data" and isinstance(a, str) and isinstance(b, str):
        return Path(a).resolve() == Path(b).resolve()
    return a == b


def _regroup(saved: dict[str, Any], opt: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """An optimiser state saved with one group over `model.parameters()` (before the weight-decay groups)
    laid out for `opt`'s groups, when every group's settings agree (else unchanged: loading then refuses)."""
    groups = saved["param_groups"]
    if len(groups) != 1 or len(opt.param_groups) == 1:
        return saved
    order = {id(p): i for i, p in enumerate(model.parameters())}
    keys = ("betas", "eps", "weight_decay", "amsgrad", "maximize")  # lr is set by the schedule every step
    if len(order) != len(groups[0]["params"]) or any(g.get(k) != groups[0][k] for g in opt.param_groups for k in keys):
        return saved
    new_groups, new_state, j = [], {}, 0
    for g in opt.param_groups:
        ids = []
        for p in g["params"]:
            old = saved["state"].get(groups[0]["params"][order[id(p)]])
            if old is not None:
                if old["exp_avg"].shape != p.shape:
                    return saved
                new_state[j] = old
            ids.append(j)
            j += 1
        new_groups.append({**groups[0], "params": ids, **({"names": g["names"]} if "names" in g else {})})
    return {"state": new_state, "param_groups": new_groups}


def _check_resume_config(saved: dict[str, Any], cfg: TrainConfig, path: Path) -> None:
    now = cfg.to_dict()
    for key, value in saved.items():
        if key not in _RESUME_FREE and key in now and not _same_setting(key, now[key], value):
            raise UsageError(f"{path}: cannot resume with {key}={now[key]!r}, the run used {value!r}")


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@contextlib.contextmanager
def _distributed(device_hint: str) -> Iterator[tuple[int, int, int]]:
    """(rank, world, local_rank) from torchrun's environment; sets up and tears down the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    created = False
    if world > 1 and not dist.is_initialized():
        use_cuda = device_hint.startswith("cuda") or (device_hint == "auto" and torch.cuda.is_available())
        if use_cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if use_cuda else "gloo")
        created = True
    try:
        yield rank, world, local
    finally:
        if created:
            dist.destroy_process_group()


def train(cfg: TrainConfig, model: nn.Module | None = None) -> TrainResult:
    """Train `cfg.model` (or the given `model`, for callers with unregistered models) on `cfg.data`.

    `cfg` is not changed (a multi-stage model's default stage is filled in a copy).
    """
    cfg = dataclasses.replace(cfg)
    cfg.validate()
    with _distributed(cfg.device) as (rank, world, local_rank):
        return Trainer(cfg, model, rank, world, local_rank).run()


class Trainer:
    """One training run: `__init__` sets up (device, model, data, EMA, optimiser) and starts, resumes or
    continues a snapshot; `run` loops over `train_step`, `validate` and `checkpoint` until the schedule,
    `max_steps` or `max_minutes` ends it. Rank 0 writes every file."""

    def __init__(self, cfg: TrainConfig, model: nn.Module | None = None, rank: int = 0, world: int = 1,
                 local_rank: int = 0) -> None:
        self.cfg, self.rank, self.world = cfg, rank, world
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
            import numba  # the CPU scan's kernels run on numba's own thread pool

            numba.set_num_threads(min(cfg.threads, numba.config.NUMBA_NUM_THREADS))
        self.device = device = _resolve_device(cfg, local_rank)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        self.out = Path(cfg.out)
        if rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed)
        self.model = model = create_model(cfg.model, **cfg.model_args) if model is None else model
        _check_protocol(model, cfg.model)
        stages = _apply_stage(model, cfg)
        if cfg.init is not None and not cfg.resume:  # starting points: a resume takes its own last weights
            load_weights(model, resolve_init(cfg.init), optional=getattr(model, "init_optional", ()))
        snapshot = None if cfg.continue_from is None or cfg.resume else read_snapshot(cfg.continue_from)
        if snapshot is not None:
            load_weights(model, snapshot["weights_path"])
        self.train_ds, self.val_ds, data_dims = build_datasets(cfg)
        if data_dims != model.spatial_dims:
            raise UsageError(f"{cfg.data}: {data_dims}D data but model {cfg.model!r} is {model.spatial_dims}D")
        self.channels_last = cfg.channels_last and model.spatial_dims == 2
        model.to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        model.train()
        if _uses_bf16(cfg, device):  # a layer whose bf16 kernel is faulty here runs in fp32
            guard_bf16(model, device, backward=True)
        self.ema = None
        if cfg.ema is not None:  # torch's own EMA wrapper; buffers (norm statistics) are averaged too
            self.ema = AveragedModel(model, multi_avg_fn=ema_update_fn(cfg.ema, cfg.ema_warmup), use_buffers=True)
        self.shipped = model if self.ema is None else self.ema.module  # validated, kept as best, shipped

        self.params = [p for p in model.parameters() if p.requires_grad]
        # Weight decay only on conv/linear/attention weights (A_log, D, biases and norms exempt, as mamba-ssm);
        # the fused kernel (CPU and CUDA) does one pass over all parameters instead of ~10 small ops each.
        groups = [g for g in param_groups(model, cfg.weight_decay, cfg.lr_scale) if g["params"]]
        self.opt = torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas, fused=cfg.fused_adam)
        self.sampler = DistributedSampler(self.train_ds, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed,
                                          drop_last=True)
        self.steps_per_epoch = len(self.sampler) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise InputError(f"{cfg.data}: {len(self.train_ds)} training items are fewer than one batch per "
                             f"process (batch {cfg.batch_size} x {world} processes)")
        self.total_steps = cfg.epochs * self.steps_per_epoch
        self.max_steps = self.total_steps if cfg.max_steps is None else min(self.total_steps, cfg.max_steps)
        self.full_shape = self.train_ds.item_shape  # a batch of this shape is whole images (pixels_full)

        self.step, self.seconds, self.best, self.rows = 0, 0.0, None, []
        # Where the training came from before this machine's part, one entry per machine it ran on (snapshot
        # continuations): progress.json lists them, and this part, for the model card.
        self.history: list[dict[str, Any]] = []
        self.seen = {"images": 0, "pixels": 0, "pixels_full": 0}  # training items and pixels seen, all ranks
        self.acc: dict[str, float] = {}  # sums of train loss terms since the last validation row
        self.acc_n = 0
        if snapshot is not None:
            self._continue(snapshot)
        if cfg.resume:
            self._resume()
        elif (self.out / "last_state.pt").is_file():
            raise UsageError(f"{self.out}: holds a run already; continue it with --resume or choose another --out")
        elif rank == 0:
            write_text(self.out / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))

        self.net: nn.Module = _LossModule(model)
        if world > 1:
            self.net = DistributedDataParallel(self.net, device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=bool(stages))
        self.meta = {"model": cfg.model, "model_args": json.dumps(cfg.model_args), "stage": str(cfg.stage)}

    # ------------------------------------------------------------------------------- start points
    def _continue(self, snapshot: dict[str, Any]) -> None:
        """Take a committed snapshot's schedule position, training time, log rows and machine history
        (its weights are already loaded), so the new run's files go on where the snapshot's ended."""
        self.step = int(snapshot["step"])
        self.seen = {k: int(snapshot.get(k, 0)) for k in self.seen}
        self.seconds = float(snapshot.get("train_seconds", 0.0))
        self.rows = _read_log(Path(snapshot["weights_path"]).parent / "log.csv")
        self.history = list(snapshot.get("history") or [
            {"machine": snapshot.get("machine"), "from_step": 0, "to_step": self.step, "seconds": self.seconds}])
        if self.ema is not None:  # the EMA goes on with its horizon (a restarted warm-up would follow the raw weights)
            self.ema.n_averaged.fill_(int(snapshot.get("ema_n", self.step)))
        if self.step >= self.total_steps:
            raise UsageError(f"{self.cfg.continue_from}: the snapshot is at step {self.step}, the schedule ends at "
                             f"{self.total_steps}; raise epochs to continue")

    def _resume(self) -> None:
        """Restore everything from `last_state.pt` and the last weights: the run continues bit-identically."""
        state_path = self.out / "last_state.pt"
        if not state_path.is_file():
            raise UsageError(f"{state_path}: nothing to resume (no last checkpoint in {self.out})")
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        _check_resume_config(state["config"], self.cfg, state_path)
        load_weights(self.model, self.out / "last.safetensors")
        try:
            self.opt.load_state_dict(_regroup(state["optimizer"], self.opt, self.model))
        except ValueError as err:  # e.g. saved before the weight-decay parameter groups
            raise UsageError(f"{state_path}: the optimiser state does not fit this version's optimiser ({err}); "
                             "continue from the run's weights instead: --continue-from DIR") from None
        self.step, self.seconds, self.best = state["step"], state["seconds"], state["best_val_loss"]
        self.seen = {k: int(state.get("seen", {}).get(k, 0)) for k in self.seen}
        if self.ema is not None:
            load_weights(self.ema.module, self.out / "last_ema.safetensors")
            self.ema.n_averaged.fill_(int(state["ema_n"]))
        self.acc, self.acc_n = dict(state["train_sums"]), state["train_count"]
        self.history = list(state.get("history", []))
        _set_rng_state(state["rng"], self.device)
        self.rows = _read_log(self.out / "log.csv")

    # --------------------------------------------------------------------------------- one step
    def train_step(self, batch: dict[str, torch.Tensor]) -> float:
        """One optimiser step on `batch`; updates the EMA and the counters; returns the loss."""
        cfg, t0 = self.cfg, time.perf_counter()
        a, b = (_prep(batch[k], self.device, self.channels_last) for k in ("a", "b"))
        for group in self.opt.param_groups:
            group["lr"] = lr_at(cfg, self.step, self.total_steps) * group.get("lr_scale", 1.0)
        self.opt.zero_grad(set_to_none=True)
        with _autocast(cfg, self.device):
            loss, terms = self.net(a, b)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            raise NeurofuseError(f"{cfg.out}: training loss is {loss_value} at step {self.step + 1} ({cfg.precision}); "
                                 "the last checkpoint is kept; try --precision fp32 or a lower lr")
        loss.backward()
        if cfg.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.step += 1
        n_items, n_pixels = a.shape[0] * self.world, math.prod(a.shape[2:])
        self.seen["images"] += n_items
        self.seen["pixels"] += n_items * n_pixels
        if tuple(a.shape[2:]) == self.full_shape:
            self.seen["pixels_full"] += n_items * n_pixels
        for k, v in {"loss": loss_value, **terms}.items():
            self.acc[k] = self.acc.get(k, 0.0) + float(v)
        self.acc_n += 1
        self.seconds += time.perf_counter() - t0
        return loss_value

    # ------------------------------------------------------------------- validation and files
    def validate(self, final: bool = False) -> None:
        """Validate the shipped (EMA) weights, log a row, keep the best; `final` uses the whole val split."""
        cfg = self.cfg
        if self.rank == 0:
            every = final and cfg.final_val_all and cfg.val_limit is not None
            vcfg = dataclasses.replace(cfg, val_limit=None) if every else cfg
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                val = evaluate(self.shipped, self.val_ds, vcfg, self.device, self.channels_last)
                if self.ema is not None and cfg.val_raw:
                    raw = evaluate(self.model, self.val_ds, vcfg, self.device, self.channels_last)
                    val.update({f"val_raw_{k[4:]}": v for k, v in raw.items()})
            last = max(self.step - 1, 0)
            n_val = len(self.val_ds) if vcfg.val_limit is None else min(vcfg.val_limit, len(self.val_ds))
            row = {"epoch": round(self.step / self.steps_per_epoch, 4), "step": self.step, **self.seen,
                   "val_items": n_val, **{f"train_{k}": v / max(self.acc_n, 1) for k, v in self.acc.items()}, **val,
                   "lr": lr_at(cfg, last, self.total_steps), "crop": crop_at(cfg, last, self.total_steps),
                   "seconds": round(self.seconds, 2)}
            self.rows.append(row)
            write_csv(self.out / "log.csv", self.rows)
            # Only validations on the same items compete for best (a whole-split final row is not compared).
            if not every and math.isfinite(val["val_loss"]) and (self.best is None or val["val_loss"] < self.best):
                self.best = val["val_loss"]
                save_weights(self.shipped, self.out / "best.safetensors", {**self.meta, "step": str(self.step)})
                write_text(self.out / "best.json", json.dumps(row, indent=1))
        self.acc, self.acc_n = {}, 0
        if self.world > 1:
            dist.barrier()

    def checkpoint(self) -> None:
        """Last weights (and EMA), the resumable state and `progress.json` (rank 0)."""
        cfg, meta = self.cfg, {**self.meta, "step": str(self.step)}
        ema_n = 0 if self.ema is None else int(self.ema.n_averaged)
        save_weights(self.model, self.out / "last.safetensors", meta)
        if self.ema is not None:
            save_weights(self.ema.module, self.out / "last_ema.safetensors", {**meta, "ema": str(cfg.ema)})
        _save_state(self.out / "last_state.pt", {
            "step": self.step, "seconds": self.seconds, "best_val_loss": self.best,
            "optimizer": self.opt.state_dict(), "seen": dict(self.seen),
            "ema_n": ema_n, "rng": _rng_state(self.device),
            "train_sums": self.acc, "train_count": self.acc_n, "config": cfg.to_dict(),
            "history": self.history})
        start_step = self.history[-1]["to_step"] if self.history else 0
        here = {"machine": machine_summary(self.device), "from_step": start_step, "to_step": self.step,
                "seconds": round(self.seconds - sum(h["seconds"] for h in self.history), 1)}
        write_text(self.out / "progress.json", json.dumps(
            {"model": cfg.model, "model_args": cfg.model_args, "step": self.step, "total_steps": self.total_steps,
             "epoch": round(self.step / self.steps_per_epoch, 4), **self.seen,
             "ema_n": ema_n,
             "train_seconds": round(self.seconds, 1),
             "weights": "last_ema.safetensors" if self.ema is not None else "last.safetensors",
             "machine": here["machine"], "history": [*self.history, here],
             "last_val": self.rows[-1] if self.rows else None,
             "config": cfg.to_dict()}, indent=1))

    # ------------------------------------------------------------------------------- the loop
    def _loader(self) -> DataLoader:
        """The rest of the current epoch's batches (seeded order; crop side from the schedule)."""
        cfg = self.cfg
        epoch, skip = divmod(self.step, self.steps_per_epoch)
        self.sampler.set_epoch(epoch)
        self.train_ds.set_epoch(epoch)
        if cfg.crop_schedule:
            self.train_ds.set_crop(crop_at(cfg, self.step, self.total_steps))
        indices = list(self.sampler)[skip * cfg.batch_size:]
        return DataLoader(self.train_ds, batch_size=cfg.batch_size, sampler=indices, drop_last=True,
                          num_workers=cfg.num_workers, pin_memory=self.device.type == "cuda",
                          generator=torch.Generator().manual_seed(cfg.seed + epoch))

    def _out_of_time(self, deadline: float | None) -> bool:
        if deadline is None:
            return False
        # On the device the process group uses (nccl reduces CUDA tensors only).
        flag = torch.tensor(float(time.monotonic() >= deadline), device=self.device)
        if self.world > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    def run(self) -> TrainResult:
        cfg = self.cfg
        deadline = None if cfg.max_minutes is None else time.monotonic() + 60.0 * cfg.max_minutes
        if cfg.validate_first and self.step == 0 and not self.rows:
            self.validate()
        stopped = "done"
        while self.step < self.max_steps:
            epoch = self.step // self.steps_per_epoch
            bar = tqdm(self._loader(), total=self.steps_per_epoch - self.step % self.steps_per_epoch,
                       desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=self.rank != 0, dynamic_ncols=True)
            for batch in bar:
                loss = self.train_step(batch)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr_at(cfg, self.step - 1, self.total_steps):.2e}")
                if self.step >= self.max_steps:
                    break
                if cfg.crop_schedule and crop_at(cfg, self.step, self.total_steps) != crop_at(
                        cfg, self.step - 1, self.total_steps):
                    break  # the next batches use the next crop side: a fresh loader at this step
                if self._out_of_time(deadline):
                    stopped = "max_minutes"
                    break
            bar.close()
            done_epochs, into_epoch = divmod(self.step, self.steps_per_epoch)
            epoch_end = into_epoch == 0 and done_epochs % cfg.val_every == 0
            if self.step >= self.max_steps or stopped != "done":
                self.validate(final=True)
            elif epoch_end:
                self.validate()
            if self.rank == 0:
                self.checkpoint()
            if stopped != "done":
                break
        if self.world > 1:  # DDP syncs buffers (BatchNorm statistics) before each forward; align the final ones
            for buf in self.model.buffers():
                dist.broadcast(buf, src=0)
        if stopped == "done" and self.step < self.total_steps:
            stopped = "max_steps"
        return TrainResult(out=self.out, step=self.step, total_steps=self.total_steps, stopped=stopped,
                           best_val_loss=self.best, model=self.model)
