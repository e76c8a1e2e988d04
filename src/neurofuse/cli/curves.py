"""`neurofuse curves`: learning curves (validation metrics against training pixels) of runs or snapshots."""

from __future__ import annotations

from pathlib import Path

import click

from neurofuse.cli.app import main
from neurofuse.cli.options import output_option
from neurofuse.errors import UsageError


@main.command("curves")
@click.argument("runs", nargs=-1, required=True)
@output_option(type=click.Path(dir_okay=False), help="PNG to write.")
@click.option("--metric", "metrics", multiple=True,
              help="Log column to draw (repeatable); default val_SSIM, val_PSNR, val_FMI, val_Qabf "
                   "(3D runs: val_MS_SSIM, val_PSNR, val_EN).")
@click.option("--table", type=click.Path(dir_okay=False), help="Also write each run's last row as CSV (+ .md).")
@click.option("--title", help="Figure title.")
def curves_cmd(runs: tuple[str, ...], out: str, metrics: tuple[str, ...], table: str | None, title: str | None) -> None:
    """Plot RUN folders or snapshots (each `PATH` or `LABEL=PATH`, holding a log.csv) against pixels seen.

    `LABEL=STAGE1+STAGE2`: a run in stages (the second started from the first's weights) is one curve, the
    later stage's pixels and steps counted on from the end of the earlier one."""
    from neurofuse.curves import last_rows_table, plot_learning_curves

    labelled: dict[str, list[str]] = {}
    for item in runs:
        label, _, path = item.rpartition("=") if "=" in item else (Path(item).name, "", item)
        if label in labelled:
            raise UsageError(f"{item}: label {label!r} given twice")
        labelled[label] = path.split("+")
    chosen = tuple(metrics) or None
    click.echo(f"wrote {plot_learning_curves(labelled, out, chosen, title=title)}")
    if table:
        click.echo(f"wrote {last_rows_table(labelled, table, chosen)}")
