"""Read regions of interest (ROIs) drawn by pathologists into shapely geometries.

Formats (picked from the file's content, not its suffix):

- **QuPath GeoJSON**: a Feature, a FeatureCollection, a bare list of features or a bare geometry;
  Polygon and MultiPolygon with holes (GeometryCollections are searched for polygons). The class is
  ``properties.classification.name`` (QuPath ≥ 0.2; a plain string or ``properties.name`` is
  accepted too). Points and lines are ignored with a note.
- **ASAP XML** (``<ASAP_Annotations>``): Polygon, Rectangle and Spline (a closed Catmull–Rom curve
  through the control points, as ASAP draws it, approximated by straight segments); Dot, PointSet
  and Measurement are ignored with a note. The class of an annotation is its group
  (``PartOfGroup``) and every group above it.
- **Aperio ImageScope XML** (``<Annotations><Annotation><Regions><Region>``): free-form and
  rectangle regions, ellipses approximated by polygons; a region with ``NegativeROA="1"`` is cut out
  of its annotation as a hole. The class is the annotation's ``Name`` (or any of its attribute
  names/values).

**Exclusions**: shapes whose class starts with ``Ignore`` (QuPath's ``Ignore*``) or is
``negative``, ``exclusion``, ``exclude(d)`` or ``_2`` (ASAP conventions: pathml's negative group,
Camelyon16's exclusion group) are cut out of the union of all ROIs, whatever
the class filter, also where they overlap several ROIs. Aperio's ``NegativeROA`` regions are cut
out of their own annotation (layer).

Coordinates are level-0 pixels, origin top-left (what all three tools write). All XML is parsed
with defusedxml: DTD entity tricks (XXE, "billion laughs") are rejected with :class:`RoiError`.

Invalid polygons (self-intersecting, unclosed, fewer than 3 distinct points) are repaired with
``make_valid`` or dropped; every repair or drop is reported in :attr:`RoiSet.warnings`.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from her2scope.errors import ConfigError, RoiError

log = logging.getLogger(__name__)

#: File suffixes looked for when ROIs are matched to slides by name (``--rois DIR``).
ROI_SUFFIXES = (".geojson", ".json", ".xml")

_SPLINE_STEPS = 8  # straight segments per spline span


#: Class names (case-insensitive) of exclusion shapes: cut out of the ROIs, never tiled.
#: ``Ignore*`` is QuPath's built-in class; ``negative`` / ``exclusion`` are ASAP conventions
#: (pathml writes a ``negative`` group); ``_2`` is the exclusion group of Camelyon16's ASAP files.
EXCLUSION_CLASSES: tuple[str, ...] = ("negative", "exclusion", "exclude", "excluded", "_2")


def is_exclusion_class(name: str) -> bool:
    """True for a class that marks regions to cut out: ``Ignore*`` (any ``Ignore…``) or one of
    :data:`EXCLUSION_CLASSES`."""
    key = name.strip().lower()
    return key.startswith("ignore") or key in EXCLUSION_CLASSES


@dataclass
class RoiSet:
    """The ROIs of one file: their union, the classes seen, and notes about what was changed."""

    path: str
    geometry: BaseGeometry | None  # union of the kept polygons (level-0 px); None when none kept
    classes: list[str] = field(default_factory=list)  # every class name seen in the file
    n_shapes: int = 0  # polygons kept (after the class filter)
    warnings: list[str] = field(default_factory=list)
    n_excluded: int = 0  # exclusion polygons (Ignore*, negative groups) cut out of the ROIs
    empty_reason: str = ""  # why ``geometry`` is None


def load_rois(path: str | Path, classes: Sequence[str] | None = None) -> BaseGeometry | None:
    """The union of the ROIs in ``path`` as one (Multi)Polygon in level-0 px, or None when empty.

    ``classes`` keeps only shapes of those classes (case-insensitive), e.g. ``["Tumor"]``.
    Warnings (repairs, ignored shapes, an empty result) are logged; use :func:`read_rois` to get
    them as a list. Raises :class:`RoiError` on an unreadable or unknown file.
    """
    rs = read_rois(path, classes)
    for w in rs.warnings:
        log.warning("%s", w)
    return rs.geometry


def read_rois(path: str | Path, classes: Sequence[str] | None = None) -> RoiSet:
    """Parse an ROI file (format detected from its content); see the module docstring."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RoiError(path, "file not found") from None
    except OSError as exc:
        raise RoiError(path, f"cannot read: {exc}") from None
    head = raw[:2048].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith((b"{", b"[")):
        shapes, notes = _parse_geojson(path, raw)
    elif head.startswith(b"<"):
        shapes, notes = _parse_xml(path, raw)
    else:
        raise RoiError(
            path,
            "unknown ROI format; expected QuPath GeoJSON, ASAP XML or Aperio ImageScope XML",
        )
    return _assemble(path, shapes, notes, classes)


