"""`neurofuse report RESULTS_DIR -o report.html`: a self-contained HTML page of a benchmark/evaluate run."""

from __future__ import annotations

from pathlib import Path

import click

from neurofuse.cli.app import main
from neurofuse.cli.options import output_option
from neurofuse.errors import UsageError


@main.command("report")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False))
@output_option(help="HTML file to write.")
@click.option("--volume", "volumes", multiple=True, metavar="NAME=PATH",
              help="A volume for the slice viewer (repeatable; all on one grid), e.g. --volume fused=f.nii.gz.")
@click.option("--title", default=None, help="Page title.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report.")
def report_cmd(folder: Path, out: Path, volumes: tuple[str, ...], title: str | None, overwrite: bool) -> None:
    """Write one HTML file (no network needed): sortable tables, A | B | fused with a method picker,
    a slice slider for volumes, the bar chart and learning curves found in FOLDER."""
    from neurofuse.io import check_writable
    from neurofuse.report import build_report

    check_writable(out, overwrite)
    vols = {}
    for item in volumes:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise UsageError(f"--volume {item!r}: give NAME=PATH")
        vols[name] = path
    click.echo(str(build_report(folder, out, vols or None, title)))
