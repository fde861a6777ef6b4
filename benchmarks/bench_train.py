"""Training throughput: her2scope's loop (tiles read from a slide) vs a bare loop on tensors.

Measures, in one run on this machine:

1. her2scope: ``train_model`` for one epoch of ``resnet34`` at 224² — tiles read lazily from a
   generated pyramidal TIFF by ``TileDataset``, stain-normalised (when the stain stage is present),
   augmented and normalised, AdamW step; images/s as logged in ``metrics.jsonl``.
   Also the same with the loader/thread plan before :mod:`her2scope.engine.cpu_plan`
   (``train.workers`` loader processes beside one torch thread per core), for comparison.
2. the DataLoader alone (same dataset, the planned workers): images/s of producing batches.
3. a bare PyTorch loop: the same model, batch size and optimiser on pre-loaded tensors.

(1), its old-plan variant and (3) alternate ``--repeat`` times, so that load from other users of
the machine hits them alike; the median of the per-pair ratios is printed (target ≥ 0.95: the
data pipeline and the loader/thread plan of :mod:`her2scope.engine.cpu_plan` cost at most 5 %),
with the plan used and the load average. Random weights, synthetic pixels: a speed measurement, not a model. CPU only;
the GPU's training step (AMP + channels_last vs fp32 at 512 px) is measured by bench_gpu.py.

    .venv/bin/python benchmarks/bench_train.py [--tiles-per-side 4] [--workers 2] [--batch 16]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def make_tiles(root: Path, tiles_per_side: int, tile_px: int) -> Path:
    from her2scope.slide.write import write_pyramidal_tiff

    rng = np.random.default_rng(0)
    side = tiles_per_side * tile_px
    rows = []
    patients = [(f"A{i}", "A", lab) for i, lab in enumerate(["1+", "2+", "3+"] * 2)]
    patients.append(("B0", "B", "2+"))
    manifest = []
    for pid, center, label in patients:
        manifest.append(
            {"slide_id": pid, "patient_id": pid, "center": center, "label": label,
             "slide_path": f"slides/{pid}.tif"}
        )  # fmt: skip
        img = rng.integers(60, 230, size=(side, side, 3), dtype=np.uint8)
        path = write_pyramidal_tiff(root / "slides" / f"{pid}.tif", img, mpp=0.5)
        for ty in range(tiles_per_side):
            for tx in range(tiles_per_side):
                rows.append(
                    {"slide_id": pid, "patient_id": pid, "center": center, "label": label,
                     "slide_path": str(path), "x": tx * tile_px, "y": ty * tile_px, "level": 0,
                     "read_px": tile_px, "tile_px": tile_px, "mpp": 0.5, "white_frac": 0.0,
                     "roi_cover": 1.0}
                )  # fmt: skip
    pd.DataFrame(rows).to_parquet(root / "tiles.parquet", index=False)
    pd.DataFrame(manifest).to_csv(root / "manifest.csv", index=False)
    return root


def bare_loop(n: int, batch: int, px: int, lr: float) -> float:
    """images/s of AdamW steps of resnet34 on pre-loaded, pre-normalised tensors."""
    from her2scope.models import create_model

    torch.manual_seed(0)
    model = create_model("resnet34", 3, input_px=px).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    x_all = torch.randn(n, 3, px, px)
    y_all = torch.randint(0, 3, (n,))
    crit = torch.nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        loss = crit(model(x_all[i : i + batch]), y_all[i : i + batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return n / (time.perf_counter() - t0)


def loader_only(tiles_dir: Path, cfg: object, workers: int) -> float:
    from torch.utils.data import DataLoader

    from her2scope.data.dataset import TileDataset
    from her2scope.stain import load_normalizers

    df = pd.read_parquet(tiles_dir / "tiles.parquet")
    df = df[df.center == "A"].reset_index(drop=True)  # the training centre
    ds = TileDataset(df, 224, load_normalizers(tiles_dir, cfg.stain))  # type: ignore[attr-defined]
    loader = DataLoader(ds, batch_size=16, shuffle=True, num_workers=workers)
    t0 = time.perf_counter()
    n = sum(len(xb) for xb, _ in loader)
    return n / (time.perf_counter() - t0)


def old_plan(cfg: object, tiles: Path, run_dir: Path, workers: int, cores: int) -> float:
    """images/s of train_model with the loader/thread plan it had before engine/cpu_plan.py:
    ``train.workers`` loader processes beside torch's default of one thread per core."""
    from unittest import mock

    from her2scope.engine import train
    from her2scope.engine.cpu_plan import CpuPlan

    before = CpuPlan(min(workers, cores), cores, cores, "before: no plan")
    with mock.patch.object(train, "plan_cpu", lambda *a, **k: before):
        run = train.train_model(cfg, "resnet34", tiles, run_dir)  # type: ignore[arg-type]
    return json.loads((run / "metrics.jsonl").read_text().splitlines()[0])["images_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles-per-side", type=int, default=4, help="slide side in tiles (n² tiles)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="alternating runs; medians reported")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from her2scope.config import RunConfig, apply_overrides
    from her2scope.engine.train import train_model

    with tempfile.TemporaryDirectory() as tmp:
        tiles = make_tiles(Path(tmp) / "tiles", args.tiles_per_side, 224)
        stain = "none"
        try:
            from her2scope.stain import fit_stains
            from her2scope.stain.config import StainConfig

            fit_stains(tiles, StainConfig(mode="preserve_dab", fit_tiles=8))
            stain = "preserve_dab"
        except ImportError:
            pass
        cfg = apply_overrides(
            RunConfig(),
            [
                f"cohort.manifest={tiles / 'manifest.csv'}", "cohort.test_centers=[B]",
                "cohort.val_fraction=0.34",
                f"stain.mode={stain}", "train.pretrained=false", "train.input_px=224",
                "train.epochs=1", f"train.batch_size={args.batch}", f"train.workers={args.workers}",
                "train.augment=true", "train.precision=fp32",
            ],
        )  # fmt: skip
        from her2scope.engine.cpu_plan import plan_cpu

        plan = plan_cpu(args.workers, "cpu")
        print(f"resnet34, 224², batch {args.batch}, {args.tiles_per_side**2} tiles per slide, "
              f"train.workers={args.workers}; plan: {plan.loader_workers} loader process(es), "
              f"{plan.torch_threads} torch thread(s) on {plan.cores} core(s); "
              f"stain normalisation: {stain}")  # fmt: skip
        data_ips = loader_only(tiles, cfg, plan.loader_workers)
        # warm-up: the first resnet34 steps of a process pay oneDNN's kernel set-up; without this
        # the first pair's her2scope run (always first) paid it and the bare loop did not
        bare_loop(2 * args.batch, args.batch, 224, 1e-4)
        bare_runs, ours_runs, old_runs = [], [], []
        for i in range(max(1, args.repeat)):
            run = train_model(cfg, "resnet34", tiles, Path(tmp) / f"run{i}")
            row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
            ours_runs.append(row["images_per_s"])  # training only (validation is timed apart)
            bare_runs.append(bare_loop(row["train_images"], args.batch, 224, 1e-4))
            old_runs.append(old_plan(cfg, tiles, Path(tmp) / f"old{i}", args.workers, plan.cores))
        print(f"{row['train_images']} training images per epoch")
        bare_ips, ours = statistics.median(bare_runs), statistics.median(ours_runs)

        def runs(v: list[float]) -> str:
            return ", ".join(f"{x:.1f}" for x in v)

        print(f"DataLoader alone (read + normalise + resize): {data_ips:8.1f} images/s")
        print(f"bare PyTorch loop on pre-loaded tensors:     {bare_ips:8.1f} images/s "
              f"(median of {runs(bare_runs)})")  # fmt: skip
        print(f"her2scope train_model (slide → step):        {ours:8.1f} images/s "
              f"(median of {runs(ours_runs)})")  # fmt: skip
        old = statistics.median(old_runs)
        print(f"  the same with the plan before (train.workers={args.workers} loader processes "
              f"beside {plan.cores} torch threads): {old:8.1f} images/s (median of "
              f"{runs(old_runs)})")  # fmt: skip
        pairs = [o / b for o, b in zip(ours_runs, bare_runs, strict=True)]
        old_pairs = [o / b for o, b in zip(old_runs, bare_runs, strict=True)]
        print(
            f"ratio her2scope / bare: median of the pairs {statistics.median(pairs):.3f} "
            f"(target >= 0.95; pairs {', '.join(f'{r:.3f}' for r in pairs)}); ratio of the "
            f"medians {ours / bare_ips:.3f}"
        )
        print(
            f"ratio with the plan before / bare: median of the pairs "
            f"{statistics.median(old_pairs):.3f} (pairs {', '.join(f'{r:.3f}' for r in old_pairs)})"
        )
        print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
