"""Sanity checks of a synthetic cohort: is the grade learnable, and is it not trivial?

The "trivial baseline" is a multinomial logistic regression on a per-tile histogram of DAB optical
density (Ruifrok–Johnston colour deconvolution, no stain normalisation). It is evaluated at tile
level with patient-grouped cross-validation inside each centre, and across centres (train on one,
test on another). A cohort whose baseline reaches macro-AUC ≈ 1 would make every model look perfect;
one at ≈ 0.5 would be unlearnable. Numbers measured here describe synthetic data only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from her2scope.synth import params as P

#: DAB OD histogram bin edges of the baseline features.
DAB_BINS = np.array([-1.0, 0.02, 0.05, 0.08, 0.12, 0.17, 0.23, 0.3, 0.4, 0.55, 0.75, 1.0, 9.0])


def deconvolve_od(rgb: np.ndarray, white: float = 255.0) -> np.ndarray:
    """Hematoxylin, DAB and residual concentrations (H×W×3) of RGB pixels, Ruifrok–Johnston vectors.

    Uses base-10 optical density ``OD = −log10(I / white)`` and the textbook (not the centre's)
    stain vectors, like a user's off-the-shelf deconvolution would.
    """
    m = np.stack([P.unit(P.RJ_HEMATOXYLIN), P.unit(P.RJ_DAB), P.unit(P.TISSUE_RESIDUAL)])
    inv = np.linalg.inv(m)  # rows: stains, so conc = od @ inv
    od = -np.log10(np.maximum(rgb.astype(np.float32), 1.0) / white)
    return od @ inv.astype(np.float32)


@dataclass
class TileSet:
    """Tile-level features with their slide, patient, centre and label."""

    features: np.ndarray  # n × k
    slide_id: list[str]
    patient_id: list[str]
    center: list[str]
    label: list[str]


def tile_features(
    manifest: str | Path, tile_px: int = 256, level: int = 1, max_white: float = 0.6
) -> TileSet:
    """DAB-OD histogram features of every ROI tile of every slide in ``manifest``.

    Tiles are ``tile_px`` squares read at pyramid ``level`` on a grid from the slide origin; a
    tile is kept when its centre lies in the slide's ROI and at most ``max_white`` of its pixels
    are white (all channels > 220), the study's rule.
    """
    import pandas as pd
    from shapely.geometry import Point, shape

    from her2scope.slide.reader import open_slide

    manifest = Path(manifest)
    df = pd.read_csv(manifest, dtype=str)
    feats: list[np.ndarray] = []
    out = TileSet(np.empty((0, len(DAB_BINS) - 1)), [], [], [], [])
    cols = ["slide_id", "patient_id", "center", "label", "roi_path", "slide_path"]
    for slide_id, patient_id, center, label, roi_path, slide_path in df[cols].itertuples(
        index=False, name=None
    ):
        fc = json.loads((manifest.parent / roi_path).read_text())
        rois = [shape(f["geometry"]) for f in fc["features"]]
        with open_slide(manifest.parent / slide_path) as s:
            ds = s.level_downsamples[level]
            w, h = s.level_dimensions[level]
            img = s.read_region((0, 0), level, (w, h))
        for ty in range(0, h - tile_px + 1, tile_px):
            for tx in range(0, w - tile_px + 1, tile_px):
                centre = Point((tx + tile_px / 2) * ds, (ty + tile_px / 2) * ds)
                if not any(r.contains(centre) for r in rois):
                    continue
                tile = img[ty : ty + tile_px, tx : tx + tile_px]
                white = np.all(tile > 220, axis=2)
                if white.mean() > max_white:
                    continue
                dab = deconvolve_od(tile)[..., 1][~white]
                hist = np.histogram(dab, bins=DAB_BINS)[0] / dab.size
                feats.append(hist)
                out.slide_id.append(slide_id)
                out.patient_id.append(patient_id)
                out.center.append(center)
                out.label.append(label)
    if feats:
        out.features = np.stack(feats)
    return out


def _macro_auc(y: list[str], proba: np.ndarray, classes: list[str]) -> float:
    from sklearn.metrics import roc_auc_score

    present = sorted(set(y))
    if present != sorted(classes):
        raise ValueError(f"macro-AUC needs every class; present: {present}, expected {classes}")
    return float(roc_auc_score(y, proba, multi_class="ovr", average="macro", labels=classes))


def _model() -> Any:  # an sklearn Pipeline (sklearn has no type information)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))


def baseline_auc(tiles: TileSet) -> dict[str, float]:
    """Tile-level macro-AUC of the DAB-histogram baseline.

    Keys ``within_<C>``: patient-grouped cross-validation (leave-one-patient-out, at most 6 folds)
    inside centre C; ``<A>_to_<B>``: trained on all tiles of centre A, tested on centre B.
    """
    from sklearn.model_selection import GroupKFold

    x = tiles.features
    y = np.asarray(tiles.label)
    g = np.asarray(tiles.patient_id)
    c = np.asarray(tiles.center)
    classes = sorted(set(tiles.label))
    out: dict[str, float] = {}
    for centre in sorted(set(tiles.center)):
        sel = c == centre
        xs, ys, gs = x[sel], y[sel], g[sel]
        n_groups = len(set(gs))
        proba = np.zeros((xs.shape[0], len(classes)))
        for tr, te in GroupKFold(n_splits=min(6, n_groups)).split(xs, ys, gs):
            model = _model().fit(xs[tr], ys[tr])
            cols = [list(model.classes_).index(k) if k in model.classes_ else None for k in classes]
            p = model.predict_proba(xs[te])
            proba[te] = np.stack(
                [p[:, j] if j is not None else np.zeros(len(te)) for j in cols], axis=1
            )
        out[f"within_{centre}"] = _macro_auc(list(ys), proba, classes)
    for a in sorted(set(tiles.center)):
        for b in sorted(set(tiles.center)):
            if a == b:
                continue
            model = _model().fit(x[c == a], y[c == a])
            out[f"{a}_to_{b}"] = _macro_auc(
                list(y[c == b]), model.predict_proba(x[c == b]), classes
            )
    return out
