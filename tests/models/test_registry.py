"""Model registry and pretrained weights: names, shipped files, sha256 checks, safetensors only."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from neurofuse.errors import InputError, UsageError
from neurofuse.models import create_model, list_models, list_pretrained, registry
from neurofuse.models.registry import load_weights, sha256_file


def test_registry_lists_every_family():
    names = set(list_models())
    for base in (
        "clinicalfmamba_2d",
        "clinicalfmamba_3d",
        "ehdran",
        "swinfusion",
        "mrscfusion",
        "mambadfuse",
        "dmfnet",
        "lagn",
    ):
        assert base in names
    with pytest.raises(UsageError, match="unknown model"):
        create_model("nope")


def test_load_weights_checks_hash_and_shape(tmp_path):
    torch.manual_seed(0)
    src = create_model("clinicalfmamba_2d_tiny")
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    dst = load_weights(create_model("clinicalfmamba_2d_tiny"), path, sha256_file(path))
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k])
    with pytest.raises(InputError, match="sha256 mismatch"):
        load_weights(create_model("clinicalfmamba_2d_tiny"), path, "0" * 64)
    with pytest.raises(InputError, match="do not fit"):
        load_weights(create_model("clinicalfmamba_3d_tiny"), path)
    pickle = tmp_path / "w.pt"
    torch.save(src.state_dict(), pickle)
    with pytest.raises(InputError, match="safetensors"):
        load_weights(create_model("clinicalfmamba_2d_tiny"), pickle)


@pytest.mark.parametrize("key", list_pretrained())
def test_shipped_weights_load_and_are_checked(key, monkeypatch):
    model, tag = key.split("/")
    net = create_model(model, pretrained=tag)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    entry = dict(registry._manifest()[key], sha256="f" * 64)
    monkeypatch.setattr(registry, "_manifest", lambda: {key: entry})
    with pytest.raises(InputError, match="sha256 mismatch"):
        create_model(model, pretrained=tag)


def test_unknown_pretrained_tag_is_a_usage_error():
    with pytest.raises(UsageError, match="no shipped weights"):
        create_model("clinicalfmamba_2d_tiny", pretrained="nope")
