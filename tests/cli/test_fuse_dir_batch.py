"""`fuse-dir` with a learned method: the model is loaded once and 2D pairs run in batches, with the
results of pair-by-pair fusion (issue 13, fast start)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import neurofuse.fusion as fusion
import neurofuse.inference as inference
from neurofuse.cli import main
from neurofuse.io import read_image, write_image
from neurofuse.learned import register_learned_method
from neurofuse.models import create_model, registry


@pytest.fixture
def tiny_method(tmp_path, monkeypatch):
    """A learned method `tiny_batch` running clinicalfmamba_2d_tiny from a weights file."""
    fusion.list_methods()  # load the providers first: the copy must hold them when it is restored
    monkeypatch.setattr(fusion, "_METHODS", dict(fusion._METHODS))
    register_learned_method("tiny_batch", {2: "clinicalfmamba_2d_tiny"}, "test")
    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in create_model("clinicalfmamba_2d_tiny").state_dict().items()}, str(path))
    inference._cached_model.cache_clear()
    yield path
    inference._cached_model.cache_clear()


def test_fuse_many_equals_fuse_pair_by_pair(tiny_method, rng):
    pairs = [(rng.random((20, 24), dtype=np.float32), rng.random((20, 24), dtype=np.float32)) for _ in range(5)]
    one = [fusion.fuse(a, b, "tiny_batch", weights=str(tiny_method)) for a, b in pairs]
    many = fusion.fuse_many(pairs, "tiny_batch", weights=str(tiny_method))
    for x, y in zip(one, many, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-5)
    classical = fusion.fuse_many(pairs, "dwt")  # no batch form: pair by pair
    np.testing.assert_allclose(classical[1], fusion.fuse(*pairs[1], "dwt"))


def test_fuse_dir_loads_the_model_once_and_runs_batches(tiny_method, tmp_path, rng, monkeypatch):
    for d in ("A", "B"):
        (tmp_path / d).mkdir()
    for i in range(5):
        write_image(tmp_path / "A" / f"{i}.png", rng.random((24, 24)))
        write_image(tmp_path / "B" / f"{i}.png", rng.random((24, 24)))
    built, calls = [], []
    real_create, real_run = registry.create_model, inference._run
    monkeypatch.setattr(registry, "create_model", lambda *a, **k: built.append(a) or real_create(*a, **k))
    monkeypatch.setattr(inference, "_run", lambda m, a, *r, **k: calls.append(len(a)) or real_run(m, a, *r, **k))
    outs = {}
    for bs in ("8", "2", "1"):
        built.clear()
        calls.clear()
        out = tmp_path / f"out{bs}"
        args = ["fuse-dir", tmp_path / "A", tmp_path / "B", "-o", out, "-m", "tiny_batch",
                "-O", f"weights={tiny_method}", "--batch-size", bs]
        res = CliRunner().invoke(main, [str(a) for a in args])
        assert res.exit_code == 0 and "5 fused, 0 skipped" in res.stdout, res.output
        assert calls == {"8": [5], "2": [2, 2, 1], "1": [1] * 5}[bs]
        assert len(built) <= 1  # built (and its weights loaded) once per run, or not at all (cached)
        outs[bs] = [read_image(out / f"{i}.png").array.astype(int) for i in range(5)]
    for i in range(5):  # 8-bit outputs: batching changes at most float rounding
        assert np.abs(outs["8"][i] - outs["1"][i]).max() <= 1
        assert np.abs(outs["2"][i] - outs["1"][i]).max() <= 1
