"""Where explanations point, measured on SYNTHETIC slides with ground-truth masks.

Compares Grad-CAM (last block, per tile) with input × gradient (per input pixel, one scale per
slide) on a run's tiles: the mean map value on stained-membrane, nucleus, cytoplasm, stroma and
glass pixels (nucleus: tumour pixels with hematoxylin ≥ 0.3 OD after normalisation; the masks have
no nucleus label), and the **pointing game**: the share of tiles whose map maximum lies on a
stained membrane (within 2 input pixels), against chance = the mean share of such pixels in a
tile. Used by the pipeline's explain stage when the cohort has ``masks/`` (the demo) and by
``docs/make_cam_table.py``; see docs/explain.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from her2scope.errors import Her2ScopeError
from her2scope.layout import RunLayout, TilesLayout

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


def measure_pointing(
    run_dir: Path, masks_dir: Path, split: str = "test", tiles_per_slide: int = 12
) -> dict[str, Any]:
    """Region means and pointing game of both methods on the tiles of the run's ``split``.

    ``masks_dir`` holds ``<slide_id>.png`` label masks at level 0 (``her2scope synth --masks``:
    0 glass, 1 stroma, 2 tumour, 3 stained membrane). Up to ``tiles_per_slide`` tiles with some
    membrane are measured per slide; slides without a mask are skipped. Values are None when no
    tile could be measured.
    """
    import cv2
    import torch

    from her2scope.data.dataset import TileDataset, to_model_input
    from her2scope.engine.checkpoint import load_run_model
    from her2scope.explain.gradcam import explain_maps, normalise_per_slide
    from her2scope.stain import default_reference, load_normalizers
    from her2scope.stain.macenko import od_lut

    model, meta = load_run_model(run_dir, "best")
    splits = pd.read_csv(RunLayout(run_dir).splits, dtype=str)
    test = set(splits.loc[splits["split"] == split, "slide_id"])
    tiles = pd.read_parquet(TilesLayout(Path(meta.tiles_dir)).table)
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
        mask_path = masks_dir / f"{sid}.png"
        if not mask_path.is_file():
            continue
        mask_full = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
        if mask_full is None:
            raise Her2ScopeError(
                f"mask '{mask_path}' is not a readable PNG; re-create the cohort's masks "
                "(her2scope synth --masks) or remove the file"
            )
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
