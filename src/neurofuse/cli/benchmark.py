"""`neurofuse benchmark`: every method on one split, timed, measured in both metric presets."""

from __future__ import annotations

from pathlib import Path

import click

from neurofuse.cli.app import main
from neurofuse.cli.fuse import method_options
from neurofuse.io import check_output_folder

PRESETS = ("clinicalfmamba", "standard")  # = neurofuse.benchmark.PRESETS (tested); that module loads torch


@main.command("benchmark")
@click.option("--data", required=True, type=click.Path(path_type=Path), help="Pair folder (MRI/, other/, split.csv).")
@click.option("--split", default="val", show_default=True, type=click.Choice(["train", "val", "all"]))
@click.option("--methods", default="all", show_default=True, help="all | classical | learned | comma list.")
@click.option("--out", "-o", required=True, type=click.Path(path_type=Path), help="Output folder (created).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N pairs of the split.")
@click.option("--grid-rows", type=click.IntRange(min=1), default=4, show_default=True, help="Pairs shown in grid.png.")
@click.option("--preset", "presets", multiple=True, default=PRESETS, show_default=True, help="Metric presets.")
@click.option("--device", default="cpu", show_default=True, help="Device for learned methods.")
@click.option("--precision", default="auto", show_default=True, type=click.Choice(["auto", "fp32", "bf16"]),
              help="Learned methods: auto = bf16 where native, else fp32.")
@click.option(
    "--option",
    "-O",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option for the learned methods, e.g. -O weights=runs/x/best.safetensors.",
)
def benchmark_cmd(data, split, methods, out, limit, grid_rows, presets, device, precision, options):
    """Run METHODS on a split of a Harvard-layout pair folder; write CSV/Markdown tables and PNG figures."""
    check_output_folder(out, create=False)
    from neurofuse.benchmark import run_benchmark

    results = run_benchmark(
        data,
        out,
        split=split,
        methods=methods,
        limit=limit,
        grid_rows=grid_rows,
        presets=tuple(presets),
        method_options={"device": device, "precision": precision, **method_options(options)},
    )
    ran = [r.name for r in results if not r.skipped]
    click.echo(f"{len(ran)} methods measured, {len(results) - len(ran)} skipped -> {out}/summary.md")
