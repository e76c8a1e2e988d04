"""The options every command spells the same way: `-o/--output`, `--pair`, `--no-progress`, `--precision`,
`--device`, `--clip`, `--num-shards/--shard-index`. Older spellings (`--out`, `--clip-percentiles`) still
parse as hidden aliases, so existing scripts keep working; `--help` shows one name."""

from __future__ import annotations

from pathlib import Path

import click

from neurofuse.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16")
SPLITS = ("train", "val", "test", "all")  # = neurofuse.layouts.SPLITS (tested)


class AliasedOption(click.Option):
    """A click option whose `hidden_aliases` parse as usual but are left out of `--help`."""

    def __init__(self, *args, hidden_aliases: tuple[str, ...] = (), **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_aliases = set(hidden_aliases)

    def get_help_record(self, ctx: click.Context):
        shown, self.opts = self.opts, [o for o in self.opts if o not in self.hidden_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = shown


def output_option(dest: str = "out", help: str = "Output path.", required: bool = True, **kwargs):
    """`-o/--output` (old spelling `--out` kept, hidden)."""
    kwargs.setdefault("type", click.Path(path_type=Path))
    return click.option("-o", "--output", "--out", dest, cls=AliasedOption, hidden_aliases=("--out",),
                        required=required, help=help, **kwargs)


def pair_option(help: str = "Shipped weights of learned methods: ct-mri, spect-mri, pet-mri, brats, ... "
                "(default: named by the inputs' file or folder names)."):
    return click.option("--pair", default=None, metavar="TAG", help=help)


def no_progress_option():
    return click.option("--no-progress", is_flag=True, help="Hide the progress bar.")


def device_option(default: str | None = "cpu"):
    return click.option("--device", default=default, show_default=default is not None,
                        help="Device of learned methods: cpu, cuda, cuda:N.")


def precision_option(default: str | None = "auto"):
    return click.option("--precision", default=default, show_default=default is not None,
                        type=click.Choice(PRECISIONS), help="Learned methods: auto = bf16 where native, else fp32.")


def clip_option(default=None, help: str = "Clip to percentiles LO HI before min-max.", dest: str = "clip"):
    return click.option("--clip", "--clip-percentiles", dest, nargs=2, type=float, default=default,
                        show_default=default is not None, cls=AliasedOption,
                        hidden_aliases=("--clip-percentiles",), metavar="LO HI", help=help)


def shard_options(fn):
    """`--num-shards N --shard-index K` (default: SLURM array or torchrun variables, `neurofuse.shards`)."""
    fn = click.option("--shard-index", type=click.IntRange(min=0), default=None, metavar="K",
                      help="Which shard this process runs, 0..N-1.")(fn)
    return click.option("--num-shards", type=click.IntRange(min=1), default=None, metavar="N",
                        help="Run every N-th item only (with --shard-index; default from SLURM_ARRAY_TASK_ID/"
                             "SLURM_ARRAY_TASK_COUNT or torchrun's RANK/WORLD_SIZE); join with `neurofuse merge`.")(fn)


def learned_method_options(method: str, device: str | None, precision: str | None) -> dict:
    """Method options from --device/--precision (only those given); UsageError for a classical method."""
    given = {k: v for k, v in (("device", device), ("precision", precision)) if v is not None}
    if given:
        from neurofuse.fusion import get_method

        if get_method(method).kind != "learned":
            flags = " and ".join(f"--{k}" for k in given)
            raise UsageError(f"{flags}: for learned methods only; {method!r} is classical (runs on the CPU)")
    return given


def pair_source_options(fn):
    """`--data ROOT` or `--a DIR --b DIR`, `--pattern`, `--split`, `--split-file` (benchmark, evaluate)."""
    opts = [
        click.option("--data", type=click.Path(path_type=Path), default=None,
                     help="Pair folder: MRI/ beside CT|SPECT|PET/ (any case; Harvard, CDDFuse, EMFusion) or "
                          "{id}_1/{id}_2 files (IFCNN)."),
        click.option("--a", "dir_a", type=click.Path(path_type=Path), default=None, help="Folder of source A images."),
        click.option("--b", "dir_b", type=click.Path(path_type=Path), default=None,
                     help="Folder of source B images (paired by name, or by --pattern)."),
        click.option("--pattern", nargs=2, default=None, metavar="A_PATTERN B_PATTERN",
                     help="Pair by file-name patterns, e.g. --pattern '{id}_1.tif' '{id}_2.tif'."),
        click.option("--split", default=None, type=click.Choice(SPLITS),
                     help="Pairs of this split of split.csv (id,case,split); all needs no split file."),
        click.option("--split-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     help="Split file to use instead of split.csv in the pair folder."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def echo_unpaired(ps) -> None:
    if (msg := ps.unpaired_message()) is not None:
        click.echo(f"warning: {msg}", err=True)
