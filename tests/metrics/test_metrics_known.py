"""Metrics against answers derived by hand: identical images, constants, shifts, symmetry."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neurofuse.errors import InputError, UsageError
from neurofuse.metrics import METRICS, compute_metrics
from neurofuse.metrics.fmi import fmi_fast, fmi_ref
from neurofuse.metrics.presets import ALL_2D, ALL_3D

RNG = np.random.default_rng(0)


def _img(shape=(64, 64), seed=0) -> np.ndarray:
    """Smooth random 8-bit-like image on 0-255 (blobs), so every metric sees edges and texture."""
    from scipy import ndimage

    r = np.random.default_rng(seed).random(shape)
    x = ndimage.gaussian_filter(r, 2.0)
    return np.round((x - x.min()) / (x.max() - x.min()) * 255.0)


def m(name, a, b, f, **kw) -> float:
    return METRICS[name].fn(a, b, f, **kw)


def test_entropy_hand_values():
    half = np.zeros((8, 8))
    half[:, 4:] = 255
    assert m("EN", half, half, half) == pytest.approx(1.0)
    four = np.repeat([0.0, 10.0, 20.0, 30.0], 16).reshape(8, 8)
    assert m("EN", four, four, four) == pytest.approx(2.0)
    assert m("EN", four, four, four, unit="nats") == pytest.approx(2 * math.log(2))
    assert m("EN_unique", four / 255, four, four / 255) == pytest.approx(2.0)
    assert m("EN", np.full((8, 8), 7.0), half, np.full((8, 8), 7.0)) == 0.0


def test_mi_nmi_identical_and_independent():
    half = np.zeros((8, 8))
    half[:, 4:] = 255
    assert m("MI", half, half, half) == pytest.approx(2.0)  # 1 bit per source, summed
    assert m("MI", half, half, half, how="mean") == pytest.approx(1.0)
    assert m("NMI", half, half, half) == pytest.approx(2.0)
    other = half.T.copy()  # independent of `half`: each quadrant holds 1/4 of the pixels
    assert m("MI", other, other, half) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InputError):
        m("NMI", np.zeros((8, 8)), np.zeros((8, 8)), np.zeros((8, 8)))


def test_statistics_hand_values():
    f = np.zeros((8, 8))
    f[:, 4:] = 2.0
    assert m("SD", f, f, f) == pytest.approx(1.0)
    stripes = np.tile([0.0, 1.0], (8, 4))  # horizontal differences are +-1, vertical 0
    assert m("SF", f, f, stripes) == pytest.approx(1.0)
    ramp = np.tile(np.arange(16.0), (16, 1))  # d/dx = 1, d/dy = 0
    assert m("AG", ramp, ramp, ramp) == pytest.approx(math.sqrt(0.5))
    a = _img()
    assert m("CC", a, -a, 2 * a + 3) == pytest.approx(0.0, abs=1e-12)
    assert m("CC", a, a, 2 * a + 3) == pytest.approx(1.0)
    b = _img(seed=1)
    assert m("SCD", a, b, a + b) == pytest.approx(2.0)
    with pytest.raises(InputError):
        m("CC", np.ones((8, 8)), a[:8, :8], a[:8, :8])
    with pytest.raises(InputError):  # F = A leaves F - A constant: SCD's second correlation is undefined
        m("SCD", a, b, a)


def test_psnr_conventions():
    a = _img()
    b = a - 2.0
    f = a + 1.0  # MSE to A = 1, to B = 9
    assert m("PSNR", a, b, f) == pytest.approx(10 * math.log10(255**2 / 5.0))
    assert m("PSNR", a, b, f, mode="psnr_mean") == pytest.approx(
        0.5 * (10 * math.log10(255**2) + 10 * math.log10(255**2 / 9.0))
    )
    assert m("PSNR", a, a, a) == math.inf
    with pytest.raises(UsageError):
        m("PSNR", a, b, f, mode="max")


def test_ssim_constants_closed_form():
    c1 = (0.01 * 255) ** 2
    x, y = np.full((32, 32), 100.0), np.full((32, 32), 50.0)
    expected = (2 * 100 * 50 + c1) / (100**2 + 50**2 + c1)  # variances 0: contrast term is c2/c2
    assert m("SSIM", x, x, y, how="mean") == pytest.approx(expected)
    assert m("SSIM", x, x, y) == pytest.approx(2 * expected)
    a = _img(seed=3)
    assert m("SSIM", a, a, a) == pytest.approx(2.0)
    assert m("MS_SSIM", a, a, a) == pytest.approx(1.0)
    vol = _img((24, 24, 24), seed=4)
    assert m("SSIM", vol, vol, vol, how="mean") == pytest.approx(1.0)


def test_qabf_nabf_closed_form():
    a = _img()
    # identical images: equal strengths give the strength value itself as the ratio (as every toolbox
    # writes it); on 0-255 noise every strength is >> 1, so Qg is its ceiling 0.9994
    q_same = 0.9994 * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert m("Qabf", a, a, a) == pytest.approx(q_same, rel=1e-9)
    assert m("Nabf", a, a, a) == 0.0 and m("Nabf_kumar", a, a, a) == 0.0
    # F = 2A: every edge keeps its orientation at half the strength ratio, and F's edges exceed both
    q_half = 0.9994 / (1 + math.exp(0.0)) * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert m("Qabf", a, a, 2 * a) == pytest.approx(q_half)
    # Petrovic 2005 (Kumar's code): Q = sqrt(Qg Qa) with Qg(1/2) = 0.9999/2, Qa(aligned) = 0.9995/(1+e^-11)
    q05 = math.sqrt(0.9999 / 2 * 0.9995 / (1 + math.exp(-11.0)))
    assert m("Nabf", a, a, 2 * a) == pytest.approx(2 * (1 - q05), rel=1e-6)
    assert m("Nabf_kumar", a, a, 2 * a) == pytest.approx(1 - q05, rel=1e-6)
    # as Tang's toolbox runs it the first source is taken as the fused image
    assert m("Nabf_tang_asrun", 2 * a, a, a) == pytest.approx(1 - q05, rel=1e-6)
    with pytest.raises(InputError):
        m("Qabf", np.zeros((16, 16)), np.zeros((16, 16)), a[:16, :16])  # zero padding: 0 has no edges


def test_identity_values_of_remaining_metrics():
    a = _img()
    assert m("VIF", a, a, a) == pytest.approx(2.0, abs=1e-6)
    assert m("VIFF", a, a, a) == pytest.approx(1.0, abs=1e-6)
    assert m("FSIM", a, a, a) == pytest.approx(1.0)
    assert m("FMI", a, a, a) == 1.0
    assert m("Qcb", a, a, a) == pytest.approx(1.0)
    assert m("Qcv", a, a, a) == pytest.approx(0.0, abs=1e-9)
    const = np.zeros((64, 64))
    for name in ("VIF", "Qcv"):  # undefined when the sources carry no signal
        with pytest.raises(InputError):
            m(name, const, const, a)
    with pytest.raises(InputError):  # FSIM needs phase congruency in a source or in F
        m("FSIM", const, const, const)


@pytest.mark.parametrize("feature", ["pixel", "edge", "gradient", "dct"])
def test_fmi_fast_matches_reference(feature):
    a, b = _img((14, 14), seed=5), _img((14, 14), seed=6)
    f = np.round(0.5 * (a + b))
    fast, ref = fmi_fast(a, b, f, feature), fmi_ref(a, b, f, feature)
    assert fast == pytest.approx(ref, abs=1e-12)
    assert 0.0 <= fast <= 1.0


def test_fmi_wavelet_feature():
    from neurofuse.metrics.fmi import extract_feature

    a = _img((16, 16), seed=9)
    feat = extract_feature(a, "wavelet")  # dmey (62 taps): 4 subbands of (16 + 61) // 2 = 38 coefficients
    assert feat.shape == (76, 76) and feat.min() == 0.0 and feat.max() == 1.0
    assert fmi_fast(a, a, a, "wavelet") == 1.0


def test_fmi_window_option_and_errors():
    a, b = _img((20, 20), seed=7), _img((20, 20), seed=8)
    f = np.round(0.5 * (a + b))
    assert fmi_fast(a, b, f, "pixel", 5) == pytest.approx(fmi_ref(a, b, f, "pixel", 5), abs=1e-12)
    with pytest.raises(UsageError):
        fmi_fast(a, b, f, "pixel", 4)
    with pytest.raises(UsageError):
        fmi_fast(a, b, f, "colour")


SYMMETRIC = ["PSNR", "SSIM", "FMI", "FSIM", "MI", "NMI", "Qabf", "Nabf", "VIF", "SCD", "CC", "MS_SSIM", "Qcb", "Qcv"]


@pytest.mark.parametrize("name", SYMMETRIC)
def test_symmetric_in_sources(name):
    a, b = _img((64, 64), seed=10), _img((64, 64), seed=11)
    f = np.round(0.6 * a + 0.4 * b)
    assert m(name, a, b, f) == pytest.approx(m(name, b, a, f), rel=1e-9, abs=1e-12)


def test_pixel_permutation_invariance_of_histogram_metrics():
    a, b = _img(seed=12), _img(seed=13)
    f = np.round(0.5 * (a + b))
    perm = np.random.default_rng(1).permutation(a.size)
    pa, pb, pf = (x.ravel()[perm].reshape(x.shape) for x in (a, b, f))
    for name in ("EN", "MI", "NMI", "CC", "SD"):
        assert m(name, pa, pb, pf) == pytest.approx(m(name, a, b, f))


def test_compute_metrics_presets_and_dims():
    a, b = _img(seed=14) / 255, _img(seed=15) / 255
    f = 0.5 * (a + b)
    std = compute_metrics(a, b, f)
    assert list(std) == [n for n in ALL_2D if n != "EN_unique"]
    cf = compute_metrics(a, b, f, preset="clinicalfmamba")
    assert list(cf) == ["PSNR", "SSIM", "FMI", "FSIM", "EN", "EN_unique"]
    q = [np.round(x * 255) / 255 for x in (a, b, f)]
    assert std["SSIM"] == pytest.approx(2 * compute_metrics(*q, ["SSIM"], "clinicalfmamba")["SSIM"])
    vol = np.stack([a[:32, :32]] * 32, axis=2)
    vb = np.stack([b[:32, :32]] * 32, axis=2)
    vf = 0.5 * (vol + vb)
    r3 = compute_metrics(vol, vb, vf)
    assert list(r3) == [n for n in ALL_3D if n != "EN_unique"]
    with pytest.raises(UsageError):
        compute_metrics(vol, vb, vf, ["Qabf"])
    per_slice = compute_metrics(vol, vb, vf, ["Qabf"], slicewise="axial")["Qabf"]
    assert per_slice == pytest.approx(compute_metrics(a[:32, :32], b[:32, :32], f[:32, :32], ["Qabf"])["Qabf"])
    with pytest.raises(InputError):
        compute_metrics(a * 2, b, f)
    with pytest.raises(UsageError):
        compute_metrics(a, b, f, ["NOPE"])


def test_per_slice_computes_a_3d_metric_over_the_slices_with_signal():
    """`per_slice`: SSIM (which has a 3D form) as the mean over the axial slices holding signal, as 2D
    tables report it; empty slices (background) are left out, 2D input ignores it, 3D needs `slicewise`."""
    slices = [(_img((32, 32), seed=s) / 255, _img((32, 32), seed=s + 1) / 255) for s in (20, 22)]
    empty = [np.zeros((32, 32))] * 6  # deep enough for the 11-voxel window of 3D SSIM
    va = np.stack([*empty, slices[0][0], slices[1][0], *empty], axis=2)
    vb = np.stack([*empty, slices[0][1], slices[1][1], *empty], axis=2)
    vf = 0.5 * (va + vb)
    for preset in ("standard", "clinicalfmamba"):
        got = compute_metrics(va, vb, vf, ["SSIM", "Qabf"], preset, slicewise="axial", per_slice=("SSIM",))
        want = [compute_metrics(x, y, 0.5 * (x + y), ["SSIM", "Qabf"], preset) for x, y in slices]
        for name in ("SSIM", "Qabf"):
            assert got[name] == pytest.approx(np.mean([w[name] for w in want]), rel=1e-12)
        whole = compute_metrics(va, vb, vf, ["SSIM"], preset, slicewise="axial")["SSIM"]
        assert np.isfinite(whole) and whole != pytest.approx(got["SSIM"])  # without per_slice: 3D SSIM
    x, y = slices[0]
    assert compute_metrics(x, y, x, ["SSIM"], per_slice=("SSIM",)) == compute_metrics(x, y, x, ["SSIM"])
    with pytest.raises(UsageError, match="needs slicewise"):
        compute_metrics(va, vb, vf, ["SSIM"], per_slice=("SSIM",))
