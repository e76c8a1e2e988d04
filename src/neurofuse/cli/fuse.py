"""`neurofuse fuse`, `fuse-dir` and `methods`: fusion from the command line."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click
from tqdm import tqdm

from neurofuse.cli.app import main
from neurofuse.cli.options import (
    clip_option,
    device_option,
    learned_method_options,
    no_progress_option,
    output_option,
    pair_option,
    precision_option,
    shard_options,
)
from neurofuse.errors import NeurofuseError, ResultError, UsageError, cli_message
from neurofuse.fusion import get_method, list_methods
from neurofuse.io import (
    IMAGE_2D_EXTS,
    NIFTI_EXTS,
    check_clip,
    check_output_folder,
    claim_output,
    pair_files,
    remove_stale_locks,
    remove_stale_partials,
    suffix_of,
)
from neurofuse.layouts import unpaired_by_name
from neurofuse.pipeline import (
    FuseOptions,
    check_method_options,
    check_not_input,
    fuse_files,
    fuse_files_many,
    spatial_dims_of,
)

_common = [
    click.option(
        "--method", "-m", default="average", show_default=True, help="Fusion method (see `neurofuse methods`)."
    ),
    click.option("--resample", is_flag=True, help="Resample B onto A's grid (linear) if the grids differ."),
    click.option("--overwrite", is_flag=True, help="Replace existing outputs."),
    click.option("--gray", is_flag=True, help="Write gray output even when an input is colour."),
    clip_option(),
    click.option(
        "--bit-depth", type=click.Choice(["8", "16"]), default="8", show_default=True, help="2D output depth."
    ),
    click.option(
        "--dtype",
        type=click.Choice(["float32", "uint8", "int16", "uint16"]),
        default="float32",
        show_default=True,
        help="NIfTI output data type.",
    ),
    pair_option(),
    device_option(default=None),
    precision_option(default=None),
    click.option(
        "--option",
        "-O",
        "options",
        multiple=True,
        metavar="KEY=VALUE",
        help="Method option, e.g. -O wavelet=db4 -O levels=3 -O weights=model.safetensors.",
    ),
]


def _with_common(fn):
    for opt in reversed(_common):
        fn = opt(fn)
    return fn


def _parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(v.lower(), v)


def method_options(options: tuple[str, ...]) -> dict:
    out = {}
    for item in options:
        if "=" not in item:
            raise UsageError(f"method option {item!r} must be KEY=VALUE")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = _parse_value(v.strip())
    return out


def _opts(method, resample, overwrite, gray, clip, bit_depth, dtype, pair, register=None) -> FuseOptions:
    clip = tuple(clip) if clip else None
    return FuseOptions(method, resample, overwrite, gray, clip, int(bit_depth), dtype, pair, register)


def _method_opts(method: str, options: tuple[str, ...], device: str | None, precision: str | None) -> dict:
    """-O KEY=VALUE options plus --device/--precision (learned methods only)."""
    return {**method_options(options), **learned_method_options(method, device, precision)}


@main.command("fuse")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@output_option(help="Output file (.png/.tif or .nii.gz).")
@click.option("--register", type=click.Choice(["rigid", "affine"]), default=None,
              help="Register B onto A first (Mattes MI, SimpleITK); the transform is saved beside OUT as "
                   "<name>.transform.tfm.")
@_with_common
def fuse_cmd(a, b, out, register, method, resample, overwrite, gray, clip, bit_depth, dtype, pair, device, precision,
             options):
    """Fuse two images A (anatomical, reference grid) and B into OUT (2D or 3D); co-registered, or
    aligned first with --register."""
    path = fuse_files(
        a, b, out, _opts(method, resample, overwrite, gray, clip, bit_depth, dtype, pair, register),
        **_method_opts(method, options, device, precision),
    )
    click.echo(str(path))


def _about_pair(exc: NeurofuseError, *paths: Path) -> bool:
    """True for an error of one pair's files (fuse-dir goes on), False for one every pair would hit."""
    return not isinstance(exc, ResultError) and any(str(exc).startswith((f"{p}:", f"{p} and ")) for p in paths)


def _targets(pairs, out_dir: Path, ext: str | None) -> list[Path]:
    """Output path of every pair; UsageError if two pairs would write one file or one is an input."""
    targets, seen = [], {}
    for name, pa, pb in pairs:
        stem = name[: len(name) - len(suffix_of(name))]
        target = out_dir / f"{stem}{ext or suffix_of(name)}"
        if target in seen:
            raise UsageError(f"{target}: both {seen[target]} and {name} would be written here; drop --ext or "
                             "rename one")
        seen[target] = name
        check_not_input(target, (pa, pb))
        targets.append(target)
    return targets


