"""Builders shared by the integration and hostile tests (plain functions; the fixtures that use
them are in ``conftest.py``): toy tile tables, the tiny run's config, and a whole pipeline run on
the ``tiny_cohort`` (real stages, tiny settings), built once per process.

``tiny_pipeline`` is shared by ``test_pipeline.py`` and ``test_report_browser.py``; a module-level
cache (under ``pytest -n`` with ``--dist loadfile`` each worker that needs it builds its own copy).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from her2scope.config import RunConfig, apply_overrides

#: Mean RGB of each toy class: the classes differ in brown (DAB-like) intensity.
TOY_COLOURS = {"1+": (200, 170, 190), "2+": (180, 130, 110), "3+": (140, 80, 50)}


MODEL = "timm:test_resnet"  # 0.4 M parameters: trains in seconds on CPU
CLASSES = ("1+", "2+", "3+")
PX = 64


def train_tiny_run(
    run_dir: Path, tiles_dir: Path, steps: int = 40, stain_mode: str = "none"
) -> Path:
    """Train ``MODEL`` on the toy tiles (class = DAB-like colour) and save it as a run."""
    import torch

    from her2scope.config import RunConfig
    from her2scope.data.dataset import TileDataset, to_model_input
    from her2scope.engine.checkpoint import save_checkpoint
    from her2scope.engine.config import TrainConfig
    from her2scope.models import create_model, model_preprocessing
    from her2scope.stain.config import StainConfig
    from her2scope.tiling.config import TilingConfig

    torch.manual_seed(0)
    tiles = pd.read_parquet(tiles_dir / "tiles.parquet")
    ds = TileDataset(tiles, PX)
    x_u8 = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([CLASSES.index(v) for v in tiles["label"]])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in model_preprocessing(MODEL))
    model = create_model(MODEL, len(CLASSES))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        flip = torch.rand(()) < 0.5
        xb = x_u8.flip(-1) if flip else x_u8
        loss = torch.nn.functional.cross_entropy(model(to_model_input(xb, mean, std)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    cfg = RunConfig(
        synthetic=True,
        tiling=TilingConfig(tile_px=PX),
        stain=StainConfig(mode=stain_mode),
        train=TrainConfig(models=(MODEL,), input_px=PX, pretrained=False),
    )
    save_checkpoint(
        run_dir / "checkpoints" / "best.pt",
        model=model.eval(),
        model_name=MODEL,
        classes=CLASSES,
        config=cfg,
        input_px=PX,
        tiles_dir=tiles_dir,
        epoch=1,
    )
    splits = tiles.drop_duplicates("slide_id")[["slide_id", "patient_id", "center", "label"]]
    splits = splits.assign(split=np.where(splits["center"] == "B", "test", "train"))
    splits.to_csv(run_dir / "splits.csv", index=False)
    return run_dir


def make_toy_tiles(
    out_dir: Path,
    patients: list[tuple[str, str, str]],
    slide_px: int = 128,
    tile_px: int = 64,
    seed: int = 0,
) -> Path:
    """Write one small pyramidal TIFF per patient and a ``tiles.parquet`` over all of them.

    ``patients`` lists ``(patient_id, center, label)``. Each slide is a noisy field of its class
    colour; every ``tile_px`` square of it is one tile row. Returns the tiles dir.
    """
    from her2scope.slide.write import write_pyramidal_tiff

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    manifest = []
    for pid, center, label in patients:
        slide_id = f"{pid}_S1"
        base = np.array(TOY_COLOURS[label], dtype=np.float64)
        img = base + rng.normal(0, 12, size=(slide_px, slide_px, 3))
        img = np.clip(img, 0, 255).astype(np.uint8)
        path = write_pyramidal_tiff(out_dir / "slides" / f"{slide_id}.tif", img, mpp=0.5)
        manifest.append(
            {
                "slide_id": slide_id,
                "patient_id": pid,
                "center": center,
                "label": label,
                "slide_path": f"slides/{slide_id}.tif",
            }
        )
        for y in range(0, slide_px, tile_px):
            for x in range(0, slide_px, tile_px):
                rows.append(
                    {
                        "slide_id": slide_id,
                        "patient_id": pid,
                        "center": center,
                        "label": label,
                        "slide_path": str(Path(path).resolve()),
                        "x": x,
                        "y": y,
                        "level": 0,
                        "read_px": tile_px,
                        "tile_px": tile_px,
                        "mpp": 0.5,
                        "white_frac": 0.0,
                        "roi_cover": 1.0,
                    }
                )
    pd.DataFrame(rows).to_parquet(out_dir / "tiles.parquet", index=False)
    pd.DataFrame(manifest).to_csv(out_dir / "manifest.csv", index=False)
    return out_dir


#: 6 training-centre patients (2 per class) and 3 test-centre patients.
TOY_PATIENTS = [
    *[(f"A{i}", "A", lab) for i, lab in enumerate(["1+", "2+", "3+", "1+", "2+", "3+"])],
    *[(f"B{i}", "B", lab) for i, lab in enumerate(["1+", "2+", "3+"])],
]


def tiny_run_config(tiny_cohort: Path, epochs: int = 1) -> RunConfig:
    """The RunConfig of ``tiny_run``: alexnet at 64 px, preserve_dab stain normalisation (the
    tiles are stain-fitted), centre A train/val, centre B test."""
    return apply_overrides(
        RunConfig(synthetic=True),
        [
            f"cohort.manifest={tiny_cohort}",
            "cohort.test_centers=[B]",
            "cohort.val_fraction=0.34",
            "stain.mode=preserve_dab",
            "tiling.tile_px=256",
            "tiling.target_mpp=1.0",
            "train.models=[alexnet]",
            "train.pretrained=false",
            "train.input_px=64",
            f"train.epochs={epochs}",
            "train.batch_size=8",
            "train.workers=0",
            "train.lr=0.0003",
        ],
    )


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
