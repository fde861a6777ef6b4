"""The slides to tile: from a manifest (the project's one manifest reader) or from bare paths."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from her2scope.tiling.table import COPIED_COLUMNS

log = logging.getLogger(__name__)


@dataclass
class SlideEntry:
    """One slide to tile: paths are absolute."""

    slide_id: str
    slide_path: Path
    roi_path: Path | None = None
    mpp: float | None = None
    extra: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # added to the slide's sidecar


def read_tiling_manifest(
    manifest_csv: str | Path, allow_absolute: bool = False
) -> list[SlideEntry]:
    """The slides of a manifest, read by the project's one manifest reader.

    Uses :func:`her2scope.cohort.manifest.read_manifest` (same CSV, path and slide-id rules as
    training, including the refusal of absolute paths unless ``allow_absolute``, which is
    ``cohort.allow_absolute_paths``) but needs only ``slide_id`` and ``slide_path``;
    ``roi_path``, ``mpp``, and ``patient_id``, ``center``, ``label`` (copied to the tile table)
    are optional and labels are not checked: tiling comes before labels are needed, and a cohort
    is often tiled before it is scored. Every problem is reported at once as
    :class:`ManifestError`. A slide with an empty ``roi_path`` is tiled on its tissue mask and its
    sidecar says so in ``warnings``.
    """
    from her2scope.cohort.manifest import TILING_COLUMNS, mpp_of, read_manifest

    man = read_manifest(
        manifest_csv, scheme=None, allow_absolute=allow_absolute, required=TILING_COLUMNS
    )
    for note in man.notes:
        log.warning("manifest '%s': %s", man.path, note)
    has_roi_column = "roi_path" in man.df.columns
    entries: list[SlideEntry] = []
    for rec in man.df.to_dict("records"):
        roi = rec.get("roi_path") or None
        warnings = (
            ["the manifest gives no roi_path: tiled on the whole detected tissue, not an ROI"]
            if has_roi_column and roi is None
            else []
        )
        entries.append(
            SlideEntry(
                rec["slide_id"],
                Path(rec["slide_path"]),
                Path(roi) if roi else None,
                mpp_of(rec.get("mpp", "")),
                {c: rec[c] for c in COPIED_COLUMNS if c in rec},
                warnings,
            )
        )
    return entries


def entries_from_paths(
    slides: Sequence[str | Path], rois_dir: str | Path | None = None, mpp: float | None = None
) -> list[SlideEntry]:
    """Slide entries for bare slide paths; ROIs matched by file stem in ``rois_dir``.

    A slide without a matching ROI file is tiled on its tissue mask (with a log message).
    """
    from her2scope.slide.rois import find_roi_file

    entries: list[SlideEntry] = []
    used: dict[str, int] = {}
    for s in slides:
        p = Path(s).expanduser().resolve()
        stem = p.name.split(".")[0] if p.name.lower().endswith(".ome.tiff") else p.stem
        sid = stem
        if sid in used:
            used[sid] += 1
            sid = f"{stem}_{used[stem]}"
        else:
            used[sid] = 1
        roi = find_roi_file(rois_dir, stem) if rois_dir is not None else None
        if rois_dir is not None and roi is None:
            log.warning("no ROI file for %s in %s; tiling its tissue mask", p.name, rois_dir)
        entries.append(SlideEntry(sid, p, roi, mpp, {c: "" for c in COPIED_COLUMNS}))
    return entries
