"""Check cell scoring against ground truth: matching by centroid, detection, classes, slide calls.

Run on a synthetic cohort written with ``her2scope synth --cells`` after ``her2scope cells``::

    python -m her2scope.cells.evaluate COHORT_DIR CELLS_DIR [--max-dist-um 4]
    python -m her2scope.cells.evaluate COHORT_DIR CELLS_DIR --fit-thresholds A
    python -m her2scope.cells.evaluate DEEPLIIF/Sample_Dataset - --deepliif

prints and returns, per centre: nucleus detection precision / recall (inside the ROI), per-cell
intensity-class balanced accuracy (matched cells), slide-call agreement with the labels (quadratic
κ over 0/1+/2+/3+, and the confusion matrix over 0-null/0-ultralow/1+/2+/3+). Numbers measured on
the synthetic cohort are SYNTHETIC — not clinical performance.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from her2scope.cells.classify import CALLS, INTENSITY_CLASSES, raw_od
from her2scope.cells.fit import call_index, label_index, quadratic_kappa


def match_points(
    pred_xy: np.ndarray, true_xy: np.ndarray, max_dist: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matches (closest pairs first) of points within ``max_dist``: index arrays."""
    from scipy.spatial import cKDTree

    pred_xy = np.asarray(pred_xy, np.float64).reshape(-1, 2)
    true_xy = np.asarray(true_xy, np.float64).reshape(-1, 2)
    if len(pred_xy) == 0 or len(true_xy) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    pairs = cKDTree(pred_xy).sparse_distance_matrix(
        cKDTree(true_xy), max_dist, output_type="ndarray"
    )
    order = np.lexsort((pairs["j"], pairs["i"], pairs["v"]))  # by distance, ties by index
    used_p = np.zeros(len(pred_xy), bool)
    used_t = np.zeros(len(true_xy), bool)
    pi, tj = [], []
    for k in order:
        i, j = int(pairs["i"][k]), int(pairs["j"][k])
        if used_p[i] or used_t[j]:
            continue
        used_p[i] = used_t[j] = True
        pi.append(i)
        tj.append(j)
    return np.asarray(pi, np.int64), np.asarray(tj, np.int64)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[float | None, list[int]]:
    """Mean per-class recall over the classes present in ``y_true`` (and which were present)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    present = sorted(int(c) for c in np.unique(y_true))
    if not present:
        return None, []
    rec = [float(np.mean(y_pred[y_true == c] == c)) for c in present]
    return float(np.mean(rec)), present


def evaluate_synthetic(
    cohort_dir: str | Path, cells_dir: str | Path, max_dist_um: float = 4.0
) -> dict[str, Any]:
    """Compare ``cells_dir`` outputs with the cohort's ground truth (see the module docstring)."""
    import pandas as pd
    from shapely import contains_xy

    from her2scope.slide.rois import load_rois

    cohort_dir, cells_dir = Path(cohort_dir), Path(cells_dir)
    info = json.loads((cohort_dir / "cohort.json").read_text(encoding="utf-8"))
    truth_call = {s["slide_id"]: s.get("asco_call", s["label"]) for s in info["slides"]}
    man = pd.read_csv(cohort_dir / "manifest.csv", dtype=str)
    per_centre: dict[str, dict[str, list[Any]]] = {}
    cols = ["slide_id", "center", "roi_path"]
    for slide_id, center, roi_path in man[cols].itertuples(index=False, name=None):
        pq = cells_dir / f"{slide_id}.cells.parquet"
        js = cells_dir / f"{slide_id}.cells.json"
        if not pq.is_file():
            continue
        pred = pd.read_parquet(pq)
        summ = json.loads(js.read_text(encoding="utf-8"))
        gt = pd.read_parquet(cohort_dir / "cells" / f"{slide_id}.parquet")
        roi = load_rois(cohort_dir / roi_path)
        gt = gt[contains_xy(roi, gt["x"].to_numpy(), gt["y"].to_numpy())]
        pi, tj = match_points(
            pred[["x", "y"]].to_numpy(), gt[["x", "y"]].to_numpy(), max_dist_um / summ["mpp"][0]
        )
        c = per_centre.setdefault(
            center,
            {k: [] for k in ("tp", "n_pred", "n_true", "t_cls", "p_cls", "label", "call", "ids")},
        )
        c["tp"].append(len(pi))
        c["n_pred"].append(len(pred))
        c["n_true"].append(len(gt))
        c["t_cls"].append(gt["membrane_class"].cat.codes.to_numpy()[tj])
        c["p_cls"].append(pred["intensity_class"].cat.codes.to_numpy()[pi])
        c["label"].append(truth_call[slide_id])
        c["call"].append(summ["call"])
        c["ids"].append(slide_id)
    out: dict[str, Any] = {"synthetic": True, "max_dist_um": max_dist_um, "centers": {}}
    for centre, c in sorted(per_centre.items()):
        tp, n_pred, n_true = sum(c["tp"]), sum(c["n_pred"]), sum(c["n_true"])
        bal, present = balanced_accuracy(np.concatenate(c["t_cls"]), np.concatenate(c["p_cls"]))
        li = [label_index(lab) for lab in c["label"]]
        ci = [call_index(k) if k is not None else 0 for k in c["call"]]
        kappa = quadratic_kappa(li, ci, 4)  # type: ignore[arg-type]
        conf = np.zeros((len(CALLS), len(CALLS)), int)
        for lab, call in zip(c["label"], c["call"], strict=True):
            t = CALLS.index(lab) if lab in CALLS else CALLS.index("0-null" if lab == "0" else lab)
            if call is not None:
                conf[t, CALLS.index(call)] += 1
        out["centers"][centre] = {
            "n_slides": len(c["ids"]),
            "nucleus_precision": tp / n_pred if n_pred else None,
            "nucleus_recall": tp / n_true if n_true else None,
            "cell_class_balanced_accuracy": bal,
            "cell_classes_present": [INTENSITY_CLASSES[k] for k in present],
            "slide_kappa_quadratic": kappa,
            "slide_accuracy_5class": float(np.trace(conf) / max(conf.sum(), 1)),
            "confusion_5class": {"rows_true_cols_called": list(CALLS), "matrix": conf.tolist()},
            "slides": dict(zip(c["ids"], zip(c["label"], c["call"], strict=True), strict=True)),
        }
    return out


