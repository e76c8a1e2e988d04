"""Model inference on arrays: pad/crop, sliding windows with Gaussian blending, learned-method registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

import neurofuse.fusion as fusion
from neurofuse.errors import UsageError
from neurofuse.inference import fuse_with_model, gaussian_importance
from neurofuse.learned import register_learned_method
from neurofuse.models import create_model


class PointwiseFusion(nn.Module):
    """A local (1x1) fusion model with stride 4: windowed inference must equal whole-volume inference."""

    spatial_dims = 3
    stride = 4

    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv3d(2, 1, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if any(s % self.stride for s in a.shape[2:]):
            raise AssertionError("inputs must be padded to the stride")
        return torch.sigmoid(self.mix(torch.cat([a, b], 1)))


def _vol(shape, seed):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def test_gaussian_importance():
    w = gaussian_importance((9, 5))
    assert w.shape == (9, 5) and w[4, 2] == 1.0 and w.min() >= 1e-3
    np.testing.assert_allclose(w, w[::-1, ::-1])


def test_sliding_window_equals_whole_for_a_local_model():
    torch.manual_seed(0)
    model = PointwiseFusion()
    a, b = _vol((21, 18, 23), 0), _vol((21, 18, 23), 1)
    whole = fuse_with_model(model, a, b)
    windowed = fuse_with_model(model, a, b, window=(8, 12, 8), overlap=0.5, batch_size=3)
    assert whole.shape == a.shape
    np.testing.assert_allclose(windowed, whole, atol=1e-6)


def test_sliding_window_close_to_whole_for_clinicalfmamba():
    torch.manual_seed(0)
    model = create_model("clinicalfmamba_3d_tiny").eval()
    z = np.linspace(-1, 1, 24, dtype=np.float32)
    g = np.stack(np.meshgrid(z, z, z, indexing="ij"))
    a = np.exp(-3 * (g**2).sum(0)).astype(np.float32)
    b = (0.5 + 0.4 * np.sin(4 * g[2]) * (g[0] > 0)).astype(np.float32)
    whole = fuse_with_model(model, a, b)
    same = fuse_with_model(model, a, b, window=24)
    np.testing.assert_allclose(same, whole, atol=1e-6)  # a window covering the volume: whole-volume inference
    windowed = fuse_with_model(model, a, b, window=16, overlap=0.5)
    # the latent Mamba sees only its window: close, not equal
    assert float(np.abs(windowed - whole).mean()) < 0.02
    assert float(np.abs(windowed - whole).max()) < 0.1


def test_pad_and_crop_any_size_2d_and_bf16():
    torch.manual_seed(0)
    model = create_model("clinicalfmamba_2d_tiny")
    a, b = _vol((21, 19), 0), _vol((21, 19), 1)
    f32 = fuse_with_model(model, a, b)
    assert f32.shape == (21, 19) and f32.dtype == np.float32
    assert 0 <= f32.min() and f32.max() <= 1
    bf16 = fuse_with_model(model, a, b, precision="bf16")
    assert np.abs(bf16 - f32).max() < 0.05
    with pytest.raises(UsageError):
        fuse_with_model(model, a, b, precision="fp8")
    with pytest.raises(UsageError):
        fuse_with_model(model, a, b, device="tpu")


def test_clinicalfmamba_is_a_learned_2d_3d_method():
    m = fusion.get_method("clinicalfmamba")
    assert m.kind == "learned" and m.spatial_dims == (2, 3)
    assert m.models == {2: "clinicalfmamba_2d", 3: "clinicalfmamba_3d"}


def test_register_learned_method_picks_model_by_ndim(tmp_path, monkeypatch):
    fusion.list_methods()  # load the providers first: the copy must hold them when it is restored
    monkeypatch.setattr(fusion, "_METHODS", dict(fusion._METHODS))
    register_learned_method("tiny_cfm_test", {2: "clinicalfmamba_2d", 3: "clinicalfmamba_3d"}, "test")
    assert fusion.get_method("tiny_cfm_test").spatial_dims == (2, 3)
    register_learned_method("tiny_cfm_test2", {2: "clinicalfmamba_2d_tiny"}, "test")
    torch.manual_seed(3)
    model = create_model("clinicalfmamba_2d_tiny")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    a, b = _vol((16, 20), 0), _vol((16, 20), 1)
    got = fusion.fuse(a, b, "tiny_cfm_test2", weights=str(path))
    np.testing.assert_allclose(got, fuse_with_model(model, a, b), atol=1e-6)
    with pytest.raises(UsageError, match="no shipped weights"):
        fusion.fuse(a, b, "tiny_cfm_test2")
    with pytest.raises(UsageError):
        fusion.fuse(a[None].repeat(8, 0), b[None].repeat(8, 0), "tiny_cfm_test2", weights=str(path))


def test_weights_load_into_the_architecture_they_were_trained_with(tmp_path):
    """`neurofuse train` stores model_args in the file; an ablation's weights must load into the ablation."""
    from neurofuse.errors import InputError
    from neurofuse.inference import load_model
    from neurofuse.train import save_weights

    single = create_model("clinicalfmamba_3d_tiny", scan="single")
    path = tmp_path / "single.safetensors"
    save_weights(single, path, {"model": "clinicalfmamba_3d_tiny", "model_args": '{"scan": "single"}'})
    model = load_model("clinicalfmamba_3d_tiny", str(path), None)
    assert model.cfg.scan == "single"
    for k, v in single.state_dict().items():
        assert torch.equal(model.state_dict()[k], v)
    with pytest.raises(InputError, match="trained for model clinicalfmamba_3d_tiny"):
        load_model("clinicalfmamba_2d_tiny", str(path), None)
    plain = tmp_path / "plain.safetensors"  # no metadata (another tool): registered defaults
    save_weights(create_model("clinicalfmamba_3d_tiny"), plain)
    assert load_model("clinicalfmamba_3d_tiny", str(plain), None).cfg.scan == "tri_plane"