@dataclass
class _Shape:
    label: str  # for messages: "feature 3 ('Tumor')"
    classes: tuple[str, ...]
    geom: BaseGeometry | None  # polygonal; None when it could not be built
    group: str = ""  # Aperio: the annotation a region belongs to
    negative: bool = False  # Aperio NegativeROA: cut out of the group's other regions


def _assemble(
    path: Path, shapes: list[_Shape], notes: list[str], classes: Sequence[str] | None
) -> RoiSet:
    warnings = [f"ROI file '{path}': {n}" for n in notes]
    seen: list[str] = []
    for s in shapes:
        for c in s.classes:
            if c and c not in seen:
                seen.append(c)
    wanted = {c.strip().lower() for c in classes} if classes else None
    positives: dict[str, list[BaseGeometry]] = {}
    negatives: dict[str, list[BaseGeometry]] = {}  # Aperio NegativeROA: per annotation
    exclusions: list[BaseGeometry] = []  # Ignore* / negative groups: cut out of every ROI
    for s in shapes:
        excluded = any(is_exclusion_class(c) for c in s.classes)
        if not excluded and wanted is not None and not wanted & {c.lower() for c in s.classes}:
            continue
        geom = _repair(s, warnings, path)
        if geom is None:
            continue
        if excluded:
            exclusions.append(geom)
        else:
            target = negatives if s.negative else positives
            target.setdefault(s.group, []).append(geom)
    parts: list[BaseGeometry] = []
    for group, geoms in positives.items():
        u = shapely.union_all(geoms)
        if group in negatives:  # Aperio: negative regions are holes in their annotation
            u = u.difference(shapely.union_all(negatives[group]))
        if not u.is_empty:
            parts.append(u)
    n_shapes = sum(len(g) for g in positives.values())
    n_excluded = len(exclusions) + sum(len(g) for k, g in negatives.items() if k in positives)

    def empty(reason: str) -> RoiSet:
        warnings.append(f"ROI file '{path}': {reason}")
        return RoiSet(str(path), None, seen, 0, warnings, n_excluded, reason)

    if not parts:
        if wanted is not None and n_shapes == 0:
            return empty(
                f"no ROI of class {', '.join(sorted(classes or []))} "
                f"(classes in the file: {', '.join(seen) or 'none'}); check tiling.roi_classes"
            )
        if exclusions:
            return empty(
                f"the file holds only exclusion regions ({len(exclusions)} Ignore*/negative), "
                "no ROI to tile"
            )
        return empty("no usable ROI polygon in the file")
    union = shapely.union_all(parts)
    if exclusions:
        union = union.difference(shapely.union_all(exclusions))
    union = _polygonal(shapely.make_valid(union)) if not union.is_empty else None
    if union is None or union.is_empty or union.area <= 0:
        if exclusions:
            return empty(
                f"the {len(exclusions)} exclusion region(s) (Ignore*/negative) cover every ROI"
            )
        return empty("the ROIs have zero area")
    return RoiSet(str(path), union, seen, n_shapes, warnings, n_excluded)


def _repair(s: _Shape, warnings: list[str], path: Path) -> BaseGeometry | None:
    geom = s.geom
    if geom is None:
        return None
    if not geom.is_valid:
        reason = shapely.is_valid_reason(geom)
        fixed = _polygonal(shapely.make_valid(geom))
        if fixed is None or fixed.is_empty or fixed.area <= 0:
            warnings.append(f"ROI file '{path}': {s.label} is invalid ({reason}); dropped")
            return None
        warnings.append(f"ROI file '{path}': {s.label} was invalid ({reason}); repaired")
        geom = fixed
    if geom.is_empty or geom.area <= 0:
        warnings.append(f"ROI file '{path}': {s.label} has zero area; dropped")
        return None
    return geom


