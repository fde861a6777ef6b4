"""Fixtures of the training stage: tiny tile tables and trained runs (session scope, seconds).

The builders behind them live in ``tiny_pipeline.py``; import those from there, not from here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.tiny_pipeline import (
    TOY_PATIENTS,
    make_toy_tiles,
    tiny_run_config,
    train_tiny_run,
)


@pytest.fixture(scope="session")
def toy_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiles dir of 9 toy slides (4 tiles of 64 px each); treat it as read-only."""
    return make_toy_tiles(tmp_path_factory.mktemp("toy_tiles"), TOY_PATIENTS)


@pytest.fixture(scope="session")
def tiny_scoring_run(tmp_path_factory: pytest.TempPathFactory, toy_tiles: Path) -> Path:
    """A run folder holding a tiny model trained on the toy tiles (seconds)."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny_run"), toy_tiles)


@pytest.fixture(scope="session")
def tiny_run(tiny_cohort: Path, tiny_tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run dir of alexnet (random init, 64 px input, 1 epoch) trained on ``tiny_tiles``
    (tests/conftest.py);
    centre A is train/val, centre B test. SYNTHETIC; treat it as read-only."""
    from her2scope.engine.train import train_model

    run_dir = tmp_path_factory.mktemp("tiny_run") / "alexnet"
    return train_model(tiny_run_config(tiny_cohort), "alexnet", tiny_tiles, run_dir)
