"""Shared fixtures. Real files come from ../shared/data and are skipped when it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real test files; skips the test when it is absent (a user's fresh clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not available ({SHARED_DATA} is absent)")
    return SHARED_DATA


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
