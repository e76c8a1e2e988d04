"""Bounded memory: fusing volumes needs memory proportional to the volume (a stated number of bytes per
voxel, `pipeline.BYTES_PER_VOXEL`), and a volume that would not fit is refused before it is read.

Peaks are taken with tracemalloc (numpy's allocations; exact and machine-independent). The figures for
a 512x512x400 pair (peak RSS) are in `pipeline.py` and in the notes of issue 19.
"""

from __future__ import annotations

import tracemalloc

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner

from neurofuse import pipeline
from neurofuse.cli import main
from neurofuse.pipeline import BYTES_PER_VOXEL, LEARNED_BYTES_PER_VOXEL, FuseOptions, estimate_memory, fuse_files


def _pair(folder, shape, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for name in ("a", "b"):
        p = folder / f"{name}{'x'.join(map(str, shape))}.nii"
        nib.save(nib.Nifti1Image(rng.random(shape, dtype=np.float32), np.eye(4)), str(p))
        paths.append(p)
    return paths


def peak_bytes_per_voxel(folder, shape, method, **options) -> float:
    a, b = _pair(folder, shape)
    out = folder / f"f{'x'.join(map(str, shape))}_{method}.nii"
    tracemalloc.start()
    try:
        fuse_files(a, b, out, FuseOptions(method=method), **options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / np.prod(shape)


@pytest.mark.parametrize("method", ["average", "pca", "dwt", "laplacian"])
def test_classical_memory_grows_no_faster_than_the_volume(tmp_path, method):
    small = peak_bytes_per_voxel(tmp_path, (48, 48, 32), method)
    large = peak_bytes_per_voxel(tmp_path, (96, 96, 64), method)  # 8x the voxels
    assert large <= 1.1 * small, (small, large)
    assert large <= BYTES_PER_VOXEL[method], (method, large)


def test_learned_3d_memory_per_voxel_is_bounded(tmp_path):
    """ClinicalFMamba-3D in sliding windows: the arrays that grow with the volume stay within the stated
    bytes per voxel (the per-window cost of the network is fixed: torch memory, not counted here)."""
    small = peak_bytes_per_voxel(tmp_path, (32, 32, 16), "clinicalfmamba", window=16, overlap=0.0)  # 4 windows
    large = peak_bytes_per_voxel(tmp_path, (64, 32, 32), "clinicalfmamba", window=16, overlap=0.0)  # 4x the voxels
    assert large <= 1.1 * small, (small, large)
    assert large <= LEARNED_BYTES_PER_VOXEL, large


def test_estimate_for_the_issue_volume():
    """The stated peaks for a 512x512x400 float32 pair (the issue's size)."""
    gib = 2**30
    assert 2.3 * gib < estimate_memory((512, 512, 400), "dwt") < 2.8 * gib  # measured: 2498 MiB peak RSS
    assert estimate_memory((512, 512, 400), "clinicalfmamba") < 6.5 * gib  # estimated, not measured


def test_volume_too_large_for_memory_is_refused_up_front(tmp_path, monkeypatch):
    a, b = _pair(tmp_path, (16, 16, 8))
    monkeypatch.setattr(pipeline, "available_memory", lambda: 2**10)
    res = CliRunner().invoke(main, ["fuse", str(a), str(b), "-o", str(tmp_path / "f.nii.gz"), "-m", "dwt"])
    assert res.exit_code == 1
    line = res.stderr.strip()
    assert line.startswith("error: ") and str(a) in line and "needs about" in line and "GiB" in line, line
    assert not (tmp_path / "f.nii.gz").exists()
