"""Shared fixtures: paths to the development data and small generated images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
