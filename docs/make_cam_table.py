"""Measure where explanations point on SYNTHETIC slides with ground-truth masks (docs/explain.md).

Renders a small cohort with ``masks/`` (0 glass, 1 stroma, 2 tumour, 3 stained membrane), tiles it
at 0.5 µm/px (128 px tiles = 64 µm, the model sees every pixel), trains each model briefly from
random initialisation (CPU), and on the held-out centre's tiles compares Grad-CAM (last block)
with input × gradient (per input pixel, per-slide normalisation):

- mean map value on membrane, nucleus, cytoplasm, stroma and glass pixels (nucleus: tumour pixels
  with hematoxylin ≥ 0.3 OD after normalisation; the masks have no nucleus label);
- pointing game: share of tiles whose map maximum lies on a stained membrane (within 1 µm),
  against chance = the mean share of such pixels in a tile.

Input × gradient uses white (unstained glass) as its baseline. Both the validation split (the
training centre) and the test split (the other centre) are measured.

Usage (minutes per model on 2 CPU cores; the models are weak, the numbers say where maps point,
not how good a model is)::

    python docs/make_cam_table.py OUT_DIR --models alexnet resnet34 [--epochs 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from her2scope.explain.pointing import REGIONS, measure_pointing


def main() -> None:
    from her2scope.config import RunConfig, apply_overrides
    from her2scope.engine.train import train_model
    from her2scope.stain import fit_stains
    from her2scope.synth import make_cohort
    from her2scope.tiling import tile_cohort

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--models", nargs="+", default=["alexnet"])
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    out: Path = args.out
    cohort = out / "cohort"
    manifest = cohort / "manifest.csv"
    if not manifest.is_file():
        manifest = make_cohort(cohort, n_patients=9, n_centers=2, seed=0, slide_px=2048, masks=True)
    cfg = apply_overrides(
        RunConfig(synthetic=True),
        [
            f"cohort.manifest={manifest}",
            "cohort.test_centers=[B]",
            "cohort.val_fraction=0.34",
            "tiling.tile_px=128",
            "tiling.target_mpp=0.5",
            "stain.mode=preserve_dab",
            "train.input_px=128",
            f"train.epochs={args.epochs}",
            "train.batch_size=16",
            "train.workers=0",
            "train.pretrained=false",
            "train.max_tiles_per_slide=48",
        ],
    )
    tiles_dir = out / "tiles"
    if not (tiles_dir / "tiles.parquet").is_file():
        tile_cohort(manifest, tiles_dir, cfg.tiling)
        fit_stains(tiles_dir, cfg.stain)
    results = []
    for name in args.models:
        run_dir = out / "runs" / name
        if not (run_dir / "checkpoints" / "best.pt").is_file():
            train_model(cfg, name, tiles_dir, run_dir)
        for split in ("val", "test"):
            res = measure_pointing(run_dir, cohort / "masks", split)
            results.append(res)
            print(json.dumps(res, indent=1), flush=True)
    print("| model | split | tile acc. | method | membrane | nucleus | cytoplasm | stroma | glass | "
          "pointing game | chance |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for res in results:
        for method, v in res["methods"].items():
            rm = v["region_mean"]
            cells = " | ".join("—" if rm[r] is None else f"{rm[r]:.3f}" for r in REGIONS)
            print(
                f"| {res['model']} | {res['split']} | {res['tile_accuracy']:.2f} | {method} | {cells} | "
                f"{v['pointing_game']:.2f} | {res['chance']:.2f} |"
            )


if __name__ == "__main__":
    main()
