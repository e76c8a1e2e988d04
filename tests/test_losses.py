"""ClinicalFMamba losses and the torch SSIM: zero terms, symmetry in A/B, gradients, known values."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from neurofuse.losses import fusion_loss, sobel, sobel_magnitude, ssim


def _img(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


SHAPES = {2: (2, 1, 24, 20), 3: (1, 1, 14, 12, 13)}


@pytest.mark.parametrize("nd", [2, 3])
def test_ssim_identity_and_range(nd):
    x, y = _img(SHAPES[nd], 0), _img(SHAPES[nd], 1)
    assert float(ssim(x, x, nd)) == pytest.approx(1.0, abs=1e-5)
    s = ssim(x, y, nd, reduction="none")
    assert s.shape == (x.shape[0],) and torch.all(s < 0.5)
    torch.testing.assert_close(ssim(x, y, nd), ssim(y, x, nd))


def test_ssim_matches_skimage():
    skm = pytest.importorskip("skimage.metrics")
    x, y = _img((1, 1, 32, 32), 0), _img((1, 1, 32, 32), 1)
    y = 0.6 * x + 0.4 * y
    ref = skm.structural_similarity(
        x[0, 0].double().numpy(),
        y[0, 0].double().numpy(),
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        full=True,
    )[1][5:-5, 5:-5].mean()
    assert float(ssim(x, y, 2)) == pytest.approx(float(ref), abs=1e-4)


@pytest.mark.parametrize("nd", [2, 3])
def test_all_terms_zero_when_sources_and_fused_agree(nd):
    x = _img(SHAPES[nd], 0)
    loss, terms = fusion_loss(x, x, x, nd)
    assert float(loss) == pytest.approx(0.0, abs=1e-4)
    assert all(v == pytest.approx(0.0, abs=1e-5) for v in terms.values())


def test_gradient_term_zero_for_constant_images_2d():
    c = torch.full((1, 1, 16, 16), 0.3)
    assert float(sobel_magnitude(c).abs().max()) == 0.0
    _, terms = fusion_loss(torch.full_like(c, 0.7), c, torch.full_like(c, 0.7), 2, norm="l2")
    assert terms["gradient"] == 0.0 and terms["intensity"] == pytest.approx(0.0, abs=1e-7)
    assert terms["ssim"] > 0  # F differs from A


def test_sobel_signed_response():
    ramp = torch.arange(10.0).view(1, 1, 1, 10).expand(1, 1, 10, 10).contiguous()
    gx, gy = sobel(ramp, 1, 0), sobel(ramp, 0, 1)
    assert float(gx[0, 0, 5, 5]) == 8.0  # (1 + 2 + 1) * (x+1 - (x-1))
    assert float(gy.abs().max()) == 0.0


@pytest.mark.parametrize("nd,norm", [(2, "l1"), (2, "l2"), (3, "l1")])
def test_symmetric_in_a_b_and_gradient_flows(nd, norm):
    a, b = _img(SHAPES[nd], 0), _img(SHAPES[nd], 1)
    f = _img(SHAPES[nd], 2).requires_grad_()
    l_ab, t_ab = fusion_loss(f, a, b, nd, norm=norm)
    l_ba, t_ba = fusion_loss(f, b, a, nd, norm=norm)
    assert l_ab.item() == pytest.approx(l_ba.item(), rel=1e-6)
    assert t_ab == pytest.approx(t_ba, rel=1e-6)
    l_ab.backward()
    assert f.grad is not None and torch.isfinite(f.grad).all() and float(f.grad.abs().sum()) > 0


def test_weights_2d_and_3d():
    for nd, w in ((2, (2, 10, 5)), (3, (2, 10, 1))):
        a, b, f = (_img(SHAPES[nd], s) for s in range(3))
        loss, t = fusion_loss(f, a, b, nd)
        expect = w[0] * t["intensity"] + w[1] * t["gradient"] + w[2] * t["ssim"]
        assert float(loss) == pytest.approx(expect, rel=1e-5)


def test_l1_and_l2_differ():
    a, b, f = (_img(SHAPES[2], s) for s in range(3))
    assert fusion_loss(f, a, b, 2, norm="l1")[1]["gradient"] != fusion_loss(f, a, b, 2, norm="l2")[1]["gradient"]
    with pytest.raises(ValueError):
        fusion_loss(f, a, b, 2, norm="l3")


def test_3d_gradient_target_max_abs_follows_the_stronger_edge():
    """f = a, b = a / 2: a's responses are the stronger everywhere, so the max-abs target is a's and the
    gradient term is 0; the release's signed max takes b's weaker response wherever a's is negative."""
    a = _img(SHAPES[3], 0)
    b = a / 2
    assert fusion_loss(a, a, b, 3, gradient_target="max_abs")[1]["gradient"] == 0.0
    assert fusion_loss(a, a, b, 3)[1]["gradient"] > 1e-4
    with pytest.raises(ValueError, match="gradient_target"):
        fusion_loss(a, a, b, 3, gradient_target="min")
    with pytest.raises(ValueError, match="3D loss only"):
        fusion_loss(a[..., 0], a[..., 0], b[..., 0], 2, gradient_target="max_abs")