def _polygonal(geom: BaseGeometry) -> BaseGeometry | None:
    """Keep only the polygon parts of a geometry (make_valid may add lines or points)."""
    if isinstance(geom, (Polygon, MultiPolygon)):
        return geom
    parts = [g for g in getattr(geom, "geoms", []) if isinstance(g, (Polygon, MultiPolygon))]
    if not parts:
        return None
    return shapely.union_all(parts)


def _ring(points: Sequence[tuple[float, float]], label: str, notes: list[str]) -> Polygon | None:
    """A polygon from vertices; None (with a note) when fewer than 3 distinct points."""
    pts = [(float(x), float(y)) for x, y in points]
    if pts and pts[0] == pts[-1]:
        pts = pts[:-1]
    finite = [p for p in pts if math.isfinite(p[0]) and math.isfinite(p[1])]
    if len(finite) != len(pts):
        notes.append(f"{label} has non-finite coordinates; dropped")
        return None
    if len(set(pts)) < 3:
        notes.append(f"{label} has fewer than 3 distinct points; dropped")
        return None
    return Polygon(pts)


# ----------------------------------------------------------------------------------------------
# GeoJSON (QuPath)
# ----------------------------------------------------------------------------------------------


def _parse_geojson(path: Path, raw: bytes) -> tuple[list[_Shape], list[str]]:
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RoiError(path, f"not valid JSON ({exc})") from None
    features: Any
    if isinstance(data, list):
        features = data
    elif isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
        if not isinstance(features, list):
            raise RoiError(path, "FeatureCollection without a 'features' list")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif (isinstance(data, dict) and "coordinates" in data) or (
        isinstance(data, dict) and data.get("type") == "GeometryCollection"
    ):
        features = [{"type": "Feature", "geometry": data, "properties": {}}]
    else:
        raise RoiError(
            path,
            "not GeoJSON as QuPath writes it (expected a Feature, a FeatureCollection or a list "
            "of features)",
        )
    shapes: list[_Shape] = []
    notes: list[str] = []
    ignored: dict[str, int] = {}
    for i, feat in enumerate(features):
        if not isinstance(feat, dict):
            notes.append(f"feature {i} is not an object; ignored")
            continue
        props = feat.get("properties") or {}
        cls = _qupath_class(props)
        name = props.get("name") if isinstance(props, dict) else None
        label = f"feature {i}" + (f" ('{name or cls}')" if (name or cls) else "")
        geom_json = feat.get("geometry") if feat.get("type") == "Feature" else feat
        if not isinstance(geom_json, dict):
            notes.append(f"{label} has no geometry; ignored")
            continue
        for poly_label, poly in _geojson_polygons(geom_json, label, notes, ignored):
            shapes.append(_Shape(poly_label, (cls,) if cls else (), poly))
    for kind, n in sorted(ignored.items()):
        notes.append(f"{n} {kind} shape(s) ignored (only polygons define ROIs)")
    return shapes, notes


def _qupath_class(props: Any) -> str:
    if not isinstance(props, dict):
        return ""
    c = props.get("classification")
    if isinstance(c, dict):
        return str(c.get("name") or "")
    if isinstance(c, str):
        return c
    return str(props.get("classification_name") or "")


def _geojson_polygons(
    g: dict[str, Any], label: str, notes: list[str], ignored: dict[str, int]
) -> Iterable[tuple[str, BaseGeometry | None]]:
    kind = g.get("type")
    if kind == "GeometryCollection":
        for j, sub in enumerate(g.get("geometries") or []):
            if isinstance(sub, dict):
                yield from _geojson_polygons(sub, f"{label} part {j}", notes, ignored)
        return
    if kind not in ("Polygon", "MultiPolygon"):
        ignored[str(kind)] = ignored.get(str(kind), 0) + 1
        return
    coords = g.get("coordinates")
    polys = [coords] if kind == "Polygon" else coords
    if not isinstance(polys, list):
        notes.append(f"{label}: malformed coordinates; dropped")
        return
    for j, rings in enumerate(polys):
        plabel = label if kind == "Polygon" else f"{label} polygon {j}"
        try:
            shell = _ring(rings[0], plabel, notes)
            if shell is None:
                continue
            holes = []
            for k, hole in enumerate(rings[1:]):
                h = _ring(hole, f"{plabel} hole {k}", notes)
                if h is not None:
                    holes.append(h.exterior.coords)
            yield plabel, Polygon(shell.exterior.coords, holes)
        except (TypeError, ValueError, IndexError) as exc:
            notes.append(f"{plabel}: malformed coordinates ({exc}); dropped")


