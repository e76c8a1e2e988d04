"""`neurofuse split`: a patient-level split.csv for a pair folder; `neurofuse merge`: join sharded runs."""

from __future__ import annotations

from pathlib import Path

import click

from neurofuse.cli.app import main
from neurofuse.cli.options import echo_unpaired, output_option


@main.command("split")
@click.argument("root", type=click.Path(path_type=Path, file_okay=False))
@output_option(required=False, help="Split file to write (default: ROOT/split.csv).")
@click.option("--pattern", nargs=2, default=None, metavar="A_PATTERN B_PATTERN",
              help="Pair by file-name patterns, e.g. '{id}_1.tif' '{id}_2.tif'.")
@click.option("--val", default=0.2, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of patients in val.")
@click.option("--test", default=0.0, show_default=True, type=click.FloatRange(0, 1, max_open=True),
              help="Share of patients in test.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the patient shuffle.")
@click.option("--case-regex", default=None, metavar="REGEX",
              help="Patient id from a pair id: group 1 of REGEX (default: Harvard <patient><3-digit slice>, "
                   "else one patient per pair).")
@click.option("--overwrite", is_flag=True, help="Replace an existing split file.")
def split_cmd(root, out, pattern, val, test, seed, case_regex, overwrite):
    """Write a patient-level split of ROOT's pairs: split.csv with columns id,case,split (train|val|test)."""
    from neurofuse.io import check_writable, write_csv
    from neurofuse.layouts import SPLIT_FILE, find_pairs, make_split, split_summary

    out = out or root / SPLIT_FILE
    check_writable(out, overwrite)
    ps = find_pairs(data=root, pattern=tuple(pattern) if pattern else None)
    echo_unpaired(ps)
    rows = make_split([i for i, _, _ in ps.pairs], val=val, test=test, seed=seed, case_regex=case_regex)
    write_csv(out, rows, ["id", "case", "split"])
    click.echo(f"{out}: {split_summary(rows)}")


@main.command("merge")
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@output_option(required=False, help="Where the joined tables go (default: FOLDER itself).")
def merge_cmd(folder, out):
    """Join the shards of a sharded `benchmark` (FOLDER/shard-K-of-N/) into one set of tables and figures.

    `fuse-dir` and `fuse-brats` shards write their outputs into one folder already: nothing to merge."""
    from neurofuse.benchmark import merge_benchmarks
    from neurofuse.errors import InputError

    shards = sorted(p for p in folder.glob("shard-*-of-*") if (p / "run.json").is_file())
    if not shards:
        raise InputError(f"{folder}: no benchmark shards (shard-K-of-N/ folders with run.json) to merge")
    results = merge_benchmarks(shards, out or folder)
    ran = sum(1 for r in results if not r.skipped)
    click.echo(f"merged {len(shards)} shards: {ran} methods -> {out or folder}/summary.md")
