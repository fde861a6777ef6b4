"""The one manifest reader: every problem reported at once, with CSV row numbers.

A manifest is a CSV with one row per slide. Required columns: ``slide_id, patient_id, label,
slide_path``; ``center`` is needed by the external-centre split (missing → every slide in centre
``"all"``); ``roi_path`` and ``mpp`` are optional. Tiling needs only ``slide_id`` and
``slide_path`` and reads the file with the same function (:func:`read_manifest`), so both stages
apply the same rules:

- **Paths** are resolved against the manifest's folder and may not leave it; absolute paths are
  refused unless ``allow_absolute``. Every listed file must exist.
- **CSV shape** (as Excel writes it): a UTF-8 file (a BOM is fine) separated by commas. Empty
  trailing fields (a trailing comma on every row) are ignored with a note; a row with more
  non-empty fields than the header, or fewer fields, is an error naming the row (usually an
  unquoted comma inside a value or a missing one).
- **Cells** are stripped of surrounding spaces; a newline, tab or other control character in any
  cell is an error. A ``slide_id`` names output files, so it may not contain path separators or
  ``: * ? " < > |``, start with ``.``, be longer than 200 characters, or repeat another slide id
  (even in a different case: the files would collide on macOS and Windows).
- An empty ``roi_path`` (when the column exists) is allowed: that slide is tiled on its detected
  tissue, not on an ROI, and the reader returns a note naming the rows (shown as a warning).

Row numbers in messages are CSV line numbers (the header is line 1).
"""

from __future__ import annotations

import csv
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from her2scope.errors import ManifestError
from her2scope.labels import get_scheme

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("slide_id", "patient_id", "label", "slide_path")
#: Columns tiling needs (it copies ``patient_id``, ``center`` and ``label`` when present).
TILING_COLUMNS: tuple[str, ...] = ("slide_id", "slide_path")
#: Characters a slide id may not hold: it becomes a file name (sidecar, QC picture, tiles).
FORBIDDEN_ID_CHARS = '/\\:*?"<>|'
MAX_ID_LEN = 200


@dataclass
class Manifest:
    """A validated manifest: one row per slide, the CSV line of each row, and notes."""

    path: Path
    df: pd.DataFrame
    lines: list[int]  # CSV line number of each row of ``df``
    notes: list[str] = field(default_factory=list)  # accepted oddities, shown as warnings


def load_manifest(
    path: str | Path, scheme: str = "study", allow_absolute: bool = False
) -> pd.DataFrame:
    """Read and validate a manifest; return it with canonical ``label``, ``label_idx``, ``label_raw``.

    ``slide_path`` (and ``roi_path`` when given) become absolute resolved paths (``""`` for an
    empty ``roi_path``). Raises ``ManifestError`` listing every problem: the CSV's shape, missing
    columns, empty cells, control characters, labels the scheme does not know, duplicate or
    unusable slide ids, missing files, paths escaping the manifest's folder, and patients whose
    slides carry different labels. Notes (e.g. rows without an ROI) are logged as warnings.
    """
    man = read_manifest(path, scheme=scheme, allow_absolute=allow_absolute)
    for note in man.notes:
        log.warning("manifest '%s': %s", man.path, note)
    return man.df


