"""`neurofuse register A B -o B_on_A`: bring B onto A's grid (SimpleITK, Mattes MI, rigid or affine)."""

from __future__ import annotations

from pathlib import Path

import click

from neurofuse.cli.app import main
from neurofuse.cli.options import output_option

KINDS = ("rigid", "affine")  # = neurofuse.registration.KINDS (tested)


@main.command("register")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@output_option(help="B resampled onto A's grid (.png/.tif for 2D, .nii.gz for 3D); the transform is saved "
                    "beside it as <name>.transform.tfm.")
@click.option("--transform", "kind", type=click.Choice(KINDS), default="rigid", show_default=True,
              help="rigid: rotation + shift; affine: also scale and shear.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
def register_cmd(a: Path, b: Path, out: Path, kind: str, overwrite: bool) -> None:
    """Register B (moving: CT, SPECT, PET, FLAIR, ...) to A (fixed: MRI, T2) by mutual information.

    Writes B on A's grid (B's own values and colour, A's geometry) and the ITK transform (a point of A
    -> the matching point of B) beside it. 2D images are aligned in pixel units, volumes in millimetres.
    """
    from neurofuse.io import read_image
    from neurofuse.pipeline import check_output
    from neurofuse.registration import register, transform_path, write_registered, write_transform

    fixed, moving = read_image(a), read_image(b)
    check_output(out, fixed.spatial_dims, overwrite, (a, b))
    tfm = transform_path(out)
    check_output(tfm, None, overwrite, (a, b))
    res = register(fixed, moving, kind)
    written = write_registered(out, res.image, overwrite)
    write_transform(res.transform, tfm, overwrite)
    click.echo(f"{written} (Mattes MI {res.metric:.4f}); transform -> {tfm}")
