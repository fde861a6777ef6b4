"""Draw docs/img/cohort_tiles.png: one tile per HER2 grade (columns) per centre (rows).

Renders a small SYNTHETIC cohort (6 patients, 2048 px slides, otherwise the generator's defaults),
then for every (centre, grade) picks a typical tumour-rich tile (the median DAB among tiles with
≥ 60 % tumour): the top panel shows it as the demo sees it (256 µm at 1 µm/px, pyramid level 1),
the bottom panel a 128 µm detail at full resolution (0.5 µm/px) where membranes are visible. Run:

    .venv/bin/python docs/make_cohort_figure.py [--out docs/img/cohort_tiles.png]
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path


def pick_tiles(
    manifest: Path, tile_level0: int = 512, min_tumour: float = 0.6
) -> dict[tuple[str, str], tuple[float, str, int, int]]:
    """For each (centre, label): a typical tumour-rich tile, as (mean DAB OD, slide path, x, y).

    Candidates are tiles (level-0 ``x, y``, half-overlapping) with at least ``min_tumour`` tumour
    pixels in the mask; the one with the median mean DAB OD of its (centre, label) is chosen, so
    the picture shows a typical tile of each grade, not the strongest one.
    """
    import cv2
    import pandas as pd

    from her2scope.slide.reader import open_slide
    from her2scope.synth.check import deconvolve_od

    df = pd.read_csv(manifest, dtype=str)
    cands: dict[tuple[str, str], list[tuple[float, str, int, int]]] = {}
    for row in df.itertuples():
        mask = cv2.imread(str(manifest.parent / "masks" / f"{row.slide_id}.png"), 0)
        h, w = mask.shape
        with open_slide(manifest.parent / row.slide_path) as s:
            rgb = s.read_region((0, 0), 0, (w, h))
        dab = deconvolve_od(rgb)[..., 1]
        for y in range(0, h - tile_level0 + 1, tile_level0 // 2):
            for x in range(0, w - tile_level0 + 1, tile_level0 // 2):
                win = (slice(y, y + tile_level0), slice(x, x + tile_level0))
                if (mask[win] >= 2).mean() >= min_tumour:
                    mean_dab = float(dab[win].mean())
                    cands.setdefault((row.center, row.label), []).append(
                        (mean_dab, row.slide_path, x, y)
                    )
    return {k: sorted(v)[len(v) // 2] for k, v in cands.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "img" / "cohort_tiles.png")
    args = ap.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    from her2scope._io import atomic_path
    from her2scope.slide.reader import open_slide
    from her2scope.synth import make_cohort

    grades = ("1+", "2+", "3+")
    centres = ("A", "B")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = make_cohort(tmp, n_patients=6, n_centers=2, seed=0, slide_px=2048, masks=True)
        picks = pick_tiles(manifest)
        fig, axes = plt.subplots(4, 3, figsize=(6.6, 9.2), dpi=100)
        for ci, centre in enumerate(centres):
            for gi, grade in enumerate(grades):
                _, rel, x, y = picks[(centre, grade)]
                with open_slide(manifest.parent / rel) as s:
                    tile = s.read_region((x, y), 1, (256, 256))  # 256 µm at 1 µm/px
                    detail = s.read_region((x + 128, y + 128), 0, (256, 256))  # 128 µm
                for panel, img in ((0, tile), (2, detail)):
                    ax = axes[panel + ci, gi]
                    ax.imshow(img)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if gi == 0:
                        scale = "1 µm/px" if panel == 0 else "0.5 µm/px"
                        ax.set_ylabel(f"centre {centre}\n{scale}")
                    if panel + ci in (0, 2):
                        ax.set_title(f"HER2 {grade}")
        fig.suptitle("SYNTHETIC her2scope cohort (not patient data)", fontsize=11)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
    buf.seek(0)
    img = Image.open(buf).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp_png:
        img.save(tmp_png, format="PNG", optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
