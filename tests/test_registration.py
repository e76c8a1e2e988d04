"""Registration recovers known misalignments of real pairs (the bundled examples: a Harvard CT-MRI
slice pair, a BraTS T2/FLAIR volume at 2 mm).

B is warped by a known transform K (rotation, shift, scale); registration returns R (fixed -> moving
point). R is right when K(R(x)) = x: the test measures |K(R(x)) - x| over the fixed image's foreground.

3D (T2/FLAIR, 2 mm voxels): mean < 1 mm, max < 2 mm against the truth.
2D: the Harvard pairs are aligned only to within the method's own answer on them: registering the
*unwarped* CT-MRI pair moves it by about 1 px (rigid) and 3 px mean, 6.6 px at the edge (affine: Mattes
MI prefers a slightly scaled CT, whose skull the MRI shows as dark bone between bright scalp and brain).
So the recovery of K is measured against that answer R0, |K(R(x)) - R0(x)|: mean < 1 px, max < 3 px
(one thread, so the same every run: rigid 0.41 / 0.73 px, affine 0.53 / 1.36 px; with ITK's threads the
sums' order varied and so did the answers, 0.36-1.06 px mean seen for the rigid case); and against the
truth, |K(R(x)) - x|: mean < 3.5 px, max < 7 px.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import neurofuse
from neurofuse.cli import main
from neurofuse.io import luma, read_image
from neurofuse.registration import _sitk_image, apply_transform, read_transform, register, transform_path

sitk = pytest.importorskip("SimpleITK")
EX = Path(neurofuse.__file__).parent / "examples"


def _error(known, recovered, fixed, baseline=None) -> tuple[float, float]:
    """Mean and max |K(R(x)) - B(x)| (B: `baseline` or the identity; pixels in 2D, mm in 3D) over the
    fixed image's foreground."""
    arr = luma(fixed).astype(np.float32)
    ref = _sitk_image(arr, fixed)
    idx = np.argwhere(arr > 0.1 * arr.max())[::17]
    pts = [ref.TransformIndexToPhysicalPoint([int(v) for v in (i[::-1] if arr.ndim == 2 else i)]) for i in idx]
    goal = [p if baseline is None else baseline.TransformPoint(p) for p in pts]
    err = [np.linalg.norm(np.subtract(known.TransformPoint(recovered.TransformPoint(p)), g))
           for p, g in zip(pts, goal, strict=True)]
    return float(np.mean(err)), float(np.max(err))


def _affine(dim: int, center, angles, scales, shift):
    rot = sitk.Euler2DTransform(center, angles[0]) if dim == 2 else sitk.Euler3DTransform(center, *angles)
    t = sitk.AffineTransform(dim)
    t.SetCenter(center)
    t.SetMatrix((np.asarray(rot.GetMatrix()).reshape(dim, dim) @ np.diag(scales)).ravel().tolist())
    t.SetTranslation(shift)
    return t


CASES_2D = [  # (pair, kind, known transform)
    ("ct-mri/ct.png", "rigid", sitk.Euler2DTransform([128, 128], np.deg2rad(20), [8, -6])),
    ("ct-mri/ct.png", "affine", _affine(2, [128, 128], [np.deg2rad(-6)], [1.06, 0.95], [5, 7])),
]
# Not tested, because it does not work: the bundled SPECT-MRI slice. Its SPECT is a smooth blob, and
# Mattes MI scores a wrong pose about as high as the right one (8 and 25 degree misalignments ended 11 px
# mean off; a -15 degree one was recovered); the README says so.


@pytest.mark.parametrize(("moving", "kind", "known"), CASES_2D, ids=["ct-rigid", "ct-affine"])
def test_2d_registration_recovers_known_transform(moving, kind, known):
    fixed, original = read_image(EX / Path(moving).parent / "mri.png"), read_image(EX / moving)
    baseline = register(fixed, original, kind).transform  # the method's answer on the pair as published
    res = register(fixed, apply_transform(original, original, known), kind)
    mean, worst = _error(known, res.transform, fixed, baseline)
    assert mean < 1.0 and worst < 3.0, (mean, worst)
    mean, worst = _error(known, res.transform, fixed)
    assert mean < 3.5 and worst < 7.0, (mean, worst)
    assert res.image.array.shape == original.array.shape and res.image.array.dtype == np.uint8


