"""Sanity check of Grad-CAM on the SYNTHETIC cohort: does the CAM sit on DAB membrane?

Generates a small synthetic cohort with ground-truth label masks (0 glass, 1 stroma/tissue,
2 tumour cell, 3 DAB membrane), tiles it, trains a small model briefly on the training-centre
slides, computes Grad-CAM (for each tile's predicted class) on the other centre's tiles and prints
the mean CAM over membrane pixels vs over stroma/glass pixels, and their ratio.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/check_cam_sanity.py [--model timm:test_resnet]

Synthetic data: this says whether the maps point at the stain, not how a model does on patients.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="timm:test_resnet")
    ap.add_argument("--patients", type=int, default=9)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--tile-px", type=int, default=128)
    ap.add_argument("--input-px", type=int, default=96)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import pandas as pd
    import torch
    from PIL import Image

    from her2scope.data.dataset import TileDataset, to_model_input
    from her2scope.engine.checkpoint import RunMeta
    from her2scope.explain.run import tile_cams
    from her2scope.explain.stitch import mean_cam_by_label
    from her2scope.models import create_model, model_preprocessing
    from her2scope.synth import make_cohort
    from her2scope.tiling import TilingConfig, tile_slide

    torch.manual_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="cam_sanity_"))
    manifest = make_cohort(
        work, n_patients=args.patients, n_centers=2, seed=args.seed, slide_px=1280, masks=True
    )
    man = pd.read_csv(manifest)
    cfg = TilingConfig(tile_px=args.tile_px)
    parts = []
    for r in man.itertuples():
        df, _ = tile_slide(work / r.slide_path, r.slide_id, cfg, roi_path=work / r.roi_path)
        parts.append(df.assign(label=r.label, center=r.center))
    tiles = pd.concat(parts, ignore_index=True)
    classes = sorted(tiles["label"].unique())
    train = tiles[tiles["center"] == "A"].reset_index(drop=True)
    test = tiles[tiles["center"] != "A"].reset_index(drop=True)
    print(f"{len(man)} slides, {len(train)} train tiles, {len(test)} test tiles, classes {classes}")

    ds = TileDataset(train, args.input_px)
    x_u8 = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([classes.index(v) for v in train["label"]])
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in model_preprocessing(args.model))
    model = create_model(args.model, len(classes), input_px=args.input_px)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(args.steps):
        idx = torch.randint(0, len(x_u8), (32,))
        xb = x_u8[idx]
        if step % 2:
            xb = xb.flip(-1)
        loss = torch.nn.functional.cross_entropy(model(to_model_input(xb, mean, std)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    from her2scope.config import RunConfig

    meta = RunMeta(
        args.model,
        tuple(classes),
        RunConfig(),
        args.input_px,
        "",
        mean=tuple(float(v) for v in mean.flatten()),
        std=tuple(float(v) for v in std.flatten()),
    )
    with torch.no_grad():
        tr_pred = torch.cat(
            [
                model(to_model_input(x_u8[i : i + 64], mean, std)).argmax(1)
                for i in range(0, len(x_u8), 64)
            ]
        )
        print(f"training-centre tile accuracy {(tr_pred == y).float().mean().item():.3f}")
        xt = torch.stack([TileDataset(test, args.input_px)[i][0] for i in range(len(test))])
        pred = model(to_model_input(xt, mean, std)).argmax(1).numpy()
    acc = float((pred == np.array([classes.index(v) for v in test["label"]])).mean())
    print(f"test-centre tile accuracy {acc:.3f}")

    groups = {"membrane (3)": (3,), "tumour cell (2)": (2,), "stroma/glass (0,1)": (0, 1)}
    tot = dict.fromkeys(groups, 0.0)
    n = 0
    for sid, part in test.groupby("slide_id"):
        _, cams = tile_cams(model, meta, part, pred[part.index.to_numpy()])
        mask = np.asarray(Image.open(work / "masks" / f"{sid}.png"))
        means = mean_cam_by_label(
            cams, part[["x", "y"]].to_numpy(), part["read_px"].to_numpy(), mask, groups
        )
        print(sid, {k: round(v, 3) for k, v in means.items()})
        for k, v in means.items():
            tot[k] += v
        n += 1
    avg = {k: v / n for k, v in tot.items()}
    print("mean over test slides:", {k: round(v, 3) for k, v in avg.items()})
    ratio = avg["membrane (3)"] / avg["stroma/glass (0,1)"]
    print(f"membrane / stroma-glass CAM ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
