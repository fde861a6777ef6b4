"""Shared fixtures. Real files come from ../shared/data and are skipped when it is absent."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.slow import SLOW_FIXTURES

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that needs a slow session fixture, in any file, is marked ``slow``."""
    for item in items:
        if SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real test files; skips the test when it is absent (a user's fresh clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not available ({SHARED_DATA} is absent)")
    return SHARED_DATA


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Manifest of a tiny SYNTHETIC cohort: 6 patients (2 each of 1+/2+/3+), centres A and B,
    one patient with two slides (7 slides), 1280×1280 px slides at 0.5 µm/px, with masks.

    Built once per test session (a few seconds); treat it as read-only.
    """
    from her2scope.synth import make_cohort

    out = tmp_path_factory.mktemp("tiny_cohort")
    return make_cohort(out, n_patients=6, n_centers=2, seed=0, slide_px=1280, masks=True)


@pytest.fixture(scope="session")
def tiny_tiles(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiles dir of ``tiny_cohort`` (tile_px 256 at 1 µm/px; ~20 tiles), stain-fitted
    (preserve_dab). SYNTHETIC; treat it as read-only (copy it with ``writable_copy`` to alter)."""
    from her2scope.stain import fit_stains
    from her2scope.stain.config import StainConfig
    from her2scope.tiling import tile_cohort
    from her2scope.tiling.config import TilingConfig

    out = tmp_path_factory.mktemp("tiny_tiles")
    report = tile_cohort(tiny_cohort, out, TilingConfig(tile_px=256, target_mpp=1.0))
    assert not report.failures, report.failures
    fit_stains(out, StainConfig(mode="preserve_dab", fit_tiles=8))
    return out
