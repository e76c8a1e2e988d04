"""Our metrics against maintained libraries, on triplets the test generates (always) and on real Harvard
SPECT-MRI triplets (average fusion) where ../shared/data is present.

MS-SSIM conventions: ours (`ms_ssim_pair`) is pytorch-msssim's (valid Gaussian window 11, sigma 1.5,
population moments, 2x average pooling that zero-pads an odd side, cs and SSIM clipped at 0, Wang's five
weights) in 2D and 3D, computed in float64. MONAI's `compute_ms_ssim` has the same moments and weights but
pools odd sides by dropping the last row (no padding), so it agrees where every scale's sides are even.
We keep ours: both libraries compute in float32 and import torch (our metrics do not), pytorch-msssim needs
the last two sides > 160 (no MS-SSIM of a 160^3 BraTS box), MONAI's size check for fewer scales is off (it
divides by (scales - 1)^2, not 2^(scales - 1)), ours takes fewer scales with renormalised weights where the
image is too small for five (tested here against both libraries given those weights), and it is faster on
a CPU (48x176x176, 3 scales, on this shared 2-core machine: ours 0.5 s, pytorch-msssim 2.3 s, MONAI 3.6 s).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from neurofuse.metrics import METRICS
from neurofuse.metrics.information import mutual_information
from neurofuse.metrics.structural import MS_SSIM_WEIGHTS, ms_ssim_pair, ssim_terms
from neurofuse.metrics.vif import vif_pair

HARVARD = Path(__file__).resolve().parents[2] / "../shared/data/harvard/SPECT-MRI"
NAMES = ["11005.png", "21010.png"]


def generated_pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """An MRI-like and a SPECT-like 8-bit image (0-255 as float64) of one generated 'head': a textured
    ellipse with sharp edges and ventricles, and smooth blobs of uptake inside it."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij"))
    r = np.sqrt(sum((g[i] / (0.85 - 0.1 * i)) ** 2 for i in range(len(shape))))
    head = r < 1
    tex = ndimage.gaussian_filter(rng.standard_normal(shape), 1.5)
    mri = head * (120 + 60 * np.sin(9 * g[0]) * np.cos(7 * g[-1]) + 400 * tex) * (np.abs(g[-1]) > 0.12)
    spect = sum(ndimage.gaussian_filter((rng.random(shape) > 0.999) * 1.0, 6) for _ in range(3)) * head
    spect = 230 * spect / spect.max() + 15 * head
    return tuple(np.clip(np.round(x), 0, 255) for x in (mri, spect))


def _harvard():
    if not (HARVARD / "MRI").is_dir():
        return []
    from PIL import Image

    out = []
    for name in NAMES:
        if not (HARVARD / "MRI" / name).exists():
            name = sorted((HARVARD / "MRI").iterdir())[len(out)].name
        a = np.asarray(Image.open(HARVARD / "MRI" / name).convert("L"), dtype=np.float64)
        b = np.asarray(Image.open(HARVARD / "SPECT" / name).convert("YCbCr"), dtype=np.float64)[..., 0]
        out.append((a, b))
    return out


@pytest.fixture(scope="module")
def triplets():
    """(A, B, F) with F the 8-bit average fusion: two generated 256x256 pairs, then the real ones if present."""
    pairs = [generated_pair((256, 256), seed) for seed in (0, 1)] + _harvard()
    return [(a, b, np.round(0.5 * (a + b))) for a, b in pairs]


def test_generated_pairs_are_images_not_noise(triplets):
    for a, b, _ in triplets[:2]:
        assert a.min() == 0 and a.max() > 200 and b.max() > 200 and len(np.unique(a)) > 100
        assert 0.1 < np.corrcoef(a.ravel(), b.ravel())[0, 1] < 0.9  # related, not the same


def test_ssim_matches_skimage(triplets):
    from skimage.metrics import structural_similarity

    for a, b, f in triplets:
        for src in (a, b):
            ref = structural_similarity(src, f, data_range=255, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False)
            assert ssim_terms(src, f, 255.0)[0] == pytest.approx(ref, abs=1e-7)


