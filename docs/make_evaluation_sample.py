"""Regenerate the SYNTHETIC sample comparison table and plots shown in docs/evaluation.md.

    OMP_NUM_THREADS=1 .venv/bin/python docs/make_evaluation_sample.py [WORK_DIR]

Renders a 24-patient synthetic two-centre cohort, tiles it, trains two small models from random
initialisation for a few epochs at 64 px (centre A train/val, centre B test), evaluates both and
compares them. The numbers say the code runs end to end on synthetic data; they are **not**
clinical performance and not a ranking of the architectures.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS_IMG = Path(__file__).resolve().parent / "img"


def main(work: Path) -> None:
    from her2scope.config import RunConfig, apply_overrides
    from her2scope.engine.train import train_model
    from her2scope.evaluate.compare import compare_runs
    from her2scope.evaluate.run import evaluate_run
    from her2scope.synth import make_cohort
    from her2scope.tiling import tile_cohort
    from her2scope.tiling.config import TilingConfig

    manifest = work / "cohort" / "manifest.csv"
    if not manifest.is_file():
        manifest = make_cohort(work / "cohort", n_patients=24, n_centers=2, seed=0, slide_px=1280)
    tiles = work / "tiles"
    if not (tiles / "tiles.parquet").is_file():
        tile_cohort(manifest, tiles, TilingConfig(tile_px=128, target_mpp=1.0))
    cfg = apply_overrides(
        RunConfig(synthetic=True),
        [
            f"cohort.manifest={manifest}",
            "cohort.test_centers=[B]",
            "cohort.val_fraction=0.25",
            "stain.mode=none",
            "train.pretrained=false",
            "train.input_px=64",
            "train.epochs=6",
            "train.batch_size=16",
            "train.workers=0",
            "train.lr=0.0003",
        ],
    )
    runs = []
    for model in ("alexnet", "resnet34"):
        run = work / "runs" / model
        if not (run / "checkpoints" / "best.pt").is_file():
            train_model(cfg, model, tiles, run)
        evaluate_run(run, "test", cfg.evaluate)
        runs.append(run)
    compare_runs(runs, work / "compare")
    DOCS_IMG.mkdir(exist_ok=True)
    shutil.copy(work / "compare" / "comparison.md", DOCS_IMG / "evaluation_sample_comparison.md")
    for name in ("roc_tile", "confusion_patient", "reliability_tile"):
        # plots of the second model (resnet34): the first collapses to one class on this tiny run
        shutil.copy(runs[1] / "plots" / f"{name}.png", DOCS_IMG / f"evaluation_sample_{name}.png")
    print((work / "compare" / "comparison.md").read_text())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("/tmp/her2scope_eval_sample"))
