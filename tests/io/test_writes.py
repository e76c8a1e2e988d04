"""The write protocol (partial file, flock, stale-partial removal, exclusive commit, output claims) and
the readers' handling of float and unusual TIFFs."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile

from neurofuse.errors import InputError, UsageError
from neurofuse.evaluate import load01
from neurofuse.io import (
    atomic_write_path,
    claim_output,
    partial_files,
    read_image,
    remove_stale_locks,
    remove_stale_partials,
    unit_luma,
)


def test_exclusive_commit_never_replaces_a_file_that_appeared_meanwhile(tmp_path):
    out = tmp_path / "f.txt"
    with pytest.raises(UsageError, match="created while"):
        with atomic_write_path(out, overwrite=False) as tmp:
            tmp.write_text("mine")
            out.write_text("theirs")  # another process wins the race
    assert out.read_text() == "theirs" and partial_files(tmp_path) == []


def test_overwrite_replaces_and_errors_name_the_target(tmp_path):
    out = tmp_path / "f.txt"
    out.write_text("old")
    with atomic_write_path(out) as tmp:
        tmp.write_text("new")
    assert out.read_text() == "new"
    (tmp_path / "dir.txt").mkdir()
    with pytest.raises(UsageError, match="dir.txt: output is a folder"):
        with atomic_write_path(tmp_path / "dir.txt"):
            pass
    with pytest.raises(UsageError, match="missing/f.txt: output folder .* does not exist"):
        with atomic_write_path(tmp_path / "missing" / "f.txt"):
            pass


def test_only_partials_of_dead_writers_are_removed(tmp_path):
    stale = tmp_path / ".f.partial-deadbeef.txt"
    stale.write_text("left by kill -9")
    with atomic_write_path(tmp_path / "g.txt") as live:  # a live writer: its partial is locked
        live.write_text("being written")
        assert remove_stale_partials(tmp_path) == 1
        assert live.exists() and not stale.exists()
    assert partial_files(tmp_path) == []


def test_output_claims_are_exclusive_and_released(tmp_path):
    out = tmp_path / "f.png"
    with claim_output(out) as first:
        assert first
        with claim_output(out) as second:  # a second claimant (another open file description) is refused
            assert not second
    assert not (tmp_path / ".f.png.lock").exists()
    (tmp_path / ".g.png.lock").write_text("")  # left by a killed run
    assert remove_stale_locks(tmp_path) == 1


def test_float_tiffs_by_full_scale(tmp_path):
    unit = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    tifffile.imwrite(tmp_path / "u.tif", unit)
    img = read_image(tmp_path / "u.tif")
    assert img.full_scale == 1.0 and img.array.dtype == np.float32
    np.testing.assert_allclose(unit_luma(img), unit)  # not divided by 2^32 - 1
    assert load01(tmp_path / "u.tif").max() == 1.0  # as evaluate reads it (bug: 2.3e-10)
    hu = np.linspace(-1000, 3000, 64).reshape(8, 8)
    tifffile.imwrite(tmp_path / "hu.tif", hu)
    img = read_image(tmp_path / "hu.tif")
    assert img.full_scale is None and img.array.dtype == np.float64
    np.testing.assert_allclose(unit_luma(img), (hu + 1000) / 4000, atol=1e-6)  # min-max
    tifffile.imwrite(tmp_path / "rgb.tif", np.stack([unit, unit * 0.5, unit * 0.25], -1), photometric="rgb")
    assert read_image(tmp_path / "rgb.tif").is_color


def test_tiff_stacks_and_alpha(tmp_path):
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 8, 8), np.uint16), photometric="minisblack")
    with pytest.raises(InputError, match="stack of 3 planes"):
        read_image(tmp_path / "stack.tif")
    rgba = np.full((8, 8, 4), 255, np.uint8)
    rgba[..., 0] = np.arange(64, dtype=np.uint8).reshape(8, 8)
    tifffile.imwrite(tmp_path / "rgba.tif", rgba, photometric="rgb", extrasamples=["unassalpha"])
    img = read_image(tmp_path / "rgba.tif")
    assert img.array.shape == (8, 8, 3) and img.bit_depth == 8


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused_up_front(tmp_path):
    (tmp_path / "ro").mkdir()
    os.chmod(tmp_path / "ro", 0o555)
    with pytest.raises(UsageError, match="not writable"):
        with atomic_write_path(tmp_path / "ro" / "f.txt"):
            pass


def test_interrupt_just_after_the_partial_is_created_removes_it(tmp_path, monkeypatch):
    """SIGTERM unwinds as an exception; one raised right after the temporary file exists (here from the
    lock call that follows its creation) must still remove it."""
    import neurofuse.io as nio

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(nio, "_try_lock", interrupted)
    with pytest.raises(KeyboardInterrupt):
        with atomic_write_path(tmp_path / "f.txt"):
            pass
    assert list(tmp_path.iterdir()) == []