def read_manifest(
    path: str | Path,
    *,
    scheme: str | None = "study",
    allow_absolute: bool = False,
    required: Sequence[str] = REQUIRED_COLUMNS,
) -> Manifest:
    """Read and validate a manifest (see the module docstring for the rules).

    ``scheme=None`` skips the label checks (tiling does not need labels); ``required`` names the
    columns that must exist and be filled. Raises ``ManifestError`` with every problem found.
    """
    path = Path(path)
    label_scheme = get_scheme(scheme) if scheme is not None else None
    header, rows, lines, problems, notes = _read_csv(path)
    missing = [c for c in required if c not in header]
    if missing:
        raise ManifestError(
            path,
            [
                *problems,
                f"missing column(s) {', '.join(missing)} "
                f"(found: {', '.join(header) or 'none'}; required: {', '.join(required)})",
            ],
        )
    if not rows and not problems:
        raise ManifestError(path, ["no slides listed"])
    df = pd.DataFrame(rows, columns=header, dtype=str) if rows else pd.DataFrame(columns=header)
    if "center" not in df.columns:
        df["center"] = "all"
    base = path.resolve().parent
    seen: dict[str, tuple[int, str]] = {}
    labels: list[str | None] = []
    idxs: list[int] = []
    slide_paths: list[str] = []
    roi_paths: list[str] = []
    no_roi: list[str] = []
    for rec, line in zip(df.to_dict("records"), lines, strict=True):
        for col in required:
            if not rec[col]:
                problems.append(f"row {line}: empty {col}")
        sid = rec.get("slide_id", "")
        if sid:
            problems += _slide_id_problems(sid, line, seen)
        cls = None
        if label_scheme is not None and rec.get("label"):
            cls = label_scheme.class_of(rec["label"])
            if cls is None:
                problems.append(
                    f"row {line}: label '{rec['label']}' is not a class of scheme "
                    f"'{label_scheme.name}' ({label_scheme.describe()}); fix the label or choose "
                    "another cohort.label_scheme"
                )
        labels.append(cls)
        idxs.append(-1 if cls is None or label_scheme is None else label_scheme.classes.index(cls))
        sp = rec.get("slide_path", "")
        full = (
            resolve_path(base, sp, f"row {line}: slide_path", allow_absolute, problems)
            if sp
            else None
        )
        slide_paths.append(str(full) if full else "")
        roi = rec.get("roi_path", "")
        rfull = (
            resolve_path(base, roi, f"row {line}: roi_path", allow_absolute, problems)
            if roi
            else None
        )
        roi_paths.append(str(rfull) if rfull else "")
        if "roi_path" in df.columns and not roi:
            no_roi.append(f"{line} ('{sid}')")
        mpp = rec.get("mpp", "")
        if mpp and _positive_float(mpp) is None:
            problems.append(f"row {line}: mpp '{mpp}' is not a positive number (µm per pixel)")
    if label_scheme is not None and "label" in df.columns:
        df["label_raw"] = df["label"]
        df["label"] = labels
        df["label_idx"] = idxs
        problems += _label_conflicts(df, lines)
    if "slide_path" in df.columns:
        df["slide_path"] = slide_paths
    if "roi_path" in df.columns:
        df["roi_path"] = roi_paths
    if problems:
        raise ManifestError(path, sorted(problems, key=_row_of))  # stable: by row, then found
    if no_roi:
        shown = ", ".join(no_roi[:10]) + (
            f" and {len(no_roi) - 10} more" if len(no_roi) > 10 else ""
        )
        notes.append(
            f"row(s) {shown} have an empty roi_path: these slides are tiled on their whole "
            "detected tissue, not on an ROI"
        )
    return Manifest(path, df.reset_index(drop=True), list(lines), notes)


def mpp_of(value: str | float | None) -> float | None:
    """The ``mpp`` cell of a manifest row (text, or a number as pandas reads it) as a positive
    float; None when empty, NaN or not a positive number."""
    return _positive_float(str(value)) if value not in (None, "") else None


def _row_of(problem: str) -> float:
    head = problem.split(":", 1)[0]
    if head.startswith("row ") and head[4:].isdigit():
        return float(head[4:])
    return math.inf  # whole-manifest problems (patient label conflicts) come last


def _positive_float(value: str) -> float | None:
    try:
        f = float(value)
    except ValueError:
        return None
    return f if math.isfinite(f) and f > 0 else None


def _slide_id_problems(sid: str, line: int, seen: dict[str, tuple[int, str]]) -> list[str]:
    out: list[str] = []
    bad = sorted({ch for ch in sid if ch in FORBIDDEN_ID_CHARS})
    if bad:
        out.append(
            f"row {line}: slide_id '{sid}' contains {' '.join(bad)}, not allowed in a file name "
            "(slide ids name the output files); use letters, digits, '-', '_' or '.'"
        )
    elif sid.startswith("."):
        out.append(
            f"row {line}: slide_id '{sid}' starts with '.', which would make hidden output files"
        )
    if len(sid) > MAX_ID_LEN:
        out.append(f"row {line}: slide_id is {len(sid)} characters long (at most {MAX_ID_LEN})")
    key = sid.casefold()
    if key in seen:
        first_line, first = seen[key]
        if first == sid:
            out.append(f"row {line}: duplicate slide_id '{sid}' (first on row {first_line})")
        else:
            out.append(
                f"row {line}: slide_id '{sid}' differs from '{first}' (row {first_line}) only in "
                "case; their output files would collide on macOS and Windows"
            )
    else:
        seen[key] = (line, sid)
    return out


