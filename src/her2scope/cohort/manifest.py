"""Manifest validation: every problem reported at once, with CSV row numbers.

A manifest is a CSV with one row per slide. Required columns: ``slide_id, patient_id, label,
slide_path``; ``center`` is needed by the external-centre split (missing → every slide in centre
``"all"``); ``roi_path`` and ``mpp`` are optional. Relative paths are resolved against the
manifest's folder and may not leave it; absolute paths are refused unless ``allow_absolute``.
Row numbers in messages are CSV line numbers (the header is line 1).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from her2scope._io import read_manifest_csv
from her2scope.errors import ManifestError
from her2scope.labels import get_scheme

REQUIRED_COLUMNS: tuple[str, ...] = ("slide_id", "patient_id", "label", "slide_path")


def load_manifest(
    path: str | Path, scheme: str = "study", allow_absolute: bool = False
) -> pd.DataFrame:
    """Read and validate a manifest; return it with canonical ``label``, ``label_idx``, ``label_raw``.

    ``slide_path`` (and ``roi_path`` when given) become absolute resolved paths. Raises
    ``ManifestError`` listing every problem: missing columns, empty cells, labels the scheme does
    not know, duplicate slide ids, missing files, paths escaping the manifest's folder, and
    patients whose slides carry different labels.
    """
    path = Path(path)
    label_scheme = get_scheme(scheme)
    df = read_manifest_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            path,
            [
                f"missing column(s) {', '.join(missing)} "
                f"(found: {', '.join(df.columns) or 'none'}; required: {', '.join(REQUIRED_COLUMNS)})"
            ],
        )
    if len(df) == 0:
        raise ManifestError(path, ["no slides listed"])
    df = df.apply(lambda col: col.str.strip())
    if "center" not in df.columns:
        df["center"] = "all"
    base = path.resolve().parent
    problems: list[str] = []
    seen: dict[str, int] = {}
    labels, idxs, slide_paths, roi_paths = [], [], [], []
    for i, row in enumerate(df.itertuples(index=False)):
        line = i + 2
        rec = row._asdict()
        for col in ("slide_id", "patient_id", "label", "slide_path"):
            if not rec[col]:
                problems.append(f"row {line}: empty {col}")
        sid = rec["slide_id"]
        if sid:
            if sid in seen:
                problems.append(
                    f"row {line}: duplicate slide_id '{sid}' (first on row {seen[sid]})"
                )
            else:
                seen[sid] = line
        cls = label_scheme.class_of(rec["label"]) if rec["label"] else None
        if rec["label"] and cls is None:
            problems.append(
                f"row {line}: label '{rec['label']}' is not a class of scheme "
                f"'{label_scheme.name}' ({label_scheme.describe()}); fix the label or choose "
                "another cohort.label_scheme"
            )
        labels.append(cls)
        idxs.append(-1 if cls is None else label_scheme.classes.index(cls))
        slide_paths.append(
            _resolve(base, rec["slide_path"], f"row {line}: slide_path", allow_absolute, problems)
            if rec["slide_path"]
            else None
        )
        roi = rec.get("roi_path", "")
        roi_paths.append(
            _resolve(base, roi, f"row {line}: roi_path", allow_absolute, problems) if roi else None
        )
    df["label_raw"] = df["label"]
    df["label"] = labels
    df["label_idx"] = idxs
    df["slide_path"] = [str(p) if p else "" for p in slide_paths]
    if "roi_path" in df.columns:
        df["roi_path"] = [str(p) if p else "" for p in roi_paths]
    known = df[df["label"].notna() & (df["patient_id"] != "")]
    for pid, group in known.groupby("patient_id", sort=True):
        if group["label"].nunique() > 1:
            detail = ", ".join(
                f"row {int(i) + 2} '{r.slide_id}' = {r.label_raw}" for i, r in group.iterrows()
            )
            problems.append(
                f"patient '{pid}' has slides with different labels ({detail}); "
                "a patient must have one HER2 score"
            )
    if problems:
        raise ManifestError(path, problems)
    return df.reset_index(drop=True)


def _resolve(
    base: Path, value: str, where: str, allow_absolute: bool, problems: list[str]
) -> Path | None:
    p = Path(value).expanduser()
    if p.is_absolute():
        if not allow_absolute:
            problems.append(
                f"{where} '{value}' is absolute; use a path relative to the manifest's folder "
                "or allow absolute paths (cohort.allow_absolute_paths=true)"
            )
            return None
        full = p.resolve()
    else:
        full = (base / p).resolve()
        if not full.is_relative_to(base) and not allow_absolute:
            problems.append(
                f"{where} '{value}' leaves the manifest's folder {base}; move the file or allow "
                "absolute paths (cohort.allow_absolute_paths=true)"
            )
            return None
    if not full.exists():
        problems.append(f"{where} '{value}' not found (looked for {full})")
        return None
    return full
