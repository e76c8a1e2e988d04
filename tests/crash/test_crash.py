"""Crash tests: kill -9 (and SIGTERM) of real `neurofuse` processes at seeded moments, then the checks a
user relies on: every output opens completely, no partial file survives the rerun, and the rerun (or
`train --resume`) ends with the same files as an uninterrupted run. Also two `fuse-dir` at once.

The moments are chosen from what exists on disk (after the k-th output, as soon as a partial file
appears), with k drawn from a seeded generator, so the tests do not depend on the machine's speed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image as PILImage

from neurofuse.cli import main
from neurofuse.io import read_image

pytestmark = pytest.mark.slow

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
       "NEUROFUSE_PRECISION": "fp32", "PYTHONUNBUFFERED": "1"}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "neurofuse", *[str(a) for a in args]]


def run(*args, check: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(cli(*args), env=ENV, capture_output=True, text=True, encoding="utf-8", timeout=300)
    if check:
        assert res.returncode == 0, res.stderr
    return res


def run_here(*args) -> str:
    """`neurofuse args` in this process (the uninterrupted reference runs: no interpreter start-up)."""
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, (res.stderr, res.exception)
    return res.stdout


def kill_when(args, ready, sig=signal.SIGKILL, timeout: float = 300.0) -> int | None:
    """Start `neurofuse args`, send `sig` as soon as `ready()` is true; its exit code (None: it finished first).

    The process runs at nice 10, so that on a busy machine this poller still wakes up before it moves on."""
    log = tempfile.TemporaryFile()  # not a pipe: a chatty process must never block on it
    proc = subprocess.Popen(cli(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=log, preexec_fn=lambda: os.nice(10))
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            if ready():
                proc.send_signal(sig)
                proc.wait(30)
                return proc.returncode
            if time.monotonic() - t0 > timeout:
                raise AssertionError("the process neither finished nor reached the kill point")
            time.sleep(0.002)
        log.seek(0)
        assert proc.returncode == 0, f"exit {proc.returncode} before the kill point: {log.read()[-2000:]!r}"
        return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".partial-" in p.name or p.name.endswith(".lock")]


def pair_folders(root: Path, n: int, size: int) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for mod in ("MRI", "SPECT"):
        (root / mod).mkdir(parents=True)
    for i in range(n):
        PILImage.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / "MRI" / f"{i:02d}.png")
        PILImage.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / "SPECT" / f"{i:02d}.png")
    return root / "MRI", root / "SPECT"


N_PAIRS = 10
FUSE_DIR = ("-m", "lagn", "--pair", "spect-mri")


@pytest.fixture(scope="module")
def fuse_dir_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("fusedir")
    da, db = pair_folders(root, N_PAIRS, 96)
    run_here("fuse-dir", da, db, "-o", root / "ref", *FUSE_DIR)
    return da, db, digests(root / "ref")


@pytest.mark.parametrize("seed", [0])
def test_kill9_fuse_dir_then_rerun_matches(fuse_dir_reference, tmp_path, seed):
    da, db, ref = fuse_dir_reference
    assert len(ref) == N_PAIRS
    out = tmp_path / "out"
    k = int(np.random.default_rng(seed).integers(1, N_PAIRS - 2))

    def done():
        return out.is_dir() and len([p for p in out.iterdir() if not p.name.startswith(".")]) >= k

    code = kill_when(["fuse-dir", da, db, "-o", out, *FUSE_DIR], done)
    assert code == -signal.SIGKILL, "fuse-dir finished before the kill"
    for p in out.iterdir():
        if not p.name.startswith("."):
            assert read_image(p).array.shape[:2] == (96, 96)  # every output that exists is complete
    assert {p.name for p in out.iterdir() if not p.name.startswith(".")} <= ref.keys()
    res = run("fuse-dir", da, db, "-o", out, *FUSE_DIR)
    assert "0 failed" in res.stdout
    assert leftovers(out) == []
    assert digests(out) == ref


def volume_pair(root: Path, shape=(112, 112, 96)) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    affine = np.diag([1.1, 1.0, 1.3, 1.0])
    for name in ("t2", "flair"):
        nib.save(nib.Nifti1Image(rng.random(shape).astype(np.float32), affine), str(root / f"{name}.nii.gz"))
    return root / "t2.nii.gz", root / "flair.nii.gz"


@pytest.fixture(scope="module")
def volume_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("vol")
    t2, flair = volume_pair(root)
    run_here("fuse", t2, flair, "-o", root / "ref.nii.gz", "-m", "dwt")
    return t2, flair, hashlib.sha256((root / "ref.nii.gz").read_bytes()).hexdigest()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill9", "sigterm"])
def test_signal_during_3d_write(volume_reference, tmp_path, sig):
    """Killed while the fused volume is being written: no output, and the partial file is removed (at
    once on SIGTERM, by the rerun after kill -9); the rerun writes the same volume as a clean run."""
    t2, flair, ref = volume_reference
    for attempt in range(5):  # the signal can land just after the atomic rename: then try again
        folder = tmp_path / str(attempt)
        folder.mkdir()
        out = folder / "f.nii.gz"
        code = kill_when(["fuse", t2, flair, "-o", out, "-m", "dwt"], lambda f=folder: bool(leftovers(f)), sig)
        assert code is not None, "fuse finished before its partial file was seen"
        if out.exists():  # renamed before the signal arrived: complete, and nothing left behind
            assert hashlib.sha256(out.read_bytes()).hexdigest() == ref and leftovers(folder) == []
            continue
        break
    else:
        raise AssertionError("in 5 tries the signal never arrived while the volume was being written")
    if sig == signal.SIGTERM:
        assert code == 128 + signal.SIGTERM and leftovers(folder) == []
    else:
        assert code == -signal.SIGKILL and leftovers(folder)  # what kill -9 leaves, until the next write
    run("fuse", t2, flair, "-o", out, "-m", "dwt")
    assert leftovers(folder) == []
    assert hashlib.sha256(out.read_bytes()).hexdigest() == ref
    assert read_image(out).array.shape == (112, 112, 96)


def test_kill9_3d_fuse_at_a_random_moment(volume_reference, tmp_path):
    t2, flair, ref = volume_reference
    out = tmp_path / "f.nii.gz"
    delay = float(np.random.default_rng(7).uniform(0.5, 3.0))
    t0 = time.monotonic()
    kill_when(["fuse", t2, flair, "-o", out, "-m", "dwt"], lambda: time.monotonic() - t0 > delay)
    if out.exists():  # finished before the kill: complete
        assert hashlib.sha256(out.read_bytes()).hexdigest() == ref
    res = run("fuse", t2, flair, "-o", out, "-m", "dwt", check=False)
    assert res.returncode in (0, 2) and leftovers(tmp_path) == []
    assert hashlib.sha256(out.read_bytes()).hexdigest() == ref


def test_two_fuse_dir_at_once(tmp_path):
    """Two runs on one output folder: every pair fused once, no failure, no partial or lock file left."""
    da, db = pair_folders(tmp_path, 16, 48)
    out = tmp_path / "out"
    args = ["fuse-dir", da, db, "-o", out, "-m", "laplacian"]
    procs = [subprocess.Popen(cli(*args), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              encoding="utf-8")
             for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    fused = []
    for stdout, _ in results:
        line = stdout.strip().splitlines()[-1]
        fused.append(int(line.split(" fused")[0]))
        assert " 0 failed" in line, line
    assert sum(fused) == 16, results  # each pair fused by exactly one of the two runs
    assert leftovers(out) == []
    run_here("fuse-dir", da, db, "-o", tmp_path / "ref", "-m", "laplacian")
    assert digests(out) == digests(tmp_path / "ref")


def harvard(root: Path, n: int = 10, size: int = 24) -> Path:
    da, db = pair_folders(root, n, size)
    lines = ["id,case,split"] + [f"{i:02d},{i},{'val' if i >= n - 2 else 'train'}" for i in range(n)]
    (root / "split.csv").write_text("\n".join(lines) + "\n")
    return root


TRAIN = ("--model", "ehdran_small", "--epochs", "4", "--batch-size", "2", "--crop", "16", "--threads", "1",
         "--lr", "1e-3", "--device", "cpu", "--precision", "fp32")


def _log_rows(run_dir: Path) -> int:
    log = run_dir / "log.csv"
    try:
        return max(0, len(log.read_text().strip().splitlines()) - 1)
    except OSError:
        return 0


def test_kill9_train_then_resume_is_bit_identical(tmp_path):
    data = harvard(tmp_path / "data")
    run_here("train", "--data", data, "--out", tmp_path / "ref", *TRAIN)
    k = int(np.random.default_rng(3).integers(1, 4))
    run_dir = tmp_path / "run"
    code = kill_when(["train", "--data", data, "--out", run_dir, *TRAIN], lambda: _log_rows(run_dir) >= k)
    assert code == -signal.SIGKILL, "training finished before the kill"
    assert leftovers(run_dir) == [] or all(".partial-" in n for n in leftovers(run_dir))
    run("train", "--data", data, "--out", run_dir, "--resume", *TRAIN)
    assert leftovers(run_dir) == []
    from safetensors.torch import load_file

    want, got = load_file(str(tmp_path / "ref" / "last.safetensors")), load_file(str(run_dir / "last.safetensors"))
    assert want.keys() == got.keys()
    for key in want:
        assert bool((want[key] == got[key]).all()), key
