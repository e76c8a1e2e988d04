"""Our metrics against maintained libraries on real Harvard SPECT-MRI triplets (average fusion)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from neurofuse.metrics import METRICS
from neurofuse.metrics.information import mutual_information
from neurofuse.metrics.structural import ms_ssim_pair, ssim_terms
from neurofuse.metrics.vif import vif_pair

DATA = Path(__file__).resolve().parents[2] / "../shared/data/harvard/SPECT-MRI"
NAMES = ["11005.png", "21010.png"]


def _triplets():
    if not (DATA / "MRI").is_dir():
        pytest.skip("Harvard SPECT-MRI data not present")
    from PIL import Image

    out = []
    for name in NAMES:
        p = DATA / "MRI" / name
        if not p.exists():
            name = sorted((DATA / "MRI").iterdir())[len(out)].name
        a = np.asarray(Image.open(DATA / "MRI" / name).convert("L"), dtype=np.float64)
        b = np.asarray(Image.open(DATA / "SPECT" / name).convert("YCbCr"), dtype=np.float64)[..., 0]
        out.append((a, b, np.round(0.5 * (a + b))))  # 8-bit average fusion
    return out


@pytest.fixture(scope="module")
def triplets():
    return _triplets()


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


def test_ms_ssim_matches_pytorch_msssim(triplets):
    torch = pytest.importorskip("torch")
    pm = pytest.importorskip("pytorch_msssim")
    for a, b, f in triplets[:1]:
        for src in (a, b):
            ref = pm.ms_ssim(torch.from_numpy(src)[None, None], torch.from_numpy(f)[None, None], data_range=255)
            # pytorch-msssim builds its Gaussian window in float32 (sum 1 +- 1e-7); on 0-255 data that
            # biases E[x^2] - mu^2 by ~1e-7 x 255^2, which moves MS-SSIM by ~2e-5; we compute in float64.
            assert ms_ssim_pair(src, f, 255.0) == pytest.approx(float(ref), abs=1e-4)


def test_vif_matches_sewar(triplets):
    sewar = pytest.importorskip("sewar.full_ref")
    for a, b, f in triplets:
        for src in (a, b):
            assert vif_pair(src, f) == pytest.approx(sewar.vifp(src, f), rel=2e-3)
