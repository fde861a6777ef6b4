"""Training under ``cohort.split_mode: leave_one_center_out``: one run per held-out centre.

Each fold is an ordinary external-centre run (:func:`her2scope.cohort.loco.fold_config`) written to
``<run_dir>_heldout_<centre>``; evaluate each with ``her2scope evaluate`` and put them side by side
with ``her2scope compare RUNS…`` (one row per held-out centre). Other split modes, and a
leave-one-centre-out config that already names its one ``test_centers`` entry, train one run.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from her2scope.cohort.loco import LOCO_MODE, centres_of, fold_config
from her2scope.config import RunConfig
from her2scope.errors import ConfigError
from her2scope.layout import TilesLayout

log = logging.getLogger(__name__)


def fold_run_dir(run_dir: str | Path, centre: str) -> Path:
    """``runs/alexnet`` → ``runs/alexnet_heldout_C``."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f"{run_dir.name}_heldout_{centre}")


def loco_centres(cfg: RunConfig, tiles_dir: str | Path) -> list[str]:
    """The centres to hold out in turn: those of the manifest when it exists (as training reads
    labels from it), else those of the tile table."""
    import pandas as pd

    manifest = Path(cfg.cohort.manifest)
    if manifest.is_file():
        from her2scope.cohort import load_manifest

        slides = load_manifest(
            manifest, cfg.cohort.label_scheme, allow_absolute=cfg.cohort.allow_absolute_paths
        )
    else:
        table = TilesLayout(Path(tiles_dir)).table
        if not table.is_file():
            raise ConfigError(f"no tile table '{table}'; run `her2scope tile` first")
        slides = pd.read_parquet(table, columns=["center"])
    return centres_of(slides)


def train_model_or_folds(
    cfg: RunConfig,
    model_name: str,
    tiles_dir: str | Path,
    run_dir: str | Path,
    device: str | None = None,
) -> list[Path]:
    """Train ``model_name`` once, or once per held-out centre under leave-one-centre-out;
    returns the run folders."""
    from her2scope.engine.train import train_model

    if cfg.cohort.split_mode != LOCO_MODE or cfg.cohort.test_centers:
        return [train_model(cfg, model_name, tiles_dir, run_dir, device=device)]
    out = []
    for centre in loco_centres(cfg, tiles_dir):
        fold = replace(cfg, cohort=fold_config(cfg.cohort, centre))
        target = fold_run_dir(run_dir, centre)
        log.info("leave-one-centre-out: %s, held-out centre %s → %s", model_name, centre, target)
        out.append(train_model(fold, model_name, tiles_dir, target, device=device))
    return out
