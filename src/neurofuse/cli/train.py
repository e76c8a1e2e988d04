"""`neurofuse train`: train a fusion model from a YAML config and/or flags (flags win)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from neurofuse.cli.app import main
from neurofuse.cli.options import output_option

if TYPE_CHECKING:
    from neurofuse.train import TrainConfig
from neurofuse.errors import InputError
from neurofuse.io import check_output_folder


def resolve_config(config: str | None, resume: bool, overrides: dict[str, Any]) -> TrainConfig:
    """Defaults < YAML (`--config`, or `<out>/config.yaml` when resuming without one) < flags that were given."""
    from neurofuse.train import TrainConfig

    given = {k: v for k, v in overrides.items() if v is not None}
    if resume:
        given["resume"] = True
    if config is None and resume and "out" in given and (Path(given["out"]) / "config.yaml").is_file():
        config = str(Path(given["out"]) / "config.yaml")
    if config is not None:
        return TrainConfig.from_yaml(config, **given)
    return TrainConfig.from_dict(given, "command line")


_POS_INT = click.IntRange(min=1)
_POS_FLOAT = click.FloatRange(min=0, min_open=True)


def check_state_readable(state: Path) -> None:
    """InputError naming the file if a training state to resume from cannot be loaded (cut short, foreign)."""
    if not state.is_file():
        return  # train() says there is nothing to resume
    import torch

    try:
        torch.load(state, map_location="cpu", weights_only=True)
    except Exception as exc:  # zip/pickle/OS errors of many types for a damaged file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{state}: unreadable training state ({reason}); restore it, or delete it and train "
                         "without --resume") from None


@main.command("train")
@click.option("--config", "config", type=click.Path(dir_okay=False), help="YAML file of training options.")
@click.option("--model", help="Registered model name, e.g. clinicalfmamba_2d (see `neurofuse models`).")
@click.option("--data", type=click.Path(), help="Harvard pair folder (with split.csv) or BraTS-layout folder.")
@output_option(required=False, type=click.Path(), help="Run folder for checkpoints, log.csv and config.yaml.")
@click.option("--epochs", type=_POS_INT)
@click.option("--batch-size", "batch_size", type=_POS_INT, help="Per-process batch size.")
@click.option("--lr", type=_POS_FLOAT, help="Peak learning rate (Adam, betas 0.9/0.999).")
@click.option("--schedule", type=click.Choice(["constant", "cosine"]), help="Cosine decays to min_lr (1e-6).")
@click.option("--crop", type=_POS_INT, help="Training crop (2D) / patch (3D) side.")
@click.option("--seed", type=int)
@click.option("--resume", is_flag=True, help="Continue the run in -o/--output exactly where it stopped.")
@click.option("--max-steps", "max_steps", type=_POS_INT, help="Stop (resumably) after this many optimiser steps.")
@click.option("--max-minutes", "max_minutes", type=_POS_FLOAT, help="Stop (resumably) after this much wall time.")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp32"]),
              help="auto (default): bf16 where the hardware computes it natively, else fp32.")
@click.option("--device", help="auto, cpu, cuda or cuda:N.")
@click.option("--threads", type=_POS_INT, help="torch.set_num_threads for this process.")
@click.option("--workers", "num_workers", type=click.IntRange(min=0), help="DataLoader worker processes.")
@click.option("--val-limit", "val_limit", type=_POS_INT, help="Validate on the first N val items only (budget).")
@click.option("--stage", help="Training stage of a multi-stage model (see its training_stages).")
@click.option("--init", type=click.Path(dir_okay=False), help="Initial weights (safetensors), e.g. stage 1's best.")
@click.option("--continue-from", "continue_from", type=click.Path(),
              help="A committed snapshot (folder or progress.json): its weights and schedule position.")
@click.option("--snapshot-to", "snapshot_to", type=click.Path(file_okay=False),
              help="When training stops, write a committable snapshot here (float16 weights, progress.json, log).")
@click.option("--export-fp16", "export_path", type=click.Path(dir_okay=False),
              help="After training, write the best weights as float16 safetensors here.")
def train_cmd(config: str | None, resume: bool, export_path: str | None, snapshot_to: str | None,
              **overrides: Any) -> None:
    """Train a fusion model; checkpoints, log.csv and config.yaml go to -o/--output.

    Multi-process: `torchrun --nproc_per_node N -m neurofuse train ...` (gloo on CPU, nccl on CUDA).
    """
    from neurofuse.train import export_fp16, train, write_snapshot

    cfg = resolve_config(config, resume, overrides)
    check_output_folder(cfg.out, create=False)
    if cfg.resume:
        check_state_readable(Path(cfg.out) / "last_state.pt")
    result = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    best = "none" if result.best_val_loss is None else f"{result.best_val_loss:.5f}"
    click.echo(f"{result.stopped}: step {result.step}/{result.total_steps}, best val loss {best}, run in {result.out}")
    if export_path is not None:
        src = result.out / "best.safetensors"
        click.echo(f"exported {export_fp16(src if src.is_file() else result.out / 'last.safetensors', export_path)}")
    if snapshot_to is not None:
        click.echo(f"snapshot in {write_snapshot(result.out, snapshot_to)}")
