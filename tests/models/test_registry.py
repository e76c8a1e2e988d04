"""Model registry and pretrained weights: names, shipped files, sha256 checks, safetensors only."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from neurofuse.errors import InputError, UsageError
from neurofuse.models import create_model, list_models, list_pretrained, pretrained
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
    model, tag = key.split(".")
    net = create_model(model, pretrained=tag)
    assert all(torch.isfinite(p).all() for p in net.parameters())
    entry = dict(pretrained._manifest()[key], sha256="f" * 64)
    monkeypatch.setattr(pretrained, "_manifest", lambda: {key: entry})
    with pytest.raises(InputError, match="sha256 mismatch"):
        create_model(model, pretrained=tag)


@pytest.mark.parametrize("key", list_pretrained())
def test_manifest_and_safetensors_metadata_agree(key):
    """One description of a shipped file: the metadata `neurofuse train` wrote must match its pretrained config."""
    cfg = pretrained.pretrained_cfgs()[key]
    assert cfg.path.is_file() and sha256_file(cfg.path) == cfg.sha256
    with safe_open(str(cfg.path), "pt") as fh:
        meta = fh.metadata() or {}
    assert meta.get("model") == cfg.arch
    assert json.loads(meta.get("model_args") or "{}") == cfg.model_args


def test_pretrained_configs_name_arch_dot_tag_with_the_first_tag_the_default():
    cfgs = pretrained.pretrained_cfgs()
    assert list_pretrained("clinicalfmamba_2d") == [
        "clinicalfmamba_2d.ct-mri", "clinicalfmamba_2d.spect-mri", "clinicalfmamba_2d.pet-mri"]
    assert pretrained.default_tag("clinicalfmamba_2d") == "ct-mri"
    assert pretrained.default_tag("clinicalfmamba_3d") == "brats"
    assert pretrained.default_tag("clinicalfmamba_2d_tiny") is None
    assert {c.arch for c in cfgs.values()} <= set(list_models())
    default = create_model("clinicalfmamba_3d", pretrained=True)
    by_name = create_model("clinicalfmamba_3d.brats")
    for k, v in default.state_dict().items():
        assert torch.equal(v, by_name.state_dict()[k])


def test_pretrained_model_args_build_the_architecture(tmp_path, monkeypatch):
    """An ablation's weights ship with the arguments they were trained with (here the single scan)."""
    torch.manual_seed(0)
    single = create_model("clinicalfmamba_3d_tiny", scan="single")
    path = tmp_path / "single.safetensors"
    save_file({k: v.contiguous() for k, v in single.state_dict().items()}, str(path))
    entry = {"file": path.name, "sha256": sha256_file(path), "model_args": {"scan": "single"}}
    monkeypatch.setattr(pretrained, "_manifest", lambda: {"clinicalfmamba_3d_tiny.single": entry})
    monkeypatch.setattr(pretrained.PretrainedCfg, "path", property(lambda cfg: tmp_path / cfg.file))
    net = create_model("clinicalfmamba_3d_tiny", pretrained="single")
    assert net.cfg.scan == "single"
    for k, v in single.state_dict().items():
        assert torch.equal(net.state_dict()[k], v)


def test_unknown_pretrained_tag_is_a_usage_error():
    with pytest.raises(UsageError, match="no shipped weights"):
        create_model("clinicalfmamba_2d_tiny", pretrained="nope")
    with pytest.raises(UsageError, match="no shipped weights"):
        create_model("clinicalfmamba_2d_tiny", pretrained=True)


def test_warm_start_into_a_model_with_the_refinement(tmp_path):
    """Weights without the refinement load into a model with it only where the caller allows the model's
    `init_optional` parts to be missing (the trainer's `init:`); the refinement starts as the identity,
    so the warm-started model fuses exactly as the weights did."""
    torch.manual_seed(0)
    plain = create_model("clinicalfmamba_3d_tiny").eval()
    path = tmp_path / "plain.safetensors"
    save_file(plain.state_dict(), str(path))
    refined = create_model("clinicalfmamba_3d_tiny", refine=4).eval()
    with pytest.raises(InputError, match="missing"):
        load_weights(refined, path)
    load_weights(refined, path, optional=refined.init_optional)
    a, b = torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(refined(a, b), plain(a, b), atol=0, rtol=0)