def _label_conflicts(df: pd.DataFrame, lines: list[int]) -> list[str]:
    out: list[str] = []
    known = df.assign(csv_line=lines)
    known = known[known["label"].notna() & (known["patient_id"] != "")]
    for pid, group in known.groupby("patient_id", sort=True):
        if group["label"].nunique() > 1:
            detail = ", ".join(
                f"row {r.csv_line} '{r.slide_id}' = {r.label_raw}" for r in group.itertuples()
            )
            out.append(
                f"patient '{pid}' has slides with different labels ({detail}); "
                "a patient must have one HER2 score"
            )
    return out


def _cell_repr(value: str) -> str:
    """A cell for a message: control characters spelled out (``'a\\nb'``)."""
    return value.encode("unicode_escape").decode("ascii", "replace")


def _read_csv(path: Path) -> tuple[list[str], list[list[str]], list[int], list[str], list[str]]:
    """Header, rows (stripped cells), each row's CSV line, problems and notes of a manifest CSV."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(path, ["file not found"]) from None
    except IsADirectoryError:
        raise ManifestError(path, ["is a folder, not a CSV file"]) from None
    except OSError as exc:
        raise ManifestError(path, [f"cannot be read ({exc.strerror or exc})"]) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            path,
            [
                f"not UTF-8 text (byte {exc.start}); save it as 'CSV UTF-8' "
                "(Excel: File → Save As → CSV UTF-8)"
            ],
        ) from None
    if "\x00" in text:
        raise ManifestError(path, ["contains NUL bytes: not a text CSV file"])
    reader = csv.reader(io.StringIO(text, newline=""))
    problems: list[str] = []
    notes: list[str] = []
    records: list[tuple[int, list[str]]] = []
    prev_end = 0
    try:
        for cells in reader:
            start, prev_end = prev_end + 1, reader.line_num
            if cells and any(c.strip() for c in cells):
                records.append((start, cells))
    except csv.Error as exc:
        raise ManifestError(
            path, [f"not a readable CSV file (line {reader.line_num}: {exc})"]
        ) from None
    if not records:
        raise ManifestError(path, ["empty file: no header and no slides"])
    head_line, head_cells = records[0]
    header = [c.strip() for c in head_cells]
    if len(header) == 1 and (";" in header[0] or "\t" in header[0]):
        sep = "';'" if ";" in header[0] else "a tab"
        raise ManifestError(
            path,
            [
                f"the header is separated by {sep}, not by commas; save the file as CSV "
                "(comma-separated)"
            ],
        )
    while header and not header[-1]:  # Excel: an empty trailing column
        header.pop()
    n = len(header)
    for i, name in enumerate(header):
        if not name:
            problems.append(f"row {head_line}: column {i + 1} of the header has no name")
        elif any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
            problems.append(
                f"row {head_line}: column name '{_cell_repr(name)}' contains a control character"
            )
        elif name in header[:i]:
            problems.append(f"row {head_line}: column '{name}' appears twice in the header")
    rows: list[list[str]] = []
    lines: list[int] = []
    trailing = 0
    for line, cells in records[1:]:
        cells = [c.strip() for c in cells]
        if len(cells) > n:
            extra = cells[n:]
            if any(extra):
                shown = ", ".join(f"'{_cell_repr(c)}'" for c in extra if c)
                problems.append(
                    f"row {line}: {len(cells)} fields but the header has {n} (extra: {shown}); "
                    "put double quotes around a value that contains a comma, or add the column "
                    "to the header"
                )
                continue
            trailing += 1
            cells = cells[:n]
        elif len(cells) < n:
            problems.append(
                f"row {line}: {len(cells)} fields but the header has {n} "
                f"({', '.join(header[len(cells) :])} missing); every row needs one field per "
                "column (leave a field empty with ',,')"
            )
            continue
        bad = [
            f"{header[j]} '{_cell_repr(c)}'"
            for j, c in enumerate(cells)
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in c)
        ]
        if bad:
            problems.append(
                f"row {line}: {', '.join(bad)} contains a newline or another control character; "
                "remove it (a quoted value may not span lines)"
            )
            continue
        rows.append(cells)
        lines.append(line)
    if len(head_cells) > n or trailing:
        notes.append(
            "empty trailing field(s) ignored (a trailing comma on each row, as Excel writes an "
            "empty column)"
        )
    return header, rows, lines, problems, notes


def resolve_path(
    base: Path, value: str, where: str, allow_absolute: bool, problems: list[str]
) -> Path | None:
    """The manifest's path rule: ``value`` resolved against ``base``; None and a problem if not ok.

    A relative path may not leave ``base`` and an absolute path is refused, unless
    ``allow_absolute``; the file must exist and be a file.
    """
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
    if not full.is_file():
        problems.append(f"{where} '{value}' is not a file ({full})")
        return None
    return full