def test_registration_is_the_same_on_every_run_and_leaves_itk_threads_alone():
    """One ITK thread while registering (the module's default): repeated runs give the identical transform
    even where ITK would use several threads, and the caller's global thread count is restored."""
    fixed, moving = read_image(EX / "ct-mri/mri.png"), read_image(EX / "ct-mri/ct.png")
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    try:
        runs = [register(fixed, moving, "affine").transform.GetParameters() for _ in range(3)]
        assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == 2
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["rigid", "affine"])
def test_3d_registration_recovers_known_transform(kind):
    fixed, moving = read_image(EX / "brats3d/t2.nii.gz"), read_image(EX / "brats3d/flair.nii.gz")
    ref = _sitk_image(fixed.array.astype(np.float32), fixed)
    center = ref.TransformContinuousIndexToPhysicalPoint([s / 2 for s in ref.GetSize()])
    if kind == "rigid":
        known = sitk.Euler3DTransform(center, 0.08, -0.05, 0.1, [4, -6, 3])
    else:
        known = _affine(3, center, [0.05, 0.0, -0.08], [1.08, 0.95, 1.0], [3, 4, -2])
    res = register(fixed, apply_transform(moving, moving, known), kind)
    mean, worst = _error(known, res.transform, fixed)
    assert mean < 1.0 and worst < 2.0, (mean, worst)
    np.testing.assert_allclose(res.image.affine, fixed.affine)


def test_register_command_writes_image_and_transform(tmp_path):
    moving = read_image(EX / "ct-mri/ct.png")
    known = sitk.Euler2DTransform([128, 128], np.deg2rad(10), [6, 3])
    from neurofuse.io import write_image

    warped = tmp_path / "ct_moved.png"
    write_image(warped, apply_transform(moving, moving, known).array / 255.0, bit_depth=8)
    out = tmp_path / "ct_on_mri.png"
    res = CliRunner().invoke(main, ["register", str(EX / "ct-mri/mri.png"), str(warped), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert out.is_file() and transform_path(out) == tmp_path / "ct_on_mri.transform.tfm"
    mean, _ = _error(known, read_transform(transform_path(out)), read_image(EX / "ct-mri/mri.png"))
    assert mean < 2.0
    res = CliRunner().invoke(main, ["register", str(EX / "ct-mri/mri.png"), str(warped), "-o", str(out)])
    assert res.exit_code == 2 and "exists" in res.output  # never overwritten without --overwrite


def test_cli_kinds_match_the_library():
    from neurofuse.cli.register import KINDS as CLI_KINDS
    from neurofuse.registration import KINDS

    assert CLI_KINDS == KINDS


def test_fuse_register_fuses_the_aligned_pair_and_saves_the_transform(tmp_path):
    from neurofuse.io import write_image

    moving = read_image(EX / "ct-mri/ct.png")
    known = sitk.Euler2DTransform([128, 128], np.deg2rad(-12), [-5, 8])
    warped = tmp_path / "ct.png"
    write_image(warped, apply_transform(moving, moving, known).array / 255.0)
    out = tmp_path / "fused.png"
    args = ["fuse", str(EX / "ct-mri/mri.png"), str(warped), "-o", str(out), "-m", "average"]
    res = CliRunner().invoke(main, [*args, "--register", "rigid"])
    assert res.exit_code == 0, res.output
    mean, _ = _error(known, read_transform(tmp_path / "fused.transform.tfm"), read_image(EX / "ct-mri/mri.png"))
    assert mean < 3.5
    res = CliRunner().invoke(main, [*args[:4], str(tmp_path / "plain.png"), "-m", "average"])
    assert res.exit_code == 0 and not (tmp_path / "plain.transform.tfm").exists()
