"""Tests of the six peer models (EH-DRAN, SwinFusion, MRSCFusion, MambaDFuse, DM-FNet, LAGN) and
their shared blocks (Swin windows, DDPM). Run on CPU with the `_small` configs at 32x32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neurofuse.models import create_model
from neurofuse.models.diffusion import DiffusionUNet, GaussianDiffusion
from neurofuse.models.ehdran import FUSION_RULES, fuse_features, nuclear_weights
from neurofuse.models.swin import (
    SwinLayer,
    WindowAttention,
    shift_mask,
    window_attention_ref,
    window_partition,
    window_reverse,
)

PEERS = ("ehdran", "swinfusion", "mrscfusion", "mambadfuse", "dmfnet", "lagn")
# Loss after 25 Adam steps on one pair must fall below this fraction of the starting loss.
# (Seen with torch 2.13 on CPU: fusion 0.40-0.63, reconstruction 0.06-0.50, DDPM 0.10-0.13.)
OVERFIT_FACTOR = {"fusion": 0.75, "recon": 0.6, "ddpm": 0.5}


def _pair(size: tuple[int, int] = (32, 32), batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A structural (MRI-like rings/edges) and a functional (smooth blobs) synthetic image in [0, 1]."""
    h, w = size
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    r = (xx**2 + yy**2).sqrt()
    a = (0.5 + 0.5 * torch.cos(12 * r)) * (r < 0.9) + 0.3 * (xx > 0.2)
    b = torch.exp(-((xx - 0.3) ** 2 + (yy + 0.2) ** 2) / 0.1) + 0.6 * torch.exp(-((xx + 0.4) ** 2 + yy**2) / 0.05)
    a, b = (t.clamp(0, 1)[None, None].repeat(batch, 1, 1, 1) for t in (a / a.max(), b / b.max()))
    return a.contiguous(), b.contiguous()