def test_psnr_matches_skimage(triplets):
    from skimage.metrics import peak_signal_noise_ratio

    for a, b, f in triplets:
        ref = 0.5 * sum(peak_signal_noise_ratio(s / 255, f / 255, data_range=1.0) for s in (a, b))
        ours = METRICS["PSNR"].fn(a / 255, b / 255, f / 255, data_range=1.0, mode="psnr_mean")
        assert ours == pytest.approx(ref, abs=1e-9)


def test_mi_matches_skimage_nmi(triplets):
    """skimage's NMI Y = (H(A)+H(F))/H(A,F); with one bin per gray level, MI/(H(A)+H(F)) = 1 - 1/Y."""
    from skimage.metrics import normalized_mutual_information

    for a, _, f in triplets:
        y = normalized_mutual_information(a, f, bins=256)
        mi, ha, hf = mutual_information(a, f)
        assert mi / (ha + hf) == pytest.approx(1 - 1 / y, abs=1e-10)


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x)[None, None]


def test_ms_ssim_2d_matches_pytorch_msssim_and_monai(triplets):
    """256x256 (even at every scale): ours = pytorch-msssim = MONAI within their float32 error (the Gaussian
    window sums to 1 +- 1e-7 in float32; on 0-255 data that moves E[x^2] - mu^2 by ~1e-7 x 255^2, MS-SSIM
    by ~2e-5)."""
    import pytorch_msssim
    from monai.metrics.regression import compute_ms_ssim

    for a, b, f in triplets[:3]:
        for src in (a, b):
            ours = ms_ssim_pair(src, f, 255.0)
            assert ours == pytest.approx(float(pytorch_msssim.ms_ssim(_t(src), _t(f), data_range=255)), abs=1e-4)
            monai = compute_ms_ssim(_t(f), _t(src), spatial_dims=2, data_range=255.0)
            assert ours == pytest.approx(float(monai), abs=1e-4)


def test_ms_ssim_2d_odd_sides_pool_as_pytorch_msssim_not_monai():
    """201x187: odd sides at several scales. pytorch-msssim zero-pads them before pooling, as ours does;
    MONAI drops the last row/column, which gives another value."""
    import pytorch_msssim
    from monai.metrics.regression import compute_ms_ssim

    a, b = generated_pair((201, 187), seed=2)
    f = np.round(0.5 * (a + b))
    ours = ms_ssim_pair(a, f, 255.0)
    assert ours == pytest.approx(float(pytorch_msssim.ms_ssim(_t(a), _t(f), data_range=255)), abs=1e-4)
    monai = float(compute_ms_ssim(_t(f), _t(a), spatial_dims=2, data_range=255.0))
    assert abs(monai - ours) > 1e-3


def test_ms_ssim_3d_matches_pytorch_msssim_and_monai():
    """Volumes too thin for five scales (48 / 8 < 11): ours takes three, with Wang's first three weights
    renormalised; both libraries, given those weights, agree (pytorch-msssim on 48x168x168, its last two sides
    > 160; MONAI on 48x64x56; all sides even at every scale)."""
    import pytorch_msssim
    from monai.metrics.regression import compute_ms_ssim

    w = np.asarray(MS_SSIM_WEIGHTS[:3]) / sum(MS_SSIM_WEIGHTS[:3])
    a, b = generated_pair((48, 168, 168), seed=3)
    f = np.round(0.5 * (a + b))
    ours = ms_ssim_pair(a, f, 255.0)
    ref = pytorch_msssim.ms_ssim(_t(a).float(), _t(f).float(), data_range=255, weights=list(w))
    assert ours == pytest.approx(float(ref), abs=1e-4)
    a, b = generated_pair((48, 64, 56), seed=4)
    f = np.round(0.5 * (a + b))
    for src in (a, b):
        monai = compute_ms_ssim(_t(f).float(), _t(src).float(), spatial_dims=3, data_range=255.0, weights=tuple(w))
        assert ms_ssim_pair(src, f, 255.0) == pytest.approx(float(monai), abs=1e-4)
    assert ms_ssim_pair(a, f, 255.0) != pytest.approx(ms_ssim_pair(b, f, 255.0), abs=1e-3)  # not trivially equal


def test_vif_matches_sewar(triplets):
    import sewar.full_ref

    for a, b, f in triplets:
        for src in (a, b):
            assert vif_pair(src, f) == pytest.approx(sewar.full_ref.vifp(src, f), rel=2e-3)
