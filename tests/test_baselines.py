"""Classical fusion methods in 2D and 3D: shapes, ranges and the properties their rules promise."""

from __future__ import annotations

import numpy as np
import pytest

from neurofuse import fuse, list_methods
from neurofuse.baselines import laplacian_pyramid, pca_weights, reconstruct_laplacian
from neurofuse.errors import InputError, UsageError

CLASSICAL = [m.name for m in list_methods("classical")]


def test_registry_has_the_classical_methods():
    assert set(CLASSICAL) >= {"average", "maximum", "pca", "dwt", "laplacian"}


@pytest.mark.parametrize("method", CLASSICAL)
@pytest.mark.parametrize("shape", [(64, 48), (33, 29), (20, 24, 18)])
def test_shape_range_and_identity(method, shape, rng):
    a = rng.random(shape).astype(np.float32)
    b = rng.random(shape).astype(np.float32)
    f = fuse(a, b, method)
    assert f.shape == shape and f.dtype == np.float32
    assert f.min() >= 0 and f.max() <= 1
    np.testing.assert_allclose(fuse(a, a, method), a, atol=1e-5)  # fusing an image with itself


@pytest.mark.parametrize("method", ["average", "maximum", "dwt", "laplacian"])
def test_symmetric_in_the_sources(method, rng):
    a, b = rng.random((32, 32)), rng.random((32, 32))
    np.testing.assert_allclose(fuse(a, b, method), fuse(b, a, method), atol=1e-6)


def test_maximum_and_average_values(rng):
    a, b = rng.random((8, 8)), rng.random((8, 8))
    np.testing.assert_allclose(fuse(a, b, "maximum"), np.maximum(a, b), atol=1e-7)
    np.testing.assert_allclose(fuse(a, b, "average"), (a + b) / 2, atol=1e-7)


def test_pca_weights_follow_variance(rng):
    a = rng.random((64, 64))
    b = 0.5 + 0.05 * rng.random((64, 64))  # almost flat: little information
    wa, wb = pca_weights(a, b)
    assert wa + wb == pytest.approx(1.0) and wa > 0.9
    assert pca_weights(a, a) == pytest.approx((0.5, 0.5))


def test_multiscale_methods_keep_the_stronger_edge():
    a = np.zeros((64, 64))
    a[:, 32:] = 1.0  # a strong vertical edge only in A
    b = np.full((64, 64), 0.5)
    b[10, 10] = 0.6
    for method in ("dwt", "laplacian"):
        f = fuse(a, b, method)
        # the step across the edge stays sharper than averaging's (which halves it to 0.5)
        step = (f[:, 32] - f[:, 31]).mean()
        assert step > 0.65, (method, step)


def test_laplacian_pyramid_reconstructs_exactly(rng):
    for shape in [(64, 64), (37, 50), (17, 20, 23)]:
        x = rng.random(shape)
        np.testing.assert_allclose(reconstruct_laplacian(laplacian_pyramid(x, 4)), x, atol=1e-12)


def test_dwt_options_and_bad_wavelet(rng):
    a, b = rng.random((40, 40)), rng.random((40, 40))
    assert fuse(a, b, "dwt", wavelet="haar", levels=1).shape == (40, 40)
    with pytest.raises(UsageError, match="wavelet"):
        fuse(a, b, "dwt", wavelet="nope")


def test_fuse_rejects_bad_arrays(rng):
    a = rng.random((8, 8))
    with pytest.raises(InputError, match="shape mismatch"):
        fuse(a, rng.random((8, 9)))
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        fuse(a, bad)
    with pytest.raises(InputError, match="constant"):
        fuse(a, np.zeros((8, 8)))
    with pytest.raises(UsageError, match="unknown fusion method"):
        fuse(a, a, "nope")
