"""`neurofuse fuse-brats` (fuse T2 and FLAIR of every BraTS case) and `neurofuse synth-brats` (synthetic
graded cohort in the BraTS 2019 layout)."""

from __future__ import annotations

from pathlib import Path

import click

from neurofuse.cli import options as opt
from neurofuse.cli.app import main
from neurofuse.errors import NeurofuseError, UsageError


@main.command("fuse-brats")
@click.argument("root", type=click.Path(path_type=Path))
@opt.output_option(help="Output folder (one sub-folder per case).")
@click.option("--method", "-m", required=True, help="Fusion method (see `neurofuse methods`).")
@click.option("--dims", type=click.Choice(["2", "3", "both"]), default="3", show_default=True,
              help="2: fuse axial slices with a 2D method; 3: fuse the volume; both.")
@opt.clip_option(default=(0.5, 99.5), help="Brain intensity percentiles mapped to 0 and 1 before fusion.")
@click.option("--overwrite", is_flag=True, help="Recompute outputs that already exist (default: skip them).")
@opt.pair_option(help="Shipped 2D weights of a learned method for --dims 2 (ct-mri, spect-mri, pet-mri; default: "
            "the model's first tag).")
@opt.device_option(default=None)
@opt.precision_option(default=None)
@click.option("--option", "-O", "options", multiple=True, metavar="KEY=VALUE",
              help="Method option, e.g. -O weights=model.safetensors -O levels=3.")
@opt.shard_options
@opt.no_progress_option()
def fuse_brats(root: Path, out: Path, method: str, dims: str, clip: tuple[float, float],
               overwrite: bool, pair: str | None, device: str | None, precision: str | None, options: tuple[str, ...],
               num_shards: int | None, shard_index: int | None, no_progress: bool) -> None:
    """Fuse T2 and FLAIR of every BraTS case under ROOT (any layout level); resumable.

    Writes OUT/<ID>/<ID>_fused-<METHOD>-<2|3>d.nii.gz with the T2 volume's affine and header; cases whose
    outputs exist are skipped unless --overwrite. A failing case is reported and the rest go on. With
    shards (--num-shards/--shard-index, a SLURM array or torchrun) each process takes every N-th case.
    """
    from tqdm import tqdm

    from neurofuse.brats import discover
    from neurofuse.cli.fuse import method_options
    from neurofuse.fusion import get_method
    from neurofuse.pipeline import brats_outputs, fuse_brats_case
    from neurofuse.shards import resolve_shard

    shard = resolve_shard(num_shards, shard_index)
    mopts = {**method_options(options), **opt.learned_method_options(method, device, precision)}
    dim_list = (2, 3) if dims == "both" else (int(dims),)
    m = get_method(method)
    for d in dim_list:
        if d not in m.spatial_dims:
            raise UsageError(f"method {method!r} supports {m.spatial_dims}D input, not --dims {d}")
    cases = shard.take(discover(root, require=("t2", "flair")))
    out.mkdir(parents=True, exist_ok=True)
    done, skipped, failed = 0, 0, []
    desc = f"fuse-brats {method}" + (f" {shard.label}" if shard.count > 1 else "")
    for case in tqdm(cases, desc=desc, unit="case", disable=no_progress):
        targets = brats_outputs(out, case.id, method, dim_list)
        todo = targets if overwrite else {d: p for d, p in targets.items() if not p.exists()}
        if not todo:
            skipped += 1
            continue
        try:
            fuse_brats_case(case, todo, method, clip, overwrite, pair, **mopts)
            done += 1
        except NeurofuseError as exc:
            failed.append(f"{case.id}: {exc}")
    for line in failed:
        click.echo(f"failed {line}", err=True)
    where = f"{out} ({shard.label}: {len(cases)} cases)" if shard.count > 1 else str(out)
    click.echo(f"fuse-brats: {done} done, {skipped} skipped, {len(failed)} failed -> {where}")
    if failed:
        raise SystemExit(1)


@main.command("synth-brats")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--cases", default=60, show_default=True, help="Number of cases.")
@click.option("--size", default=64, show_default=True, help="Volume edge in voxels.")
@click.option("--effect", default=1.0, show_default=True, help="Cohen's d of each grade attribute.")
@click.option("--seed", default=0, show_default=True, help="Random seed.")
@click.option("--hgg-fraction", default=0.5, show_default=True, help="Share of HGG cases.")
@click.option("--shuffle-labels", is_flag=True, help="Write permuted grades (a null cohort).")
@click.option("--overwrite", is_flag=True, help="Replace an existing synthetic cohort in OUT.")
def synth_brats(out: Path, cases: int, size: int, effect: float, seed: int, hgg_fraction: float,
                shuffle_labels: bool, overwrite: bool) -> None:
    """Write a synthetic graded glioma cohort to OUT/MICCAI_BraTS_2019_Data_Training (BraTS 2019 layout)."""
    from neurofuse.synthetic import SynthConfig, write_cohort

    cfg = SynthConfig(cases, size, effect, seed, hgg_fraction, shuffle_labels)
    root = write_cohort(out, cfg, overwrite=overwrite)
    click.echo(f"synth-brats: {cases} cases ({size}^3, effect {effect}) -> {root}")
