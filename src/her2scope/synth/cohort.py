"""Plan and write a synthetic dual-centre HER2 IHC cohort (slides, ROIs, manifest, sidecar).

Layout under ``out_dir``::

    manifest.csv             slide_id, patient_id, center, label, slide_path, roi_path
    cohort.json              SYNTHETIC statement, seed, parameters, centre profiles, per-slide facts
    slides/<slide_id>.tif    pyramidal JPEG TIFF, 0.5 µm/px, description says SYNTHETIC
    rois/<slide_id>.geojson  QuPath-style FeatureCollection, one "Tumor" polygon, level-0 px
    cells/<slide_id>.parquet (cells=True) tumour cells: x, y, membrane_class, completeness, …
    masks/<slide_id>.png     (masks=True) level-0 labels: 0 glass, 1 tissue, 2 tumour, 3 membrane

The cohort is the same, byte for byte, for the same arguments (``workers`` does not matter).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from her2scope._io import atomic_path, write_json, write_text
from her2scope._pool import process_pool
from her2scope._progress import track
from her2scope.errors import ConfigError
from her2scope.labels import HER2_SCORES, parse_score
from her2scope.synth import params as P
from her2scope.synth.centres import centre_slide_px
from her2scope.synth.render import SlidePlan, render_slide

log = logging.getLogger(__name__)

#: Level-0 side of the default slides, px (2 mm at 0.5 µm/px): about 20–60 tiles of 256 µm
#: inside the ROI.
DEFAULT_SLIDE_PX = 4096
#: Fraction of patients with a second slide (the study: 135 slides from 118 patients).
TWO_SLIDE_FRACTION = 0.15
MANIFEST_COLUMNS = ("slide_id", "patient_id", "center", "label", "slide_path", "roi_path")
SYNTHETIC_NOTE = (
    "SYNTHETIC her2scope cohort rendered from first principles for tests and demos; "
    "not patient data, and no result on it is a clinical performance claim."
)


@dataclass(frozen=True)
class _Patient:
    patient_id: str
    center: int
    label: str
    n_slides: int
    offset: float
    zero_kind: str | None = None  # label "0": "0-null" or "0-ultralow" (ASCO/CAP 2023)


def _check_args(
    n_patients: int, n_centers: int, slide_px: int, labels: Sequence[str], workers: int
) -> tuple[str, ...]:
    problems = []
    if workers < 1:
        problems.append(f"workers={workers}: use 1 or more processes")
    if not 1 <= n_centers <= 26:
        problems.append(f"n_centers={n_centers}: use 1 to 26 centres")
    if n_patients < max(1, n_centers):
        problems.append(f"n_patients={n_patients}: need at least one patient per centre")
    if slide_px < 1024:
        problems.append(f"slide_px={slide_px}: use at least 1024 (the ROI must hold tiles)")
    canon = []
    for raw in labels:
        score = parse_score(raw)
        if score is None:
            problems.append(f"label {raw!r}: not a HER2 score; use 0, 1+, 2+ or 3+")
        else:
            canon.append(score)
    if not labels:
        problems.append("labels: give at least one HER2 score, e.g. 1+,2+,3+")
    if problems:
        raise ConfigError("synthetic cohort: " + "; ".join(problems))
    return tuple(canon)


def _plan(n_patients: int, n_centers: int, labels: tuple[str, ...], seed: int) -> list[_Patient]:
    """Patients, their centre, label, slide count and membrane-DAB offset.

    Patients are split evenly over centres and labels cycle through ``labels`` over the whole
    cohort (a repeated label is a weight), so classes are balanced overall and, when the counts
    allow, within each centre; the order is then shuffled so patient ids do not reveal labels.
    """
    rng = np.random.default_rng([seed, 1])
    per_center = [n_patients // n_centers + (i < n_patients % n_centers) for i in range(n_centers)]
    start = int(rng.integers(len(labels)))
    centres = [c for c, n in enumerate(per_center) for _ in range(n)]
    rows = [(c, labels[(start + k) % len(labels)]) for k, c in enumerate(centres)]
    order = rng.permutation(len(rows))
    rows = [rows[i] for i in order]
    n_two = round(TWO_SLIDE_FRACTION * n_patients) if n_patients >= 3 else 0
    two = set(rng.choice(n_patients, size=n_two, replace=False).tolist())
    width = max(2, len(str(n_patients)))
    patients = [
        _Patient(
            patient_id=f"P{i + 1:0{width}d}",
            center=c,
            label=label,
            n_slides=2 if i in two else 1,
            offset=float(rng.normal(0.0, P.SIGMA_PATIENT)),
        )
        for i, (c, label) in enumerate(rows)
    ]
    # HER2 0 comes as two kinds (null, ultralow), alternating over the 0 patients from a
    # seed-drawn start; a separate stream, so the other patients are drawn as before
    flip = int(np.random.default_rng([seed, 3]).integers(2))
    zeros = [k for k, p in enumerate(patients) if p.label == "0"]
    for n, k in enumerate(zeros):
        patients[k] = replace(patients[k], zero_kind=P.ZERO_KINDS[(n + flip) % 2])
    return patients


def make_cohort(
    out_dir: str | Path,
    n_patients: int = 24,
    n_centers: int = 2,
    seed: int = 0,
    slide_px: int = DEFAULT_SLIDE_PX,
    labels: Sequence[str] = ("1+", "2+", "3+"),
    cells: bool = False,
    masks: bool = False,
    workers: int = 1,
) -> Path:
    """Render a synthetic multi-centre HER2 IHC cohort into ``out_dir``; return the manifest path.

    ``slide_px`` is the level-0 side of each square slide (0.5 µm/px). ``labels`` lists the HER2
    scores to draw patients from (cycled over the cohort; repeat one to weight it). ``cells``
    adds ``cells/<slide_id>.parquet`` (per tumour cell ground truth), ``masks`` adds
    ``masks/<slide_id>.png`` (level-0 labels). ``workers`` renders slides in parallel processes
    without changing the output. Existing files of the same names are replaced. Bad arguments
    raise ConfigError before anything is written. Layout: see the module docstring.
    """
    labels = _check_args(n_patients, n_centers, slide_px, labels, workers)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    profiles = P.center_profiles(n_centers, seed)
    patients = _plan(n_patients, n_centers, labels, seed)

    jobs: list[tuple[SlidePlan, str, bool, bool]] = []
    for p_index, pat in enumerate(patients):
        for k in range(pat.n_slides):
            plan = SlidePlan(
                slide_id=f"{pat.patient_id}_S{k + 1}",
                patient_id=pat.patient_id,
                center=profiles[pat.center],
                label=pat.label,
                slide_px=centre_slide_px(slide_px, profiles[pat.center]),
                patient_offset=pat.offset,
                seed=(seed, 2, p_index, k),
                zero_kind=pat.zero_kind,
            )
            jobs.append((plan, str(out), cells, masks))

    results: list[dict[str, Any]] = []
    desc = f"synth: rendering {len(jobs)} slides"
    if workers > 1 and len(jobs) > 1:
        with process_pool(workers) as pool:
            results = list(track(pool.map(_render_and_write, jobs), desc, total=len(jobs)))
    else:
        results = [_render_and_write(j) for j in track(jobs, desc, total=len(jobs))]

    lines = [",".join(MANIFEST_COLUMNS)]
    for r in results:
        lines.append(
            ",".join(
                [
                    r["slide_id"],
                    r["patient_id"],
                    r["center"],
                    r["label"],
                    r["slide_path"],
                    r["roi_path"],
                ]
            )
        )
    manifest = out / "manifest.csv"
    write_text(manifest, "\n".join(lines) + "\n")
    write_json(
        out / "cohort.json",
        {
            "synthetic": True,
            "note": SYNTHETIC_NOTE,
            "generator": "her2scope.synth.make_cohort",
            "parameters": {
                "n_patients": n_patients,
                "n_centers": n_centers,
                "seed": seed,
                "slide_px": slide_px,
                "labels": list(labels),
                "cells": cells,
                "masks": masks,
            },
            "mpp": P.SLIDE_MPP,
            "grade_model": {
                "membrane_classes": list(P.MEMBRANE_CLASSES),
                "membrane_od_bounds": list(P.MEMBRANE_OD_BOUNDS),
                "complete_min": P.COMPLETE_MIN,
                "grade_median_od": {k: P.GRADE_MEDIAN_OD[k] for k in HER2_SCORES},
                "sigma_patient": P.SIGMA_PATIENT,
                "sigma_slide": P.SIGMA_SLIDE,
                "sigma_spatial": P.SIGMA_SPATIAL,
                "sigma_cell": P.SIGMA_CELL,
                "spatial_scale_um": P.SPATIAL_SCALE_UM,
            },
            "centers": [p.to_dict() for p in profiles],
            "slides": results,
        },
    )
    log.info("synthetic cohort: %d slides of %d patients in %s", len(results), n_patients, out)
    return manifest


def _render_and_write(job: tuple[SlidePlan, str, bool, bool]) -> dict[str, Any]:
    """Render one slide and write its files; return its row of facts (relative paths)."""
    import cv2

    from her2scope.slide.write import write_pyramidal_tiff

    plan, out_str, want_cells, want_mask = job
    out = Path(out_str)
    r = render_slide(plan)
    sid = plan.slide_id
    description = (
        f"{SYNTHETIC_NOTE} slide_id={sid} patient_id={plan.patient_id} center={plan.center.name} "
        f"her2={plan.label} mpp={plan.center.mpp}"
    )
    slide_rel = f"slides/{sid}.tif"
    write_pyramidal_tiff(
        out / slide_rel,
        r.rgb,
        plan.center.mpp,
        quality=plan.center.jpeg_quality,
        description=description,
    )
    roi_rel = f"rois/{sid}.geojson"
    write_json(out / roi_rel, _roi_geojson(r.roi, plan))
    if want_cells:
        _write_cells(out / "cells" / f"{sid}.parquet", r.cells)
    if want_mask:
        with atomic_path(out / "masks" / f"{sid}.png") as tmp:
            if not cv2.imwrite(str(tmp), r.mask, [cv2.IMWRITE_PNG_COMPRESSION, 6]):
                raise OSError(f"could not write mask {tmp}")  # pragma: no cover
    n = r.cells["x"].size
    counts = np.bincount(r.cells["class_idx"], minlength=4)
    return {
        "slide_id": sid,
        "patient_id": plan.patient_id,
        "center": plan.center.name,
        "label": plan.label,
        "slide_path": slide_rel,
        "roi_path": roi_rel,
        "level0_px": [int(r.rgb.shape[1]), int(r.rgb.shape[0])],
        "n_tumour_cells": int(n),
        "membrane_class_fraction": {
            name: round(float(counts[i]) / n, 4) for i, name in enumerate(P.MEMBRANE_CLASSES)
        },
        "complete_fraction": round(float(np.mean(r.cells["completeness"] >= P.COMPLETE_MIN)), 4),
        "asco_cap_score": r.score,
        "asco_call": r.call,
        "log_offset": round(r.log_offset, 4),
    }


def _roi_geojson(roi: np.ndarray, plan: SlidePlan) -> dict[str, Any]:
    ring = [[round(float(x), 1), round(float(y), 1)] for x, y in roi]
    ring.append(ring[0])
    rng = np.random.default_rng([*plan.seed, 7])
    fid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
    return {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "id": fid,
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "annotation",
                    "name": f"Tumor ROI (synthetic, {plan.slide_id})",
                    "classification": {"name": "Tumor", "color": [200, 0, 0]},
                    "isLocked": False,
                },
            }
        ],
    }


def _write_cells(path: Path, cells: dict[str, np.ndarray]) -> None:
    import pandas as pd

    names = np.asarray(P.MEMBRANE_CLASSES)
    df = pd.DataFrame(
        {
            "x": cells["x"].astype(np.float32),
            "y": cells["y"].astype(np.float32),
            "membrane_class": pd.Categorical(
                names[cells["class_idx"]], categories=list(P.MEMBRANE_CLASSES), ordered=True
            ),
            "completeness": np.round(cells["completeness"], 4).astype(np.float32),
            "complete": cells["completeness"] >= P.COMPLETE_MIN,
            "membrane_dab_od": np.round(cells["dab_od"], 4).astype(np.float32),
            "in_roi": cells["in_roi"].astype(bool),
        }
    )
    with atomic_path(path) as tmp:
        df.to_parquet(tmp, index=False, compression="zstd")
