"""Fixtures of the training stage: tiny tile tables and trained runs (session scope, seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

#: Mean RGB of each toy class: the classes differ in brown (DAB-like) intensity.
TOY_COLOURS = {"1+": (200, 170, 190), "2+": (180, 130, 110), "3+": (140, 80, 50)}


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


@pytest.fixture(scope="session")
def toy_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiles dir of 9 toy slides (4 tiles of 64 px each); treat it as read-only."""
    return make_toy_tiles(tmp_path_factory.mktemp("toy_tiles"), TOY_PATIENTS)


def _stain_fit_available() -> bool:
    try:
        from her2scope.stain import fit_stains, load_normalizers  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def tiny_tiles(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiles dir of ``tiny_cohort`` (tile_px 256 at 1 µm/px; ~20 tiles), stain-fitted when the
    stain stage is available. SYNTHETIC; treat it as read-only."""
    from her2scope.tiling import tile_cohort
    from her2scope.tiling.config import TilingConfig

    out = tmp_path_factory.mktemp("tiny_tiles")
    report = tile_cohort(tiny_cohort, out, TilingConfig(tile_px=256, target_mpp=1.0))
    assert not report.failures, report.failures
    if _stain_fit_available():
        from her2scope.stain import fit_stains
        from her2scope.stain.config import StainConfig

        fit_stains(out, StainConfig(mode="preserve_dab", fit_tiles=8))
    return out


def tiny_run_config(tiny_cohort: Path, epochs: int = 1) -> object:
    """The RunConfig of ``tiny_run``: alexnet at 64 px, centre A train/val, centre B test."""
    from her2scope.config import RunConfig, apply_overrides

    return apply_overrides(
        RunConfig(synthetic=True),
        [
            f"cohort.manifest={tiny_cohort}",
            "cohort.test_centers=[B]",
            "cohort.val_fraction=0.34",
            f"stain.mode={'preserve_dab' if _stain_fit_available() else 'none'}",
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


@pytest.fixture(scope="session")
def tiny_run(tiny_cohort: Path, tiny_tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run dir of alexnet (random init, 64 px input, 1 epoch) trained on ``tiny_tiles``;
    centre A is train/val, centre B test. SYNTHETIC; treat it as read-only."""
    from her2scope.engine.train import train_model

    run_dir = tmp_path_factory.mktemp("tiny_run") / "alexnet"
    return train_model(tiny_run_config(tiny_cohort), "alexnet", tiny_tiles, run_dir)
