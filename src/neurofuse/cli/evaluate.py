"""`neurofuse evaluate`: fusion quality metrics for one triplet or for folders of fused images."""

from __future__ import annotations

from pathlib import Path

import click

from neurofuse.cli.app import main
from neurofuse.cli.lazy import LazyChoice
from neurofuse.cli.options import echo_unpaired, no_progress_option, pair_source_options
from neurofuse.errors import UsageError
from neurofuse.io import check_writable


def _presets() -> list[str]:
    from neurofuse.metrics import PRESETS

    return sorted(PRESETS)


@main.command("evaluate")
@click.argument("triplet", nargs=-1, type=click.Path(dir_okay=True))
@pair_source_options
@click.option("--fused", "dir_f", type=click.Path(), help="Folder of fused images (named as the A files or the ids).")
@click.option("--metrics", default=None, help="Comma-separated metric names, or 'all' (default: the preset's list).")
@click.option("--preset", type=LazyChoice(_presets), default="standard", show_default=True)
@click.option("--slicewise", type=click.Choice(["axial", "coronal", "sagittal"]), default=None,
              help="For volumes: compute 2D-only metrics as the mean over these slices.")
@click.option("-o", "--output", type=click.Path(), help="Per-image CSV (folders); summaries are written beside it.")
@click.option("--json", "as_json", is_flag=True, help="One triplet: print the metrics as JSON.")
@no_progress_option()
def evaluate_cmd(triplet, data, dir_a, dir_b, pattern, split, split_file, dir_f, metrics, preset, slicewise, output,
                 as_json, no_progress) -> None:
    """Fusion metrics: `evaluate A B F` for one triplet, or `--a DIR --b DIR --fused DIR -o results.csv`.

    Folders: `--data ROOT` (any layout `benchmark` takes) or `--a/--b`, optionally `--pattern` and a
    `--split` of split.csv (default all); source pairs without a fused file are reported."""
    from neurofuse.evaluate import evaluate_dirs, evaluate_triplet, summary_markdown, triplet_report
    from neurofuse.metrics.registry import get_metric

    if metrics:
        names = [m.strip() for m in metrics.split(",") if m.strip()]
        for m in names:
            if m != "all":
                get_metric(m)
    if triplet:
        if len(triplet) != 3 or dir_a or dir_b or dir_f or data:
            raise UsageError("give either three files A B F, or --a/--b (or --data) and --fused folders, not both")
        vals = evaluate_triplet(*triplet, metrics=metrics, preset=preset, slicewise=slicewise)
        click.echo(triplet_report(vals, preset, as_json))
        return
    if not ((data or (dir_a and dir_b)) and dir_f):
        raise UsageError("missing input: give A B F files, or --fused with --a and --b (or --data)")
    if not output:
        raise UsageError("folders need an output CSV: -o results.csv")
    stem = Path(output).with_suffix("")
    for target in (Path(output), Path(f"{stem}_summary.csv"), Path(f"{stem}_summary.md")):
        check_writable(target)  # before the metrics are computed, not after
    from neurofuse.layouts import find_pairs, select_split

    ps = find_pairs(data, dir_a, dir_b, tuple(pattern) if pattern else None)
    echo_unpaired(ps)
    pairs = select_split(ps, split or "all", split_file)
    if ps.pattern is None:  # paired by name: rows are named by the A file, as before
        pairs = [(pa.name, pa, pb) for _, pa, pb in pairs]
    res = evaluate_dirs(dir_a, dir_b, dir_f, metrics, preset, output, slicewise, progress=not no_progress,
                        pairs=pairs)
    if res.missing:
        shown = ", ".join(res.missing[:5]) + (", ..." if len(res.missing) > 5 else "")
        click.echo(f"warning: {len(res.missing)} source pair(s) have no fused file in {dir_f} ({shown}) -- left out",
                   err=True)
    click.echo(summary_markdown(res.summary, f"{len(res.rows)} images, preset {preset}", preset=preset))
    click.echo("wrote " + ", ".join(str(p) for p in res.files))