def test_loss_is_float32_exact_under_bf16_autocast():
    """SSIM's variance terms cancel in bf16; the loss must not change inside an autocast region."""
    from neurofuse.losses import fusion_loss_2d

    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 1, 64, 64, generator=g), torch.rand(2, 1, 64, 64, generator=g)
    f = 0.5 * (a + b)
    ref, _ = fusion_loss_2d(f, a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp, _ = fusion_loss_2d(f, a, b)
    assert torch.isfinite(amp) and abs(float(amp) - float(ref)) < 1e-5


@pytest.mark.parametrize("nd", [2, 3])
def test_loss_weights_replace_the_release_weights(nd):
    g = torch.Generator().manual_seed(0)
    shape = (1, 1, *([12] * nd))
    f, a, b = (torch.rand(shape, generator=g) for _ in range(3))
    release, terms = fusion_loss(f, a, b, nd)
    w_ssim = 5.0 if nd == 2 else 1.0
    assert release.item() == pytest.approx(2.0 * terms["intensity"] + 10.0 * terms["gradient"] + w_ssim * terms["ssim"])
    loss, same = fusion_loss(f, a, b, nd, weights=(0.5, 0.0, 3.0))
    assert same == pytest.approx(terms)
    assert loss.item() == pytest.approx(0.5 * terms["intensity"] + 3.0 * terms["ssim"])
    with pytest.raises(ValueError, match="three non-negative"):
        fusion_loss(f, a, b, nd, weights=(1.0, -1.0, 1.0))


def test_model_trains_with_its_configured_loss_weights():
    from neurofuse.models import create_model

    a, b = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    torch.manual_seed(0)
    plain = create_model("clinicalfmamba_2d_tiny")
    torch.manual_seed(0)
    ssim_only = create_model("clinicalfmamba_2d_tiny", loss_weights=(0.0, 0.0, 1.0))
    loss, terms = ssim_only.training_loss(a, b)
    assert loss.item() == pytest.approx(terms["ssim"], rel=1e-5)
    assert plain.training_loss(a, b)[1] == pytest.approx(terms, rel=1e-5)


def test_3d_model_trains_with_its_configured_gradient_target():
    from neurofuse.models import create_model

    g = torch.Generator().manual_seed(3)
    a, b = torch.rand(1, 1, 16, 16, 16, generator=g), torch.rand(1, 1, 16, 16, 16, generator=g)
    torch.manual_seed(0)
    model = create_model("clinicalfmamba_3d_tiny", loss_gradient_target="max_abs", loss_similarity="ms_ssim")
    _, terms = model.training_loss(a, b)
    with torch.no_grad():
        f = model(a, b)
    assert terms == pytest.approx(fusion_loss(f, a, b, 3, gradient_target="max_abs", similarity="ms_ssim")[1], rel=1e-5)
    assert terms["gradient"] != pytest.approx(fusion_loss(f, a, b, 3)[1]["gradient"], rel=1e-3)


@pytest.mark.parametrize("shape", [(1, 1, 70, 53), (1, 1, 45, 50, 47), (1, 1, 64, 64, 64)])
def test_ms_ssim_equals_the_metric_and_has_gradients(shape):
    """The loss's differentiable MS-SSIM is the metrics' MS_SSIM (numpy, float64) on the same pair,
    odd sides (zero-padded pooling) and 3 or 4 scales included; its gradient is finite."""
    from neurofuse.losses import _MS_SSIM_WEIGHTS, ms_ssim
    from neurofuse.metrics.structural import MS_SSIM_WEIGHTS, ms_ssim_pair

    assert _MS_SSIM_WEIGHTS == MS_SSIM_WEIGHTS

    g = torch.Generator().manual_seed(4)
    nd = len(shape) - 2
    pool = {2: F.avg_pool2d, 3: F.avg_pool3d}[nd]
    a = pool(torch.rand(shape, generator=g), 3, 1, 1)
    b = (0.8 * a + 0.2 * torch.rand(shape, generator=g)).requires_grad_()
    value = ms_ssim(a, b, nd)
    assert value.item() == pytest.approx(ms_ssim_pair(a[0, 0].numpy(), b[0, 0].detach().numpy(), 1.0), abs=1e-5)
    value.backward()
    assert torch.isfinite(b.grad).all() and float(b.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="every side >= 11"):
        ms_ssim(a[..., :10], b[..., :10], nd)


@pytest.mark.parametrize("nd", [2, 3])
def test_similarity_ms_ssim_replaces_the_structure_term(nd):
    from neurofuse.losses import ms_ssim

    g = torch.Generator().manual_seed(5)
    shape = (1, 1, *([24] * nd))
    f, a, b = (torch.rand(shape, generator=g) for _ in range(3))
    _, release = fusion_loss(f, a, b, nd)
    _, multi = fusion_loss(f, a, b, nd, similarity="ms_ssim")
    assert multi["ssim"] == pytest.approx(float(1 - (ms_ssim(a, f, nd) + ms_ssim(b, f, nd)) / 2), rel=1e-6)
    assert multi["ssim"] != pytest.approx(release["ssim"], rel=1e-3)
    assert {k: multi[k] for k in ("intensity", "gradient")} == pytest.approx(
        {k: release[k] for k in ("intensity", "gradient")})
    with pytest.raises(ValueError, match="similarity"):
        fusion_loss(f, a, b, nd, similarity="psnr")


def test_mean_base_intensity_term_wants_the_sources_mean_below_the_detail_scale():
    """"mean_base" is 0 for F = (A + B) / 2 and for F = that mean plus detail the Gaussian removes
    (a checkerboard, near zero after the low-pass), but not for F = max(A, B); the release's "max" is the
    plain L1 to max(A, B)."""
    from neurofuse.losses import intensity_term, low_pass

    g = torch.Generator().manual_seed(6)
    a, b = (F.avg_pool3d(torch.rand(1, 1, 16, 16, 16, generator=g), 5, 1, 2) for _ in range(2))
    mean = (a + b) / 2
    idx = torch.arange(16)
    checker = 0.05 * (-1.0) ** (idx[:, None, None] + idx[None, :, None] + idx[None, None, :]).float()
    assert float(intensity_term(mean, a, b, "mean_base")) == 0.0
    assert float(low_pass(checker[None, None])[..., 3:-3, 3:-3, 3:-3].abs().max()) < 0.001  # borders: replicate
    assert float(intensity_term(mean + checker, a, b, "mean_base")) < 0.002
    assert float(intensity_term(torch.maximum(a, b), a, b, "mean_base")) > 0.01
    assert float(intensity_term(a, a, b)) == pytest.approx(float((a - torch.maximum(a, b)).abs().mean()))
    with pytest.raises(ValueError, match="intensity_target"):
        intensity_term(a, a, b, "min")


@pytest.mark.parametrize("shape", [(2, 5, 23, 17), (1, 3, 14, 19, 12)])
@pytest.mark.parametrize("padding", ["valid", "replicate"])
def test_banded_separable_filter_equals_the_convolutions(shape, padding):
    """The matmul path of `_separable` against one 1-channel convolution per axis: values and input gradients,
    with a skipped axis, an asymmetric kernel and a bf16 input (both compute in float32)."""
    from neurofuse.losses import _gauss1d, _separable, _separable_ref

    g = torch.Generator().manual_seed(3)
    nd = len(shape) - 2
    ks = [_gauss1d(7, 1.2, "cpu", torch.float32), None, torch.rand(4, generator=g)][:nd]
    x = torch.rand(shape, generator=g, requires_grad=True)
    w = torch.rand(_separable_ref(x, ks, padding).shape, generator=g)
    fast, ref = _separable(x, ks, padding), _separable_ref(x, ks, padding)
    torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-6)
    (gf,) = torch.autograd.grad((fast * w).sum(), x)
    (gr,) = torch.autograd.grad((ref * w).sum(), x)
    torch.testing.assert_close(gf, gr, rtol=1e-6, atol=1e-6)
    half = x.detach().bfloat16()
    assert _separable(half, ks, padding).dtype == torch.float32
    torch.testing.assert_close(_separable(half, ks, padding), _separable_ref(half, ks, padding), rtol=1e-6, atol=1e-6)


def test_fusion_loss_takes_the_mean_base_intensity_target_in_2d_too():
    """The 2D loss routes `intensity_target` to the same n-D term: F = (A + B) / 2 has zero intensity loss
    under "mean_base" and a positive one under the release's "max"."""
    g = torch.Generator().manual_seed(7)
    a, b = (F.avg_pool2d(torch.rand(2, 1, 32, 32, generator=g), 5, 1, 2) for _ in range(2))
    mean = (a + b) / 2
    assert fusion_loss(mean, a, b, 2, intensity_target="mean_base")[1]["intensity"] == 0.0
    assert fusion_loss(mean, a, b, 2)[1]["intensity"] > 0.01