def evaluate_deepliif(
    folder: str | Path, mpp: float = 0.25, max_dist_um: float = 4.0, cfg: Any = None
) -> dict[str, Any]:
    """Nucleus detection precision / recall on DeepLIIF's ``Sample_Dataset`` (real Ki67 IHC).

    ``folder`` holds ``test/*.png`` (six 512-px panels side by side; the first is the IHC image)
    and ``test_groundtruth/*.png`` (red: marker-positive cell, blue: negative, green: outline).
    The images store no resolution: ``mpp`` is given (DeepLIIF's 40× scans, ≈ 0.25 µm/px).
    Recall is also given separately for negative (hematoxylin) and positive (DAB-filled nuclei,
    Ki67) cells: the detector reads hematoxylin only, as HER2 scoring needs, so DAB-filled nuclei
    are expected to be missed.
    """
    import cv2

    from her2scope.cells.config import CellConfig
    from her2scope.cells.segment import analyse_region
    from her2scope.cells.slide import load_stain_matrix

    folder = Path(folder)
    cfg = cfg or CellConfig(target_mpp=mpp)
    tot = {"tp": 0, "n_pred": 0, "n_neg": 0, "n_pos": 0, "tp_neg": 0, "tp_pos": 0}
    images = sorted((folder / "test").glob("*.png"))
    for path in images:
        rgb = np.ascontiguousarray(_read_rgb(path)[:, :512])
        gt = _read_rgb(folder / "test_groundtruth" / path.name)
        matrix, _ = load_stain_matrix(None, [rgb])
        rc = analyse_region(rgb, matrix, mpp, cfg)
        xy, pos = [], []
        for channel, is_pos in ((0, True), (2, False)):
            mask = (gt[..., channel] > 128).astype(np.uint8)
            _, _, stats, cen = cv2.connectedComponentsWithStats(mask, connectivity=4)
            big = stats[1:, cv2.CC_STAT_AREA] >= 30  # specks of a label are not cells
            xy.append(cen[1:][big])
            pos.append(np.full(int(big.sum()), is_pos))
        txy, tpos = np.concatenate(xy), np.concatenate(pos)
        pi, tj = match_points(np.c_[rc.x, rc.y], txy, max_dist_um / mpp)
        tot["tp"] += len(pi)
        tot["n_pred"] += rc.n
        tot["n_neg"] += int((~tpos).sum())
        tot["n_pos"] += int(tpos.sum())
        tot["tp_neg"] += int((~tpos[tj]).sum())
        tot["tp_pos"] += int(tpos[tj].sum())
    n_true = tot["n_neg"] + tot["n_pos"]
    return {
        "n_images": len(images),
        "mpp": mpp,
        **tot,
        "precision": tot["tp"] / tot["n_pred"] if tot["n_pred"] else None,
        "recall": tot["tp"] / n_true if n_true else None,
        "recall_negative": tot["tp_neg"] / tot["n_neg"] if tot["n_neg"] else None,
        "recall_positive": tot["tp_pos"] / tot["n_pos"] if tot["n_pos"] else None,
    }