def _fuse_jobs(jobs: list, opts: FuseOptions, mopts: dict) -> list:
    """Path or NeurofuseError of each (name, A, B, OUT) job: one job by `fuse_files`, several as a batch."""
    if len(jobs) != 1:
        return fuse_files_many([(pa, pb, target) for _, pa, pb, target in jobs], opts, **mopts) if jobs else []
    _, pa, pb, target = jobs[0]
    try:
        return [fuse_files(pa, pb, target, opts, **mopts)]
    except NeurofuseError as exc:
        return [exc]


@main.command("fuse-dir")
@click.argument("dir_a", type=click.Path(path_type=Path))
@click.argument("dir_b", type=click.Path(path_type=Path))
@output_option("out_dir", help="Output folder (created).")
@click.option("--ext", default=None, help="Output extension (default: that of the A file).")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(min=1),
              help="Learned methods on 2D pairs: pairs per forward pass (the model is loaded once either way).")
@_with_common
@shard_options
@no_progress_option()
def fuse_dir_cmd(dir_a, dir_b, out_dir, ext, batch_size, method, resample, overwrite, gray, clip, bit_depth, dtype,
                 pair, device, precision, options, num_shards, shard_index, no_progress):
    """Fuse every pair of files with the same name in DIR_A and DIR_B (resumable).

    Existing outputs are skipped (unless --overwrite); several runs may share one output folder (each
    output is claimed by one of them). A problem of one pair is reported and the run goes on; one that
    every pair would hit (bad weights or options, a method returning NaN) stops it at once. Files of
    one folder without a partner in the other are named. With shards (--num-shards/--shard-index, a
    SLURM array or torchrun) each process fuses every N-th pair into the same OUT.
    """
    from neurofuse.shards import resolve_shard

    shard = resolve_shard(num_shards, shard_index)
    get_method(method)
    opts = _opts(method, resample, overwrite, gray, clip, bit_depth, dtype, pair)
    mopts = _method_opts(method, options, device, precision)
    check_method_options(method, mopts)
    check_clip(opts.clip_percentiles)
    if ext is not None:
        ext = ext if ext.startswith(".") else f".{ext}"
        if ext.lower() not in IMAGE_2D_EXTS + NIFTI_EXTS:
            raise UsageError(f"--ext {ext}: use one of {', '.join(IMAGE_2D_EXTS + NIFTI_EXTS)}")
    pairs = pair_files(dir_a, dir_b)
    if not pairs:
        raise UsageError(f"{dir_a} and {dir_b}: no file names in common")
    if (msg := unpaired_by_name(dir_a, dir_b, pairs)) is not None:
        click.echo(f"warning: {msg}", err=True)
    targets = _targets(pairs, out_dir, ext)
    pairs, targets = shard.take(pairs), shard.take(targets)
    if not pairs:
        click.echo(f"0 fused: {shard.label} of {len(targets)} pairs holds none -> {out_dir}")
        return
    check_output_folder(out_dir)
    remove_stale_partials(out_dir)
    remove_stale_locks(out_dir)
    done = skipped = busy = 0
    failed: list[str] = []
    batched = get_method(method).kind == "learned" and spatial_dims_of(pairs[0][1]) == 2
    step = batch_size if batched else 1
    desc = f"fuse-dir {method}" + (f" {shard.label}" if shard.count > 1 else "")
    bar = tqdm(total=len(pairs), desc=desc, unit="pair", disable=no_progress)
    for start in range(0, len(pairs), step):
        with contextlib.ExitStack() as claims:
            jobs = []
            for (name, pa, pb), target in zip(pairs[start : start + step], targets[start : start + step], strict=True):
                if target.exists() and not overwrite:
                    skipped += 1
                elif not claims.enter_context(claim_output(target)):
                    busy += 1
                elif target.exists() and not overwrite:  # written by another run since we looked
                    skipped += 1
                else:
                    jobs.append((name, pa, pb, target))
            for (name, pa, pb, target), result in zip(jobs, _fuse_jobs(jobs, opts, mopts), strict=True):
                if not isinstance(result, NeurofuseError):
                    done += 1
                    continue
                if not _about_pair(result, pa, pb, target):
                    bar.close()
                    click.echo(f"stopped at {name}: {done} fused, {skipped} skipped (exist) -> {out_dir}")
                    raise result
                failed.append(name)
                tqdm.write(f"error: {cli_message(str(result))}", file=sys.stderr)
        bar.update(min(step, len(pairs) - start))
    bar.close()
    others = f", {busy} left to another run writing {out_dir}" if busy else ""
    click.echo(f"{done} fused, {skipped} skipped (exist), {len(failed)} failed{others} -> {out_dir}")
    if failed:
        sys.exit(1)


@main.command("methods")
def methods_cmd():
    """List every registered fusion method."""
    for m in list_methods():
        dims = "/".join(f"{d}D" for d in m.spatial_dims)
        click.echo(f"{m.name:<16} {m.kind:<10} {dims:<6} {m.description}")
