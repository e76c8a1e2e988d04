"""HGG-vs-LGG classification from T2, FLAIR, both stacked, or their fusion (ClinicalFMamba's clinical test).

The paper names neither its classifier nor its split, so the protocol here is a standard one, written
down in `docs/classification.md`:

- Classifier: a compact ResNet (basic blocks, batch norm, global average pooling, one logit) with ONE
  code path for 2D and 3D via `spatial_dims` layer factories, in the style of MONAI.
- Inputs: `t2`, `flair`, `stack` (T2 and FLAIR as two channels) or `fused:<method>` (one channel, the
  output of `neurofuse.fusion.fuse(t2, flair, method)`: per slice in 2D, per volume in 3D).
- 2D uses the most tumour-bearing axial slices of each case (central slices without a segmentation);
  all slices of a patient stay in one fold and the patient's score is the mean slice probability.
- Stratified patient-level k-fold cross-validation, repeated over seeds; AUC (scikit-learn), F1 and
  accuracy at probability 0.5 per test fold, reported as mean +- std over all folds of all repeats.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from neurofuse.brats import (
    BratsCase,
    PreprocessConfig,
    cached_array,
    load_preprocessed,
    select_slices,
)
from neurofuse.errors import InputError, UsageError
from neurofuse.evaluate import mean_std
from neurofuse.fusion import fuse, fuse_axial, get_method
from neurofuse.io import atomic_write_path, write_csv, write_text

BASE_INPUTS = ("t2", "flair", "stack")


# ------------------------------------------------------------------------------------------ model
def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """Convolution class for 2D or 3D."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def norm_nd(spatial_dims: int) -> type[nn.Module]:
    """Batch-norm class for 2D or 3D."""
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims]


