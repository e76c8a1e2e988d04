"""Weight-decay parameter groups (bug: decay applied to A_log, D, norms and biases)."""

from __future__ import annotations

import pytest
import torch

from neurofuse.models import create_model, param_groups


def _exempt(model) -> set[str]:
    decayed, exempt = param_groups(model, 0.05)
    assert decayed["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    names = decayed["names"] + exempt["names"]
    assert sorted(names) == sorted(n for n, p in model.named_parameters() if p.requires_grad)  # each trainable once
    return set(exempt["names"])


def test_mamba_a_log_d_norms_and_biases_get_no_weight_decay():
    model = create_model("clinicalfmamba_2d_tiny")
    exempt = _exempt(model)
    for name, _ in model.named_parameters():
        leaf = name.rsplit(".", 1)[1]
        module = model.get_submodule(name.rsplit(".", 1)[0])
        is_norm = isinstance(module, torch.nn.LayerNorm | torch.nn.modules.batchnorm._BatchNorm)
        expect_exempt = leaf in ("A_log", "D") or leaf.endswith("bias") or is_norm
        assert (name in exempt) == expect_exempt, name
    assert any(n.endswith("A_log") for n in exempt) and any(n.endswith(".D") for n in exempt)
    assert not any(n.endswith("A_log") for n in param_groups(model, 0.05)[0]["names"])


@pytest.mark.parametrize("name", ["swinfusion_small", "lagn_small", "mrscfusion_small"])
def test_swin_relative_position_tables_get_no_weight_decay(name):
    model = create_model(name).requires_grad_(True)  # the staged peers freeze parts by default
    exempt = _exempt(model)
    assert any(n.endswith("bias_table") for n in exempt)


def test_adamw_with_the_groups_leaves_exempt_parameters_alone():
    torch.manual_seed(0)
    model = create_model("clinicalfmamba_2d_tiny")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(param_groups(model, 0.5), lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    exempt = _exempt(model)
    for n, p in model.named_parameters():
        if n in exempt:
            assert torch.equal(p, before[n]), n
        else:
            torch.testing.assert_close(p, before[n] * (1 - 0.1 * 0.5))


def test_frozen_parameters_are_left_out():
    model = create_model("clinicalfmamba_2d_tiny")
    model.stem.requires_grad_(False)
    names = [n for g in param_groups(model, 0.01) for n in g["names"]]
    assert names and not any(n.startswith("stem.") for n in names)


def test_lr_scale_splits_groups_by_name_prefix():
    model = create_model("clinicalfmamba_3d_tiny", refine=4)
    groups = param_groups(model, 0.05, {"refine": 30.0})
    scaled = [g for g in groups if g.get("lr_scale") == 30.0]
    assert sorted(n for g in scaled for n in g["names"]) == sorted(n for n, _ in model.refine.named_parameters(
        prefix="refine"))
    assert {g["weight_decay"] for g in scaled} == {0.05, 0.0}  # decay still by the usual rule
    assert not any(n.startswith("refine") for g in groups if "lr_scale" not in g for n in g["names"])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert len(param_groups(model, 0.05)) == 2  # without lr_scale: the two decay groups, as before
