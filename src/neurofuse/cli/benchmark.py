"""`neurofuse benchmark`: every method on one split, timed, measured in both metric presets."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from neurofuse.cli.app import main
from neurofuse.cli.fuse import method_options
from neurofuse.cli.options import (
    device_option,
    no_progress_option,
    output_option,
    pair_option,
    pair_source_options,
    precision_option,
    shard_options,
)
from neurofuse.errors import cli_message
from neurofuse.io import check_output_folder

PRESETS = ("clinicalfmamba", "standard")  # = neurofuse.benchmark.PRESETS (tested); that module loads torch


@main.command("benchmark")
@pair_source_options
@click.option("--methods", default="all", show_default=True, help="all | classical | learned | comma list.")
@output_option(help="Output folder (created).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N pairs of the split.")
@click.option("--grid-rows", type=click.IntRange(min=1), default=4, show_default=True, help="Pairs shown in grid.png.")
@click.option("--preset", "presets", multiple=True, default=PRESETS, show_default=True, help="Metric presets.")
@pair_option()
@device_option()
@precision_option()
@click.option(
    "--option",
    "-O",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Option for the learned methods, e.g. -O weights=runs/x/best.safetensors.",
)
@shard_options
@no_progress_option()
def benchmark_cmd(data, dir_a, dir_b, pattern, split, split_file, methods, out, limit, grid_rows, presets, pair,
                  device, precision, options, num_shards, shard_index, no_progress):
    """Run METHODS on the pairs of a folder (any layout; a split of split.csv): CSV/Markdown tables, PNG figures.

    Without --split: val when the folder has a split.csv, else all. Every skipped method is printed
    with its reason; the exit code is 1 when every requested learned method was skipped.
    """
    check_output_folder(out, create=False)
    from neurofuse.benchmark import run_benchmark
    from neurofuse.layouts import SPLIT_FILE, find_pairs
    from neurofuse.shards import resolve_shard

    shard = resolve_shard(num_shards, shard_index)
    if split is None:
        ps = find_pairs(data, dir_a, dir_b, pattern)
        has_file = split_file is not None or (ps.root is not None and (ps.root / SPLIT_FILE).is_file())
        split = "val" if has_file else "all"
        click.echo(f"split: {split} ({'from the split file' if has_file else 'no split.csv: every pair'})", err=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = run_benchmark(
            data,
            out / shard_folder(shard) if shard.count > 1 else out,
            split=split,
            methods=methods,
            limit=limit,
            grid_rows=grid_rows,
            presets=tuple(presets),
            method_options={"device": device, "precision": precision, **method_options(options)},
            a=dir_a, b=dir_b, pattern=tuple(pattern) if pattern else None, pair=pair, split_file=split_file,
            shard=shard if shard.count > 1 else None, progress=not no_progress,
        )
    for w in caught:
        click.echo(f"warning: {cli_message(str(w.message))}", err=True)
    report_results(results, out, shard)


def shard_folder(shard) -> str:
    return f"shard-{shard.index:03d}-of-{shard.count:03d}"


def report_results(results, out: Path, shard) -> None:
    """Print what ran and every skip with its reason; exit 1 when every requested learned method was skipped."""
    ran = [r.name for r in results if not r.skipped]
    for r in results:
        if r.skipped:
            click.echo(f"skipped {r.name}: {cli_message(r.skipped)}", err=True)
    where = out / shard_folder(shard) if shard.count > 1 else out
    click.echo(f"{len(ran)} methods measured, {len(results) - len(ran)} skipped -> {where}/summary.md")
    learned = [r for r in results if r.kind == "learned"]
    if learned and all(r.skipped for r in learned):
        click.echo("error: every requested learned method was skipped (pass --pair TAG or -O weights=FILE)", err=True)
        sys.exit(1)