class BasicBlock(nn.Module):
    """Residual block: conv3-BN-ReLU-conv3-BN plus identity (or 1x1 strided projection), ReLU.

    (N, c_in, *S) -> (N, c_out, *S / stride).
    """

    def __init__(self, spatial_dims: int, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        conv, norm = conv_nd(spatial_dims), norm_nd(spatial_dims)
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = norm(c_out)
        self.conv2 = conv(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = norm(c_out)
        self.act = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(conv(c_in, c_out, 1, stride=stride, bias=False), norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn1(self.conv1(x)))
        return self.act(self.bn2(self.conv2(y)) + self.shortcut(x))


@dataclass(frozen=True)
class ResNetConfig:
    """Classifier size: stage widths and blocks per stage (every stage after the first halves the grid)."""

    spatial_dims: int = 2
    in_channels: int = 1
    widths: tuple[int, ...] = (8, 16, 32)
    blocks: tuple[int, ...] = (1, 1, 1)
    dropout: float = 0.2


class ResNet(nn.Module):
    """Compact ResNet for 2D or 3D binary classification.

    MONAI's `monai.networks.nets.ResNet(block="basic", shortcut_type="B", spatial_dims=...)` is the same
    network (tested: equal logits with the weights copied) but has exactly four stages; this one takes
    any number (three by default, the classifier of the published runs) and a dropout before the head.

    Args:
        cfg: see `ResNetConfig`. Input (N, in_channels, *S), S at least 2**(len(widths) + 1);
            output (N,) logits. Stem (stride-2 conv, stride-2 max pool) as in ResNet, then one stage
            per width, global average pooling, dropout, linear.
    """

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        if cfg.spatial_dims not in (2, 3):
            raise UsageError(f"spatial_dims must be 2 or 3, got {cfg.spatial_dims}")
        self.spatial_dims = cfg.spatial_dims
        conv, norm = conv_nd(cfg.spatial_dims), norm_nd(cfg.spatial_dims)
        pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[cfg.spatial_dims]
        self.stem = nn.Sequential(
            conv(cfg.in_channels, cfg.widths[0], 3, stride=2, padding=1, bias=False),
            norm(cfg.widths[0]), nn.ReLU(inplace=True), pool(3, stride=2, padding=1))
        stages, c = [], cfg.widths[0]
        for i, (w, n) in enumerate(zip(cfg.widths, cfg.blocks, strict=True)):
            for j in range(n):
                stages.append(BasicBlock(cfg.spatial_dims, c, w, stride=2 if (i > 0 and j == 0) else 1))
                c = w
        self.stages = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stages(self.stem(x))
        return self.head(h.flatten(2).mean(dim=2)).squeeze(1)


# ---------------------------------------------------------------------------------------- metrics
def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (scikit-learn's `roc_auc_score`: ties count one half); NaN for one class."""
    from sklearn.metrics import roc_auc_score

    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def roc_curve(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score threshold, from (0, 0) to (1, 1)
    (scikit-learn's `roc_curve` without dropping collinear points); both classes must be present."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        raise InputError("ROC curve needs both classes among the labels")
    fpr, tpr, _ = sk_roc_curve(y, np.asarray(scores, dtype=np.float64), drop_intermediate=False)
    return fpr, tpr


def f1_accuracy(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> tuple[float, float]:
    """F1 of the positive class (HGG) and accuracy, predicting positive when score >= threshold."""
    y = np.asarray(labels).astype(bool)
    p = np.asarray(scores) >= threshold
    tp, fp, fn = int((y & p).sum()), int((~y & p).sum()), int((y & ~p).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return f1, float((y == p).mean())


def stratified_folds(labels: Sequence[int], k: int, seed: int) -> list[np.ndarray]:
    """Test-index arrays of `k` folds with each class spread evenly (shuffled with `seed`).

    Each fold gets the class counts scikit-learn's `StratifiedKFold` gives it (the samples sorted by class,
    dealt round-robin; tested, with the classes in sorted order where scikit-learn takes them in order of
    first appearance); the samples within a class are shuffled by our own seeded permutation, so the fold
    assignments of the published runs (docs/classification.md) stay as they were.
    """
    y = np.asarray(labels)
    counts = {c: int((y == c).sum()) for c in np.unique(y)}
    if k < 2 or min(counts.values()) < k:
        raise InputError(f"cannot make {k} stratified folds from class counts {counts} (need k >= 2 per class)")
    rng = np.random.default_rng(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for c in sorted(counts):
        idx = rng.permutation(np.flatnonzero(y == c))
        for j, i in enumerate(idx):
            folds[(j + offset) % k].append(int(i))
        offset += len(idx)
    return [np.sort(np.array(f)) for f in folds]


# ------------------------------------------------------------------------------------------- data
def parse_input(variant: str) -> tuple[str, str | None]:
    """("t2"|"flair"|"stack", None) or ("fused", method) for an input name; UsageError otherwise."""
    if variant in BASE_INPUTS:
        return variant, None
    if variant.startswith("fused:") and variant[6:]:
        get_method(variant[6:])
        return "fused", variant[6:]
    raise UsageError(f"unknown input {variant!r}; use t2, flair, stack or fused:<method>")


@dataclass(frozen=True)
class DataConfig:
    """What the classifier sees: preprocessing, dims and, for 2D, how many slices per case."""

    dims: int = 2
    slices: int = 8
    pre: PreprocessConfig = field(default_factory=PreprocessConfig)
    fuse_options: dict = field(default_factory=dict)  # method options, e.g. {"pretrained": "brats"}
    fuse_in: str = "slices"  # 2D fused inputs: fuse each axial slice ("slices") or slice the 3D-fused volume


def case_inputs(case: BratsCase, variant: str, cfg: DataConfig, cache_dir: str | Path | None) -> np.ndarray:
    """One case's input: 3D (C, S, S, S); 2D (n_slices, C, S, S). Arrays in [0, 1], float32."""
    kind, method = parse_input(variant)
    vols = load_preprocessed(case, cfg.pre, cache_dir)
    t2, flair = vols["t2"], vols["flair"]
    idx = None
    if cfg.dims == 2:
        idx = select_slices(vols.get("seg"), cfg.slices, depth=t2.shape[2])
        if kind != "fused" or cfg.fuse_in == "slices":
            t2, flair = t2[:, :, idx], flair[:, :, idx]
    if kind == "t2":
        chans = [t2]
    elif kind == "flair":
        chans = [flair]
    elif kind == "stack":
        chans = [t2, flair]
    else:
        learned = get_method(method).kind == "learned"  # options such as weights go to learned methods only
        opts = {k: str(v) for k, v in sorted(cfg.fuse_options.items())} if learned else {}
        settings = {"kind": "fused", "method": method, "dims": cfg.dims, "slices": cfg.slices,
                    "modalities": cfg.pre.modalities, "pre": asdict(cfg.pre)}
        if opts:  # (keys added only when used, so existing caches stay valid)
            settings["options"] = opts
        if cfg.dims == 2 and cfg.fuse_in == "slices":
            fused = cached_array(case, settings, cache_dir, lambda: fuse_axial(t2, flair, method, **opts))
        else:
            if cfg.dims == 2:
                settings = {**settings, "dims": 3, "slices": None}  # the whole fused volume, shared with 3D
            fused = cached_array(case, settings, cache_dir, lambda: fuse(t2, flair, method, **opts))
            if idx is not None:
                fused = fused[:, :, idx]
        chans = [fused]
    x = np.stack(chans).astype(np.float32)  # (C, *S); 2D: (C, S, S, n_slices)
    return np.moveaxis(x, 3, 0) if cfg.dims == 2 else x


# --------------------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of one classifier (AdamW, class-balanced BCE, left-right flip augmentation)."""

    epochs: int = 20
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-3
    widths: tuple[int, ...] = (8, 16, 32)
    blocks: tuple[int, ...] = (1, 1, 1)
    device: str = "cpu"


def train_classifier(x: np.ndarray, y: np.ndarray, spatial_dims: int, cfg: TrainConfig, seed: int) -> ResNet:
    """A ResNet trained on samples x (N, C, *S; float16 or float32) with labels y (N,) in {0, 1}."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dev = torch.device(cfg.device)
    model = ResNet(ResNetConfig(spatial_dims, x.shape[1], cfg.widths, cfg.blocks)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = cfg.epochs * math.ceil(len(x) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(steps, 1))
    n_pos = float(y.sum())
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((len(y) - n_pos) / max(n_pos, 1.0), device=dev))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y.astype(np.float32))
    model.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(len(x))
        for start in range(0, len(x), cfg.batch_size):
            b = order[start:start + cfg.batch_size]
            if len(b) < 2:  # batch norm needs two samples
                continue
            xb = xt[b].to(dev, torch.float32)
            flip = torch.from_numpy(rng.random(len(b)) < 0.5).to(dev)
            xb = torch.where(flip.view(-1, *[1] * (xb.ndim - 1)), xb.flip(2), xb)  # left-right (axis i)
            loss = loss_fn(model(xb), yt[b].to(dev))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def predict(model: ResNet, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Probabilities of HGG for samples x (N, C, *S), on the model's device."""
    dev = next(model.parameters()).device
    xt = torch.from_numpy(x)
    return np.concatenate([torch.sigmoid(model(xt[i:i + batch_size].to(dev, torch.float32))).cpu().numpy()
                           for i in range(0, len(x), batch_size)])


@dataclass
class VariantResult:
    """Cross-validated result of one input variant: per-fold metrics and out-of-fold scores per repeat."""

    variant: str
    dims: int
    fold_metrics: list[dict[str, float]] = field(default_factory=list)
    oof: list[np.ndarray] = field(default_factory=list)  # one (n_cases,) score array per repeat

    def summary(self) -> dict[str, float]:
        """Mean and sample std (`evaluate.mean_std`) of AUC, F1 and accuracy over all folds of all repeats."""
        out: dict[str, float] = {}
        for m in ("auc", "f1", "acc"):
            s = mean_std(f[m] for f in self.fold_metrics)
            out[f"{m}_mean"], out[f"{m}_std"] = s.mean, s.std
        return out


def cross_validate(cases: Sequence[BratsCase], variant: str, data: DataConfig, train: TrainConfig,
                   folds: int = 5, repeats: int = 2, seed: int = 0, cache_dir: str | Path | None = None,
                   progress: bool = True) -> VariantResult:
    """Stratified patient-level k-fold CV of one input variant, repeated `repeats` times (seeds seed+r)."""
    labels = np.array([c.label for c in cases])
    inputs = [case_inputs(c, variant, data, cache_dir).astype(np.float16) for c in  # half the memory
              tqdm(cases, desc=f"inputs {variant} {data.dims}D", unit="case", disable=not progress, leave=False)]
    result = VariantResult(variant, data.dims)
    bar = tqdm(total=folds * repeats, desc=f"CV {variant} {data.dims}D", unit="fold", disable=not progress)
    for r in range(repeats):
        oof = np.full(len(cases), np.nan)
        for f, test in enumerate(stratified_folds(labels, folds, seed + r)):
            train_idx = np.setdiff1d(np.arange(len(cases)), test)
            if data.dims == 2:  # slices of a patient share the patient's label and fold
                x = np.concatenate([inputs[i] for i in train_idx])
                y = np.concatenate([np.full(len(inputs[i]), labels[i]) for i in train_idx])
            else:
                x, y = np.stack([inputs[i] for i in train_idx]), labels[train_idx]
            model = train_classifier(x, y, data.dims, train, seed=1000 * (seed + r) + f)
            for i in test:
                sample = inputs[i] if data.dims == 2 else inputs[i][None]
                oof[i] = float(predict(model, sample).mean())  # patient score = mean slice probability
            f1, acc = f1_accuracy(labels[test], oof[test])
            result.fold_metrics.append({"repeat": r, "fold": f, "auc": roc_auc(labels[test], oof[test]),
                                        "f1": f1, "acc": acc})
            bar.update()
        result.oof.append(oof)
    bar.close()
    return result


# ---------------------------------------------------------------------------------------- reports
_CSV_FIELDS = ("dims", "input", "auc_mean", "auc_std", "f1_mean", "f1_std", "acc_mean", "acc_std",
               "cases", "hgg", "folds", "repeats")


def write_table_csv(path: Path, results: Sequence[VariantResult], labels: np.ndarray, folds: int,
                    repeats: int) -> None:
    """One row per (dims, input) with mean and std of AUC, F1, accuracy."""
    meta = {"cases": len(labels), "hgg": int(labels.sum()), "folds": folds, "repeats": repeats}
    rows = [{"dims": r.dims, "input": r.variant, **{k: f"{v:.4f}" for k, v in r.summary().items()}, **meta}
            for r in results]
    write_csv(path, rows, list(_CSV_FIELDS))


def write_predictions_csv(path: Path, results: Sequence[VariantResult], cases: Sequence[BratsCase]) -> None:
    """Out-of-fold patient scores: dims, input, repeat, case id, label, score."""
    with atomic_write_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["dims", "input", "repeat", "id", "label", "score"])
        for res in results:
            for r, oof in enumerate(res.oof):
                for c, s in zip(cases, oof, strict=True):
                    w.writerow([res.dims, res.variant, r, c.id, c.label, f"{s:.6f}"])


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
    """The paper's layout: one row per input, AUC/F1/ACC (mean +- std) for 2D then 3D."""
    dims = sorted({r["dims"] for r in rows})
    inputs = list(dict.fromkeys(r["input"] for r in rows))
    by = {(r["dims"], r["input"]): r for r in rows}
    head = "| input | " + " | ".join(f"{d}D {m}" for d in dims for m in ("AUC", "F1", "ACC")) + " |"
    lines = [head, "|" + " --- |" * (1 + 3 * len(dims))]
    for inp in inputs:
        cells = []
        for d in dims:
            r = by.get((d, inp))
            cells += ["-"] * 3 if r is None else [f"{float(r[f'{m}_mean']):.3f} ± {float(r[f'{m}_std']):.3f}"
                                                  for m in ("auc", "f1", "acc")]
        lines.append(f"| {inp} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_roc(path: Path, results: Sequence[VariantResult], labels: np.ndarray) -> None:
    """ROC curves of the out-of-fold patient scores, one line per input (mean TPR over repeats)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = np.linspace(0, 1, 201)
    fig, ax = plt.subplots(figsize=(5, 5))
    for res in results:
        tprs, aucs = [], []
        for oof in res.oof:
            fpr, tpr = roc_curve(labels, oof)
            tprs.append(np.interp(grid, fpr, tpr))  # fpr is non-decreasing
            aucs.append(roc_auc(labels, oof))
        ax.plot(grid, np.mean(tprs, axis=0), label=f"{res.variant} (pooled AUC {np.mean(aucs):.2f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1),
           title=f"HGG vs LGG, {results[0].dims}D, out-of-fold")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_write_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_reports(out: Path, results: Sequence[VariantResult], cases: Sequence[BratsCase], folds: int,
                  repeats: int) -> Path:
    """classification_<d>d.csv, predictions_<d>d.csv and roc_<d>d.png per dims, and classification.md
    from every classification_*d.csv in `out` (so 2D and 3D runs into one folder make one table)."""
    out.mkdir(parents=True, exist_ok=True)
    labels = np.array([c.label for c in cases])
    for d in sorted({r.dims for r in results}):
        sub = [r for r in results if r.dims == d]
        write_table_csv(out / f"classification_{d}d.csv", sub, labels, folds, repeats)
        write_predictions_csv(out / f"predictions_{d}d.csv", sub, cases)
        plot_roc(out / f"roc_{d}d.png", sub, labels)
    rows: list[dict[str, str]] = []
    for f in sorted(out.glob("classification_*d.csv")):
        with open(f, newline="", encoding="utf-8") as fh:
            rows += list(csv.DictReader(fh))
    n = rows[0]
    text = (f"# HGG vs LGG classification\n\n{n['cases']} cases ({n['hgg']} HGG), stratified patient-level "
            f"{n['folds']}-fold CV x {n['repeats']} repeats; mean ± std over folds.\n\n" + markdown_table(rows))
    md = out / "classification.md"
    write_text(md, text)
    return md
