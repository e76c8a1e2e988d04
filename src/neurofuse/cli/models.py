"""`neurofuse models`: registered fusion networks, their exact parameter counts and shipped weights."""

from __future__ import annotations

import click

from neurofuse.cli.app import main


@main.command("models")
@click.option("--format", "fmt", type=click.Choice(["markdown", "csv"]), default="markdown", show_default=True,
              help="Table format on stdout.")
def models_cmd(fmt: str) -> None:
    """List registered models with exact parameter counts and shipped weights."""
    from neurofuse.models import create_model, list_models, list_pretrained

    rows = []
    for name in list_models():
        model = create_model(name)
        params = sum(p.numel() for p in model.parameters())
        dims = getattr(model, "spatial_dims", "")
        tags = " ".join(t.split(".", 1)[1] for t in list_pretrained(name)) or "-"
        rows.append((name, str(dims), f"{params:,}" if fmt == "markdown" else str(params), tags))
    header = ("model", "spatial_dims", "parameters", "shipped weights")
    if fmt == "csv":
        for r in (header, *rows):
            click.echo(",".join(r))
        return
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    click.echo("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    click.echo("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        click.echo("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
