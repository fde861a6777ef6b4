"""A whole pipeline run on the ``tiny_cohort`` (real stages, tiny settings), built once per process.

Shared by ``test_pipeline.py`` and ``test_report_browser.py``; a module-level cache rather than a
fixture so that both files can use it without a conftest change (under ``pytest -n`` with
``--dist loadfile`` each worker that needs it builds its own copy).
"""

from __future__ import annotations

from pathlib import Path

from her2scope.config import RunConfig, apply_overrides

_CACHE: dict[str, tuple[RunConfig, object]] = {}


def tiny_pipeline_config(manifest: Path, out_dir: Path) -> RunConfig:
    """AlexNet at 64 px, 1 epoch, random init; centre A train/val, centre B test; cell scoring of
    the test slides. SYNTHETIC."""
    return apply_overrides(
        RunConfig(synthetic=True),
        [
            f"out_dir={out_dir}",
            f"cohort.manifest={manifest}",
            "cohort.test_centers=[B]",
            "cohort.val_fraction=0.34",
            "tiling.tile_px=256",
            "tiling.target_mpp=1.0",
            "stain.mode=preserve_dab",
            "stain.fit_tiles=8",
            "train.models=[alexnet]",
            "train.pretrained=false",
            "train.input_px=64",
            "train.epochs=1",
            "train.batch_size=8",
            "train.workers=0",
            "evaluate.n_boot=100",
            "explain.n_tiles=2",
            "explain.heatmap_max_px=256",
            "cells.enabled=true",
        ],
    )


def tiny_pipeline(manifest: Path, out_dir: Path) -> tuple[RunConfig, object]:
    """(config, PipelineResult) of the first run into ``out_dir`` (cached per manifest)."""
    key = str(manifest)
    if key not in _CACHE:
        from her2scope.pipeline import run_pipeline

        cfg = tiny_pipeline_config(manifest, out_dir)
        _CACHE[key] = (cfg, run_pipeline(cfg, workers=1))
    return _CACHE[key]
