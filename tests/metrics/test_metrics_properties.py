"""Property tests: every metric is finite and inside its range on valid random input."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from neurofuse.metrics import compute_metrics
from neurofuse.metrics.presets import ALL_2D

RANGES = {
    "FMI": (0, 1), "Qabf": (0, 1), "Nabf": (0, 1), "Qcb": (0, 1), "NMI": (0, 2), "CC": (-1, 1),
    "EN": (0, 8), "MS_SSIM": (0, 1), "FSIM": (0, 1), "SSIM": (-2, 2), "MI": (0, 16), "SCD": (-2, 2),
}


@st.composite
def triplets(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    blur = draw(st.floats(0.0, 3.0))
    w = draw(st.floats(0.05, 0.95))  # F equal to a source leaves SCD undefined (tested apart)
    rng = np.random.default_rng(seed)
    a, b = (ndimage.gaussian_filter(rng.random((48, 48)), blur) for _ in range(2))
    a, b = ((x - x.min()) / (x.max() - x.min()) for x in (a, b))
    return a, b, w * a + (1 - w) * b


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(triplets())
def test_all_metrics_finite_and_in_range(t):
    a, b, f = t
    for preset in ("standard", "clinicalfmamba"):
        vals = compute_metrics(a, b, f, ALL_2D, preset)
        for name, v in vals.items():
            assert np.isfinite(v), (name, v)
            lo, hi = RANGES.get(name, (-np.inf, np.inf))
            assert lo - 1e-9 <= v <= hi + 1e-9, (preset, name, v)
        assert vals["SD"] >= 0 and vals["SF"] >= 0 and vals["AG"] >= 0 and vals["Qcv"] >= 0
