"""Shared fixtures: paths to the development data and small generated images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# `precision: auto` resolves to fp32 in tests whatever the CPU, so no result depends on its instruction set
# (the selection itself is tested with the capability mocked, tests/test_precision.py).
os.environ.setdefault("NEUROFUSE_PRECISION", "fp32")

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / "../shared/data").resolve()
EXAMPLES = ROOT / "src/neurofuse/examples"


@pytest.fixture
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return DATA


@pytest.fixture
def examples() -> Path:
    return EXAMPLES


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def pytest_configure(config):
    """One compute thread per test process: the suite runs in parallel workers on a 2-core CI machine,
    and torch's and numba's own pools would otherwise oversubscribe it (10x slower steps seen here)."""
    import numba
    import torch

    torch.set_num_threads(1)
    numba.set_num_threads(1)
