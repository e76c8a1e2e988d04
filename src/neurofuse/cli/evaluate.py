"""`neurofuse evaluate`: fusion quality metrics for one triplet or for folders of fused images."""

from __future__ import annotations

import click

from neurofuse.cli.app import main
from neurofuse.cli.lazy import LazyChoice
from neurofuse.errors import UsageError


def _presets() -> list[str]:
    from neurofuse.metrics import PRESETS

    return sorted(PRESETS)


@main.command("evaluate")
@click.argument("triplet", nargs=-1, type=click.Path(dir_okay=True))
@click.option("--a", "dir_a", type=click.Path(), help="Folder of source A images.")
@click.option("--b", "dir_b", type=click.Path(), help="Folder of source B images (same file names).")
@click.option("--fused", "dir_f", type=click.Path(), help="Folder of fused images (same file names).")
@click.option("--metrics", default=None, help="Comma-separated metric names, or 'all' (default: the preset's list).")
@click.option("--preset", type=LazyChoice(_presets), default="standard", show_default=True)
@click.option("--slicewise", type=click.Choice(["axial", "coronal", "sagittal"]), default=None,
              help="For volumes: compute 2D-only metrics as the mean over these slices.")
@click.option("-o", "--output", type=click.Path(), help="Per-image CSV (folders); summaries are written beside it.")
@click.option("--json", "as_json", is_flag=True, help="One triplet: print the metrics as JSON.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def evaluate_cmd(triplet, dir_a, dir_b, dir_f, metrics, preset, slicewise, output, as_json, no_progress) -> None:
    """Fusion metrics: `evaluate A B F` for one triplet, or `--a DIR --b DIR --fused DIR -o results.csv`."""
    from neurofuse.evaluate import evaluate_dirs, evaluate_triplet, summary_markdown, triplet_report
    from neurofuse.metrics.registry import get_metric

    if metrics:
        names = [m.strip() for m in metrics.split(",") if m.strip()]
        for m in names:
            if m != "all":
                get_metric(m)
    if triplet:
        if len(triplet) != 3 or dir_a or dir_b or dir_f:
            raise UsageError("give either three files A B F, or --a/--b/--fused folders, not both")
        vals = evaluate_triplet(*triplet, metrics=metrics, preset=preset, slicewise=slicewise)
        click.echo(triplet_report(vals, preset, as_json))
        return
    if not (dir_a and dir_b and dir_f):
        raise UsageError("missing input: give A B F files, or all of --a, --b and --fused")
    if not output:
        raise UsageError("folders need an output CSV: -o results.csv")
    res = evaluate_dirs(dir_a, dir_b, dir_f, metrics, preset, output, slicewise, progress=not no_progress)
    click.echo(summary_markdown(res.summary, f"{len(res.rows)} images, preset {preset}", preset=preset))
    click.echo("wrote " + ", ".join(str(p) for p in res.files))
