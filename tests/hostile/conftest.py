"""Fixtures of the hostile-user suite (the helpers are in ``harness.py``).

Session fixtures are built once: treat them as read-only (copy with ``writable_copy`` first).

``tiny_cohort`` (from ``tests/conftest.py``)
    A 6-patient SYNTHETIC cohort: ``manifest.csv``, ``slides/*.tif``, ``rois/*.geojson``.
``tiny_tiles`` (from ``tests/conftest.py``)
    ``tiny_cohort`` tiled (256 px at 1 µm/px) and stain-fitted.
``hostile_run``
    A ``timm:test_resnet`` run (random init, 64 px, 1 epoch) trained on ``tiny_tiles`` by
    :func:`her2scope.engine.train.train_model`: ``config.yaml``, ``splits.csv``, ``checkpoints/``
    (small files: copy it freely).
``hostile_env``
    Environment for :func:`cli_subprocess`: no progress bars, single-threaded BLAS.
``cohort`` (module scope)
    A writable copy of ``tiny_cohort``'s folder (slides/, rois/, manifest.csv).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.harness import (  # noqa: F401 - re-exported for test_inputs_config.py
    HOSTILE_MODEL,
    _quiet_env,
    assert_clean_error,
    cli,
    snapshot,
    writable_copy,
)


@pytest.fixture(scope="session")
def hostile_env() -> dict[str, str]:
    """Environment additions for :func:`cli_subprocess`."""
    return _quiet_env()


@pytest.fixture(scope="session")
def hostile_run(
    tiny_cohort: Path, tiny_tiles: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A run of ``timm:test_resnet`` (0.4 M parameters, random init, 64 px, 1 epoch) on
    ``tiny_tiles``: the checkpoints are small, so copying the run is cheap. SYNTHETIC."""
    from her2scope.config import apply_overrides
    from her2scope.engine.train import train_model
    from tests.integration.tiny_pipeline import tiny_run_config

    cfg = apply_overrides(tiny_run_config(tiny_cohort), [f"train.models=[{HOSTILE_MODEL!r}]"])
    run_dir = tmp_path_factory.mktemp("hostile_run") / "test_resnet"
    return train_model(cfg, HOSTILE_MODEL, tiny_tiles, run_dir)


@pytest.fixture(scope="module")
def cohort(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A writable copy of the tiny SYNTHETIC cohort's folder (slides/, rois/, manifest.csv)."""
    return writable_copy(tiny_cohort.parent, tmp_path_factory.mktemp("hostile") / "cohort")
