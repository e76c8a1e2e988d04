"""`neurofuse classify`: cross-validated HGG-vs-LGG classification from T2, FLAIR, stacked or fused inputs."""

from __future__ import annotations

import time
from pathlib import Path

import click

from neurofuse.cli.app import main
from neurofuse.cli.fuse import method_options
from neurofuse.cli.options import clip_option
from neurofuse.errors import InputError, UsageError


@main.command("classify")
@click.option("--data", "root", required=True, type=click.Path(path_type=Path),
              help="BraTS root (2019/2020 layout with grades), at any level.")
@click.option("--input", "inputs", multiple=True, required=True,
              help="t2 | flair | stack | fused:METHOD; repeat for several variants.")
@click.option("--dims", type=click.Choice(["2", "3", "both"]), default="2", show_default=True)
@click.option("--folds", default=5, show_default=True, help="Stratified patient-level folds.")
@click.option("--repeats", default=2, show_default=True, help="CV repeats (different fold seeds).")
@click.option("--epochs", default=20, show_default=True)
@click.option("--batch-size", default=None, type=int, help="Default 16 (2D slices) or 4 (3D volumes).")
@click.option("--lr", default=2e-3, show_default=True, help="Peak learning rate (one-cycle AdamW).")
@click.option("--size", default=128, show_default=True, help="Grid edge after preprocessing (voxels).")
@click.option("--slices", default=8, show_default=True, help="2D: tumour-bearing axial slices per case.")
@click.option("--mode", type=click.Choice(["resample", "crop"]), default="resample", show_default=True,
              help="Brain box to grid: scale to fit, or crop/pad at native resolution.")
@clip_option(default=(0.5, 99.5), help="Brain intensity percentiles mapped to 0 and 1 (per volume).",
             dest="clip_percentiles")
@click.option("--fuse-in", type=click.Choice(["slices", "volume"]), default="slices", show_default=True,
              help="2D fused inputs: fuse each axial slice in 2D, or take the slices of the volume fused in 3D.")
@click.option("-O", "--option", "fuse_opts", multiple=True, metavar="KEY=VALUE",
              help="Option of the learned fusion method(s), e.g. -O pretrained=brats or -O weights=FILE.")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="Torch device for training (cpu, cuda, ...).")
@click.option("--threads", default=1, show_default=True,
              help="Torch CPU threads (small models run fastest on one thread of a shared CPU).")
@click.option("--cache", type=click.Path(path_type=Path), default=None,
              help="Cache folder for preprocessed/fused arrays (default OUT/cache).")
@click.option("-o", "--output", "out", required=True, type=click.Path(path_type=Path))
def classify(root: Path, inputs: tuple[str, ...], dims: str, folds: int, repeats: int, epochs: int,
             batch_size: int | None, lr: float, size: int, slices: int, mode: str,
             clip_percentiles: tuple[float, float], fuse_in: str, fuse_opts: tuple[str, ...], seed: int,
             device: str, threads: int,
             cache: Path | None, out: Path) -> None:
    """HGG vs LGG with a small ResNet per input variant; writes the table (CSV + Markdown), out-of-fold
    predictions and ROC curves (PNG) to OUT."""
    import torch

    from neurofuse.brats import PreprocessConfig, discover
    from neurofuse.classify import DataConfig, TrainConfig, cross_validate, parse_input, write_reports

    for v in inputs:
        parse_input(v)
    cases = discover(root, require=("t2", "flair"))
    ungraded = [c.id for c in cases if c.grade is None]
    if ungraded:
        raise InputError(f"{root}: {len(ungraded)} case(s) without a grade, e.g. {ungraded[0]}")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r}: not a torch device") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {device!r}: CUDA is not available in this torch build")
    torch.set_num_threads(threads)
    pre = PreprocessConfig(size=size, mode=mode, clip_percentiles=tuple(clip_percentiles))
    results = []
    start = time.perf_counter()
    for d in ((2, 3) if dims == "both" else (int(dims),)):
        train = TrainConfig(epochs=epochs, batch_size=batch_size or (16 if d == 2 else 4), lr=lr, device=device)
        data = DataConfig(dims=d, slices=slices, pre=pre, fuse_options=method_options(fuse_opts), fuse_in=fuse_in)
        for v in inputs:
            res = cross_validate(cases, v, data, train, folds, repeats, seed, cache or out / "cache")
            s = res.summary()
            click.echo(f"{d}D {v}: AUC {s['auc_mean']:.3f} ± {s['auc_std']:.3f}, F1 {s['f1_mean']:.3f} "
                       f"± {s['f1_std']:.3f}, ACC {s['acc_mean']:.3f} ± {s['acc_std']:.3f}")
            results.append(res)
    md = write_reports(out, results, cases, folds, repeats)
    click.echo(f"classify: {len(cases)} cases, {time.perf_counter() - start:.0f} s -> {md}")