# ----------------------------------------------------------------------------------------------
# XML (ASAP, Aperio)
# ----------------------------------------------------------------------------------------------


def _parse_xml(path: Path, raw: bytes) -> tuple[list[_Shape], list[str]]:
    import xml.etree.ElementTree as ET

    import defusedxml
    import defusedxml.ElementTree as DET

    try:
        root = DET.fromstring(raw, forbid_dtd=False, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException as exc:
        raise RoiError(
            path,
            f"unsafe XML rejected ({type(exc).__name__}: entity declarations or external "
            "references are not allowed in annotation files)",
        ) from None
    except ET.ParseError as exc:
        raise RoiError(path, f"not well-formed XML ({exc})") from None
    if root.tag == "ASAP_Annotations":
        return _parse_asap(root)
    if root.tag == "Annotations" and root.find("./Annotation/Regions") is not None:
        return _parse_aperio(root)
    if root.tag == "Annotations":
        return [], ["Aperio XML without any Regions"]
    raise RoiError(
        path,
        f"unknown XML annotation format (root element <{root.tag}>); expected ASAP "
        "<ASAP_Annotations> or Aperio ImageScope <Annotations>",
    )


def _xy(elem: Any, x: str = "X", y: str = "Y") -> tuple[float, float]:
    return float(elem.get(x)), float(elem.get(y))


def _parse_asap(root: Any) -> tuple[list[_Shape], list[str]]:
    parents: dict[str, str] = {}
    for g in root.iter("Group"):
        parents[g.get("Name", "")] = g.get("PartOfGroup", "None")
    shapes: list[_Shape] = []
    notes: list[str] = []
    ignored: dict[str, int] = {}
    for i, ann in enumerate(root.iter("Annotation")):
        kind = ann.get("Type", "")
        name = ann.get("Name", f"#{i}")
        label = f"annotation '{name}' ({kind})"
        group = ann.get("PartOfGroup", "None")
        classes: list[str] = []
        while group and group != "None" and group not in classes:
            classes.append(group)
            group = parents.get(group, "None")
        coords = sorted(ann.iter("Coordinate"), key=lambda c: float(c.get("Order", 0)))
        try:
            pts = [_xy(c) for c in coords]
        except (TypeError, ValueError):
            notes.append(f"{label} has malformed coordinates; dropped")
            continue
        if kind in ("Polygon", "Rectangle"):
            shapes.append(_Shape(label, tuple(classes), _ring(pts, label, notes)))
        elif kind == "Spline":
            pts = _catmull_rom_closed(pts) if len(pts) >= 3 else pts
            shapes.append(_Shape(label, tuple(classes), _ring(pts, label, notes)))
        else:
            ignored[kind] = ignored.get(kind, 0) + 1
    for kind, n in sorted(ignored.items()):
        notes.append(f"{n} {kind} annotation(s) ignored (only polygons, rectangles, splines)")
    return shapes, notes


def _catmull_rom_closed(
    pts: Sequence[tuple[float, float]], steps: int = _SPLINE_STEPS
) -> list[tuple[float, float]]:
    """Points on the closed uniform Catmull–Rom spline through ``pts``."""
    p = np.asarray(pts, dtype=float)
    n = len(p)
    t = np.arange(steps)[:, None] / steps
    t2, t3 = t * t, t * t * t
    out: list[tuple[float, float]] = []
    for i in range(n):
        p0, p1, p2, p3 = p[(i - 1) % n], p[i], p[(i + 1) % n], p[(i + 2) % n]
        seg = 0.5 * (
            2 * p1
            + (-p0 + p2) * t
            + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
            + (-p0 + 3 * p1 - 3 * p2 + p3) * t3
        )
        out.extend((float(x), float(y)) for x, y in seg)
    return out


def _parse_aperio(root: Any) -> tuple[list[_Shape], list[str]]:
    shapes: list[_Shape] = []
    notes: list[str] = []
    ignored: dict[str, int] = {}
    for a_i, ann in enumerate(root.findall("Annotation")):
        ann_id = ann.get("Id", str(a_i))
        classes = [ann.get("Name", "")]
        for attr in ann.findall("./Attributes/Attribute"):
            classes += [attr.get("Name", ""), attr.get("Value", "")]
        classes_t = tuple(c for c in classes if c)
        for r_i, reg in enumerate(ann.findall("./Regions/Region")):
            rid = reg.get("Id", str(r_i))
            label = f"annotation {ann_id} region {rid}"
            try:
                pts = [_xy(v) for v in reg.findall("./Vertices/Vertex")]
            except (TypeError, ValueError):
                notes.append(f"{label} has malformed vertices; dropped")
                continue
            rtype = reg.get("Type", "0")
            if rtype == "2" and len(pts) >= 2:  # ellipse given by its bounding box
                (x0, y0), (x1, y1) = pts[0], pts[-1]
                cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, abs(x1 - x0) / 2, abs(y1 - y0) / 2
                ang = np.linspace(0, 2 * np.pi, 64, endpoint=False)
                pts = list(zip(cx + rx * np.cos(ang), cy + ry * np.sin(ang), strict=True))
            elif rtype not in ("0", "1"):
                ignored[f"type {rtype}"] = ignored.get(f"type {rtype}", 0) + 1
                continue
            negative = reg.get("NegativeROA", "0") == "1"
            poly = _ring(pts, label, notes)
            shapes.append(_Shape(label, classes_t, poly, f"aperio:{ann_id}", negative))
    for kind, n in sorted(ignored.items()):
        notes.append(f"{n} region(s) of {kind} ignored (arrows, rulers, points)")
    return shapes, notes


# ----------------------------------------------------------------------------------------------
# Helpers for tiling
# ----------------------------------------------------------------------------------------------


def clip_to_slide(
    geom: BaseGeometry | None, width: int, height: int, source: str = "ROI"
) -> tuple[BaseGeometry | None, list[str]]:
    """Clip ROIs to the slide's level-0 extent; warn when part (or all) of it lies outside."""
    if geom is None:
        return None, []
    clipped = geom.intersection(box(0, 0, width, height))
    clipped = _polygonal(clipped) if not clipped.is_empty else None
    area = geom.area
    kept = clipped.area if clipped is not None else 0.0
    if kept <= 0:
        return None, [
            f"{source}: every ROI lies outside the slide ({width}×{height} px); zero tiles "
            "(are the coordinates for another slide or another level?)"
        ]
    if kept < area * (1 - 1e-9):
        pct = 100 * (1 - kept / area)
        return clipped, [f"{source}: {pct:.1f}% of the ROI area lies outside the slide; clipped"]
    return geom, []


def find_roi_file(rois_dir: str | Path, slide_stem: str) -> Path | None:
    """The ROI file for a slide in ``rois_dir``: ``<stem>.geojson``, ``.json`` or ``.xml``."""
    d = Path(rois_dir)
    for suffix in ROI_SUFFIXES:
        p = d / f"{slide_stem}{suffix}"
        if p.is_file():
            return p
    return None


def resolve_roi_argument(
    rois: str | Path | None, slide_stem: str, n_slides: int, without: str
) -> Path | None:
    """The ROI file of one slide from a ``--roi`` argument: one file (one slide) or a folder.

    A folder without a file for the slide gives None and a warning that ends with ``without``
    (what happens instead, e.g. "tiling the detected tissue"). Raises :class:`ConfigError` for a
    path that is neither a file nor a folder, or one file given for several slides.
    """
    if rois is None:
        return None
    rois = Path(rois)
    if rois.is_dir():
        found = find_roi_file(rois, slide_stem)
        if found is None:
            log.warning("no ROI file for %s in %s; %s", slide_stem, rois, without)
        return found
    if not rois.is_file():
        raise ConfigError(f"--roi '{rois}' is neither a file nor a folder")
    if n_slides > 1:
        raise ConfigError(
            f"--roi '{rois}' is one file but {n_slides} slides were given; give a folder of "
            "<slide_id>.geojson/.xml files instead"
        )
    return rois