def matched_truth(
    cohort_dir: str | Path, cells_dir: str | Path, centers: list[str], max_dist_um: float = 4.0
) -> dict[str, np.ndarray]:
    """Matched cells of the slides of ``centers``: measured (``od`` unscaled p90, ``completeness``)
    and true (``class``, ``complete``) values, for :func:`her2scope.cells.fit.fit_thresholds`."""
    import pandas as pd

    cohort_dir, cells_dir = Path(cohort_dir), Path(cells_dir)
    man = pd.read_csv(cohort_dir / "manifest.csv", dtype=str)
    parts: dict[str, list[np.ndarray]] = {"od": [], "completeness": [], "class": [], "complete": []}
    for slide_id in man.loc[man["center"].isin(centers), "slide_id"].astype(str):
        pq = cells_dir / f"{slide_id}.cells.parquet"
        if not pq.is_file():
            continue
        summ = json.loads((cells_dir / f"{slide_id}.cells.json").read_text(encoding="utf-8"))
        pred = pd.read_parquet(pq)
        gt = pd.read_parquet(cohort_dir / "cells" / f"{slide_id}.parquet")
        pi, tj = match_points(
            pred[["x", "y"]].to_numpy(), gt[["x", "y"]].to_numpy(), max_dist_um / summ["mpp"][0]
        )
        used = summ["config"]
        od = raw_od(
            pred["membrane_od_p90"].to_numpy()[pi],
            used["dab_scale"],
            used["dab_noise_od"],
            used.get("center_noise_od"),
        )
        parts["od"].append(od)
        parts["completeness"].append(pred["completeness"].to_numpy()[pi])
        parts["class"].append(gt["membrane_class"].cat.codes.to_numpy()[tj])
        parts["complete"].append(gt["complete"].to_numpy()[tj])
    return {k: np.concatenate(v) for k, v in parts.items()}


def _read_rgb(path: Path) -> np.ndarray:
    """RGB pixels of an image file; ``ValueError`` naming it when OpenCV cannot decode it."""
    import cv2

    bgr = cv2.imread(str(path))
    if bgr is None:
        raise ValueError(f"image '{path}' is missing or not a readable image")
    return bgr[..., ::-1]


def main(argv: list[str] | None = None) -> None:  # pragma: no cover - a measurement entry point
    import argparse

    from her2scope.cells.fit import fit_thresholds

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cohort_dir")
    ap.add_argument("cells_dir")
    ap.add_argument("--max-dist-um", type=float, default=4.0)
    ap.add_argument(
        "--fit-thresholds",
        metavar="CENTRES",
        help="instead: fit OD thresholds on the matched cells of these centres (e.g. A)",
    )
    ap.add_argument(
        "--deepliif",
        action="store_true",
        help="instead: COHORT_DIR is DeepLIIF's Sample_Dataset; print nucleus precision/recall",
    )
    a = ap.parse_args(argv)
    if a.deepliif:
        print(json.dumps(evaluate_deepliif(a.cohort_dir, max_dist_um=a.max_dist_um), indent=1))
        return
    if a.fit_thresholds:
        m = matched_truth(a.cohort_dir, a.cells_dir, a.fit_thresholds.split(","), a.max_dist_um)
        fit = fit_thresholds(m["od"], m["completeness"], m["class"], m["complete"])
        print(json.dumps({"n_cells": int(m["od"].size), **fit}, indent=1))
        return
    print(json.dumps(evaluate_synthetic(a.cohort_dir, a.cells_dir, a.max_dist_um), indent=1))


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
