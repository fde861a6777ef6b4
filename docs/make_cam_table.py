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
from typing import Any

import numpy as np
import pandas as pd

REGIONS = ("membrane", "nucleus", "cytoplasm", "stroma", "glass")


def _region_masks(mask: np.ndarray, h_conc: np.ndarray) -> dict[str, np.ndarray]:
    membrane = mask == 3
    nucleus = (mask == 2) & (h_conc >= 0.3)
    return {
        "membrane": membrane,
        "nucleus": nucleus,
        "cytoplasm": (mask == 2) & ~nucleus,
        "stroma": mask == 1,
        "glass": mask == 0,
    }


def measure(
    run_dir: Path, cohort_dir: Path, split: str = "test", tiles_per_slide: int = 12
) -> dict[str, Any]:
    """Region means and pointing game of both methods on the tiles of the run's ``split``."""
    import cv2
    import torch

    from her2scope.data.dataset import TileDataset, to_model_input
    from her2scope.engine.checkpoint import load_run_model
    from her2scope.explain.gradcam import explain_maps, normalise_per_slide
    from her2scope.stain import default_reference, load_normalizers
    from her2scope.stain.macenko import od_lut

    model, meta = load_run_model(run_dir, "best")
    splits = pd.read_csv(run_dir / "splits.csv", dtype=str)
    test = set(splits.loc[splits["split"] == split, "slide_id"])
    tiles = pd.read_parquet(Path(meta.tiles_dir) / "tiles.parquet")
    tiles = tiles[tiles["slide_id"].astype(str).isin(test)].reset_index(drop=True)
    norms = load_normalizers(meta.tiles_dir, meta.config.stain)
    ref_inv = np.linalg.pinv(default_reference().stain_matrix.T)
    lut = od_lut(240.0)
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)
    sums = {m: {r: [0.0, 0] for r in REGIONS} for m in ("gradcam", "input_x_gradient")}
    hits = {m: 0 for m in sums}
    n_tiles, chance, correct = 0, [], 0
    for sid, part in tiles.groupby("slide_id"):
        mask_full = cv2.imread(str(cohort_dir / "masks" / f"{sid}.png"), cv2.IMREAD_UNCHANGED)
        masks = [mask_full[r.y : r.y + r.read_px, r.x : r.x + r.read_px] for r in part.itertuples()]
        keep = [i for i, m in enumerate(masks) if (m == 3).mean() > 0.01][:tiles_per_slide]
        if not keep:
            continue
        sel = part.iloc[keep].reset_index(drop=True)
        ds = TileDataset(sel, meta.input_px, norms)
        rgb = np.stack([ds.read_rgb(i) for i in range(len(ds))])
        x = to_model_input(torch.from_numpy(rgb).permute(0, 3, 1, 2), mean, std)
        with torch.no_grad():
            pred = model(x).argmax(1).numpy()
        label = meta.classes.index(str(sel["label"].iloc[0]))
        correct += int((pred == label).sum())
        maps = {
            "gradcam": explain_maps(model, meta.model_name, x, pred.tolist(), "gradcam"),
            "input_x_gradient": normalise_per_slide(
                explain_maps(
                    model, meta.model_name, x, pred.tolist(), "input_x_gradient", (1 - mean) / std
                )
            ),
        }
        for j, i in enumerate(keep):
            m = cv2.resize(masks[i], (meta.input_px,) * 2, interpolation=cv2.INTER_NEAREST)
            h_conc = (lut[rgb[j].reshape(-1, 3)] @ ref_inv.T)[:, 0].reshape(m.shape)
            regions = _region_masks(m, h_conc)
            near = cv2.dilate((m == 3).astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
            chance.append(float(near.mean()))
            for method, mp in maps.items():
                for r, reg in regions.items():
                    if reg.any():
                        sums[method][r][0] += float(mp[j][reg].mean())
                        sums[method][r][1] += 1
                peak = np.unravel_index(int(np.argmax(mp[j])), mp[j].shape)
                hits[method] += int(near[peak])
            n_tiles += 1
    return {
        "model": meta.model_name,
        "split": split,
        "n_tiles": n_tiles,
        "tile_accuracy": correct / n_tiles if n_tiles else None,
        "chance": float(np.mean(chance)) if chance else None,
        "methods": {
            m: {
                "region_mean": {r: (s / n if n else None) for r, (s, n) in sums[m].items()},
                "pointing_game": hits[m] / n_tiles if n_tiles else None,
            }
            for m in sums
        },
    }


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
            res = measure(run_dir, cohort, split)
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