def _small(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(f"{name}_small")


def _stages(model: torch.nn.Module) -> tuple[str | None, ...]:
    return tuple(getattr(model, "training_stages", (None,)))


@pytest.mark.parametrize("name", PEERS)
@pytest.mark.parametrize("size", [(32, 32), (40, 24)])
def test_forward_shape_and_range(name: str, size: tuple[int, int]) -> None:
    model = _small(name).eval()
    a, b = _pair(size, batch=2)
    with torch.no_grad():
        f = model(a, b)
    assert model.spatial_dims == 2
    assert f.shape == a.shape
    assert torch.isfinite(f).all()
    assert float(f.min()) >= 0.0 and float(f.max()) <= 1.0
    with torch.no_grad():  # deterministic at inference (fixed diffusion noise where there is any)
        assert torch.equal(model(a, b), f)


@pytest.mark.parametrize("name", PEERS)
def test_gradients_reach_every_trainable_parameter(name: str) -> None:
    model = _small(name).train()
    a, b = _pair()
    for stage in _stages(model):
        if stage is not None:
            model.set_stage(stage)
        model.zero_grad(set_to_none=True)
        loss, terms = model.training_loss(a, b)
        assert loss.dim() == 0 and torch.isfinite(loss)
        assert terms and all(isinstance(v, float) for v in terms.values())
        loss.backward()
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert trainable, f"{name} stage {stage}: nothing to train"
        missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
        assert not missing, f"{name} stage {stage}: no/invalid gradient for {missing[:5]}"
        assert sum(float(p.grad.abs().sum()) for _, p in trainable) > 0
        frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
        assert not frozen_with_grad


def _overfit_cases() -> list[tuple[str, str | None]]:
    cases = []
    for name in PEERS:
        stages = {
            "dmfnet": ("denoiser", "fusion"),
            "lagn": ("diffusion", "fusion"),
            "mrscfusion": ("autoencoder", "fusion"),
        }
        cases += [(name, s) for s in stages.get(name, (None,))]
    return cases


@pytest.mark.parametrize("name,stage", _overfit_cases())
def test_few_step_overfit(name: str, stage: str | None) -> None:
    model = _small(name).train()
    if stage is not None:
        model.set_stage(stage)
    a, b = _pair()

    def loss_at_fixed_noise() -> float:
        torch.manual_seed(123)  # same diffusion step and noise before and after training
        with torch.no_grad():
            return float(model.training_loss(a, b)[0])

    before = loss_at_fixed_noise()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    torch.manual_seed(1)
    for _ in range(25):
        loss, _ = model.training_loss(a, b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = loss_at_fixed_noise()
    kind = (
        "ddpm"
        if stage in ("denoiser", "diffusion")
        else "recon"
        if name == "ehdran" or stage == "autoencoder"
        else "fusion"
    )
    print(f"overfit {name}/{stage}: {before:.4f} -> {after:.4f} ({after / before:.2f})")
    assert after < OVERFIT_FACTOR[kind] * before, f"{name}/{stage}: loss {before:.4f} -> {after:.4f}"


@pytest.mark.parametrize("name", ["dmfnet", "lagn", "mrscfusion"])
def test_stages_freeze_the_other_part(name: str) -> None:
    model = _small(name)
    counts = {}
    for stage in model.training_stages:
        model.set_stage(stage)
        counts[stage] = {n for n, p in model.named_parameters() if p.requires_grad}
    first, second = (counts[s] for s in model.training_stages)
    assert first and second and not first & second
    assert first | second == {n for n, _ in model.named_parameters()}
    with pytest.raises(ValueError, match="unknown stage"):
        model.set_stage("nope")


def test_full_and_small_factories_differ_in_size() -> None:
    full = sum(p.numel() for p in create_model("swinfusion").parameters())
    small = sum(p.numel() for p in create_model("swinfusion_small").parameters())
    assert full > 10 * small
    assert create_model("mambadfuse_small", dim=16).cfg.dim == 16  # overrides reach the config


@pytest.mark.parametrize("rule", FUSION_RULES)
def test_ehdran_fusion_rules(rule: str) -> None:
    model = create_model("ehdran_small", fusion_rule=rule).eval()
    a, b = _pair()
    with torch.no_grad():
        f = model(a, b)
    assert f.shape == a.shape and 0 <= float(f.min()) and float(f.max()) <= 1
    fa, fb = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    out = fuse_features(fa, fb, rule)
    if rule == "average":
        assert torch.allclose(out, (fa + fb) / 2)
    if rule == "max":
        assert torch.equal(out, torch.maximum(fa, fb))
    if rule == "nuclear":
        wa, wb = nuclear_weights(fa, fb)
        assert torch.allclose(wa + wb, torch.ones_like(wa))
        assert torch.allclose(fuse_features(fa, fa, rule), fa, atol=1e-6)  # equal inputs: weights 1/2
    with pytest.raises(ValueError, match="fusion rule"):
        create_model("ehdran_small", fusion_rule="median")


def test_ehdran_nuclear_weight_favours_richer_features() -> None:
    flat = torch.zeros(1, 4, 16, 16)
    rich = torch.randn(1, 4, 16, 16) * 3
    wa, wb = nuclear_weights(rich, flat)
    # softmax of constant features is uniform (rank 1, small nuclear norm); random features spread it
    assert (wa > wb).all()


def test_window_attention_matches_written_out_reference() -> None:
    torch.manual_seed(0)
    attn = WindowAttention(dim=8, heads=2, window=4)
    with torch.no_grad():
        attn.bias_table.normal_()
    x, ctx = torch.randn(12, 16, 8), torch.randn(12, 16, 8)
    mask = shift_mask(8, 12, 4, 2, x.device)  # 2x3 windows -> nW = 6; two images
    q = attn.q(x).view(12, 16, 2, 4).transpose(1, 2)
    k, v = attn.kv(ctx).view(12, 16, 2, 2, 4).permute(2, 0, 3, 1, 4)
    for m in (mask, None):
        ref = window_attention_ref(q, k, v, attn.full_bias(12, m))
        ref = attn.proj(ref.transpose(1, 2).reshape(12, 16, 8))
        assert torch.allclose(attn(x, ctx, m), ref, atol=1e-5)


def test_window_partition_round_trip_and_shift_mask() -> None:
    x = torch.randn(2, 8, 12, 5)
    assert torch.equal(window_reverse(window_partition(x, 4), 4, 8, 12), x)
    mask = shift_mask(8, 8, 4, 2, torch.device("cpu"))
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window is not split by the shift
    assert torch.isinf(mask[-1]).any() and (mask.diagonal(dim1=1, dim2=2) == 0).all()


def test_shifted_swin_layer_is_translation_equivariant_by_whole_windows() -> None:
    torch.manual_seed(0)
    layer = SwinLayer(8, 2, 4, shift=True).eval()
    x = torch.randn(1, 8, 16, 16)
    with torch.no_grad():
        y = layer(x)
        y_rolled = layer(torch.roll(x, (4, 4), dims=(2, 3)))
    # a cyclic roll by a whole window keeps every shifted window's content, so the output rolls
    # along, except in windows that straddle the wrap-around border (masked by absolute position):
    # rows/cols 6..11 of the rolled output come from 2..7 of the original, both unmasked
    rolled_back = torch.roll(y, (4, 4), dims=(2, 3))
    assert torch.allclose(rolled_back[..., 6:12, 6:12], y_rolled[..., 6:12, 6:12], atol=1e-5)
    assert not torch.allclose(rolled_back, y_rolled, atol=1e-5)  # the border windows do differ


def test_ddpm_schedule_and_unet_features() -> None:
    sched = GaussianDiffusion(1000)
    x0, noise = torch.rand(3, 1, 8, 8) * 2 - 1, torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 500, 999])
    xt = sched.q_sample(x0, t, noise)
    assert torch.allclose(sched.predict_x0(xt, t, noise), x0, atol=1e-3)
    assert float(sched.sqrt_abar[0]) > 0.99 and float(sched.sqrt_abar[-1]) < 0.01
    unet = DiffusionUNet(2, base=8, mults=(1, 2, 4))
    eps, feats = unet(torch.randn(2, 2, 20, 12), torch.tensor([3, 7]), return_features=True)
    assert eps.shape == (2, 2, 20, 12)
    assert [f.shape[1] for f in feats] == unet.feature_channels == [32, 16, 8]
    assert feats[-1].shape[-2:] == (20, 12) and feats[0].shape[-2:] == (5, 3)


def test_peers_are_registered_fusion_methods() -> None:
    from neurofuse.fusion import list_methods

    names = {m.name: m for m in list_methods()}
    for peer in PEERS:
        assert peer in names, f"{peer} is not a registered fusion method"
        assert names[peer].kind == "learned" and names[peer].spatial_dims == (2,)


@pytest.mark.parametrize("name", PEERS)
def test_fuse_runs_the_registered_method_from_a_weights_file(name: str, tmp_path) -> None:
    from safetensors.torch import save_file

    from neurofuse.fusion import fuse

    model = _small(name).eval()
    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    a, b = (t[0, 0].numpy() for t in _pair((36, 28)))
    out = fuse(a, b, name, weights=str(path))
    with torch.no_grad():
        expected = model(torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None])[0, 0].numpy()
    assert out.shape == a.shape and out.dtype == np.float32
    assert np.allclose(out, expected, atol=1e-5)
