"""Nuclei, cells and membrane measurements of one RGB region (numpy, scipy, OpenCV; no torch).

Steps, all in the region's pixel frame at a known µm/px:

1. stain separation with the slide's fitted H and DAB vectors (:func:`stain_concentrations`):
   base-10 optical density along each vector; pixels that no H + DAB mixture explains (pen ink,
   black, saturated) are marked invalid;
2. nuclei: smoothed hematoxylin above a threshold, holes filled; touching nuclei are split by a
   watershed on the distance transform whose seeds are distance maxima at least
   ``split_min_distance_um`` apart; size and elongation filters in µm;
3. cells: every pixel up to ``cell_expand_um`` from a nucleus joins the nearest nucleus (a
   bounded Voronoi expansion); the membrane band is the ring of the cell within ``band_um`` of its
   boundary;
4. per cell: DAB OD of the band minus the cell's own cytoplasm (mean and 90th percentile), and
   completeness = the fraction of ``n_sectors`` angular sectors around the nucleus whose band
   maximum reaches ``max(od_faint, complete_rel × membrane OD)``.

Every value is finite by construction: a region without nuclei gives zero cells.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from her2scope.cells.classify import calibrate_od
from her2scope.cells.config import CellConfig

_LN10 = math.log(10.0)
#: Pixels darker than this in any channel are saturated (OD > ~2.5 base 10): never a nucleus.
SATURATED_LEVEL = 12
#: Pixels brighter than this in every channel are glass.
WHITE_LEVEL = 220
#: A pixel whose OD leaves the H–DAB plane by more than this angle is not H + DAB (pen ink, dirt).
MAX_OFF_PLANE_DEG = 25.0
#: Red OD exceeding green OD by more than this (base 10) is green/cyan ink: hematoxylin and DAB
#: absorb green at least as much as red (real nuclei stay below 0.17, green pen is 0.3–0.7);
#: pale ink is caught by its ratio instead (red OD above twice green OD + 0.05).
INK_RED_MINUS_GREEN_OD = 0.25
#: A hematoxylin blob larger than this many maximal nuclei is not split into nuclei (ink, fold).
MAX_CLUMP_NUCLEI = 8


@dataclass
class RegionCells:
    """Cells found in a region; coordinates are region pixels (float), one entry per cell."""

    x: np.ndarray  # nucleus centroid, px
    y: np.ndarray
    nucleus_area_um2: np.ndarray
    nucleus_h_od: np.ndarray  # mean hematoxylin OD of the nucleus (base 10)
    membrane_od_mean: np.ndarray  # background-corrected DAB OD of the band (base 10, ≥ 0)
    membrane_od_p90: np.ndarray
    completeness: np.ndarray  # 0–1
    nuclei: np.ndarray | None = None  # H×W int32 nucleus labels (cell i ↔ label i + 1)
    cells: np.ndarray | None = None  # H×W int32 cell labels

    @property
    def n(self) -> int:
        return int(self.x.size)

    def subset(self, keep: np.ndarray) -> RegionCells:
        """The cells where ``keep`` is True (label images are dropped)."""
        return RegionCells(
            self.x[keep],
            self.y[keep],
            self.nucleus_area_um2[keep],
            self.nucleus_h_od[keep],
            self.membrane_od_mean[keep],
            self.membrane_od_p90[keep],
            self.completeness[keep],
        )


def empty_cells() -> RegionCells:
    z = np.zeros(0, np.float32)
    return RegionCells(z, z, z, z, z, z, z)


def stain_concentrations(
    rgb: np.ndarray, stain_matrix: np.ndarray, io: float = 240.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Base-10 H and DAB OD maps (float32) of ``rgb`` under ``stain_matrix`` and a validity mask.

    ``stain_matrix`` holds unit OD vectors, rows H and DAB (as :class:`StainNormalizer` fits).
    Element-wise float32 maths (no BLAS), so results do not depend on thread count or CPU kernels;
    done in bands of rows so the temporaries stay in cache. Invalid pixels (False): glass,
    saturated, OD off the H–DAB plane, or green/cyan ink; their H and DAB are 0.
    """
    m = np.asarray(stain_matrix, np.float64)
    inv = np.linalg.pinv(m.T)  # (2, 3): conc = inv @ od
    normal = np.cross(m[0], m[1])
    normal /= max(float(np.linalg.norm(normal)), 1e-12)
    lut = (-np.log((np.arange(256, dtype=np.float64) + 1.0) / io) / _LN10).clip(0, None)
    lut32 = lut.astype(np.float32)
    f = np.float32
    coef = [f(x) for x in (*inv[0], *inv[1], *normal)]
    sin_max = f(math.sin(math.radians(MAX_OFF_PLANE_DEG)))
    height, width = rgb.shape[:2]
    h = np.empty((height, width), np.float32)
    d = np.empty((height, width), np.float32)
    valid = np.empty((height, width), bool)
    band = max(1, (1 << 18) // max(width, 1))
    for y0 in range(0, height, band):
        sl = slice(y0, min(height, y0 + band))
        c0, c1, c2 = cv2.split(np.ascontiguousarray(rgb[sl]))
        r, g, b = (cv2.LUT(c, lut32) for c in (c0, c1, c2))  # exact table look-ups
        hh = coef[0] * r + coef[1] * g + coef[2] * b
        dd = coef[3] * r + coef[4] * g + coef[5] * b
        off = np.abs(coef[6] * r + coef[7] * g + coef[8] * b)
        norm = np.sqrt(r * r + g * g + b * b)
        ok = off <= sin_max * norm + f(0.02)
        ok &= cv2.min(cv2.min(c0, c1), c2) > SATURATED_LEVEL
        ok &= cv2.max(cv2.max(c0, c1), c2) < WHITE_LEVEL
        ok &= (r - g <= f(INK_RED_MINUS_GREEN_OD)) & (r <= f(2) * g + f(0.05))
        np.maximum(hh, 0, out=hh)
        np.maximum(dd, 0, out=dd)
        hh[~ok] = 0
        dd[~ok] = 0
        h[sl], d[sl], valid[sl] = hh, dd, ok
    return h, d, valid


def brightest(rgb: np.ndarray) -> np.ndarray:
    """Per-pixel maximum over the RGB channels (uint8); fast, exact."""
    c0, c1, c2 = cv2.split(np.ascontiguousarray(rgb))
    return cv2.max(cv2.max(c0, c1), c2)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """``mask`` (uint8 0/1) with every background region not connected to the border filled."""
    h, w = mask.shape
    pad = np.zeros((h + 2, w + 2), np.uint8)
    pad[1:-1, 1:-1] = mask
    flood = pad.copy()
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 1)  # outside → 1
    holes = flood[1:-1, 1:-1] == 0
    out = mask.copy()
    out[holes] = 1
    return out


def _disk(radius_px: float) -> np.ndarray:
    r = max(1, round(radius_px))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def nucleus_threshold(h_smooth: np.ndarray, valid: np.ndarray, cfg: CellConfig) -> float:
    """Hematoxylin OD threshold of nucleus pixels: Otsu's threshold over the region's stained
    pixels, never below ``cfg.nucleus_h_od`` (so a region without nuclei stays empty)."""
    vals = h_smooth[valid & (h_smooth > 0.5 * cfg.nucleus_h_od)]
    if vals.size < 100:
        return float(cfg.nucleus_h_od)
    hist, edges = np.histogram(vals, bins=128, range=(0.0, 1.5))
    w = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(w)
    w1 = w0[-1] - w0
    m0 = np.cumsum(w * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return max(float(cfg.nucleus_h_od), float(edges[1:][int(np.argmax(between))]))


def smooth_h(h_od: np.ndarray, mpp: float, cfg: CellConfig) -> np.ndarray:
    """The hematoxylin OD map smoothed as nucleus detection sees it (σ ``nucleus_smooth_um``)."""
    sigma = cfg.nucleus_smooth_um / mpp
    return cv2.GaussianBlur(h_od, (0, 0), sigma) if sigma > 0.3 else h_od


def find_nuclei(
    h_od: np.ndarray,
    valid: np.ndarray,
    mpp: float,
    cfg: CellConfig,
    h_threshold: float | None = None,
) -> np.ndarray:
    """Nucleus labels (int32, 0 = none, 1…N) from a base-10 hematoxylin OD map.

    ``h_threshold`` (e.g. one per slide, from :func:`nucleus_threshold` over sample regions) is
    used as it is; without it the region's own Otsu threshold is used.

    Touching nuclei are split; nuclei outside the size and elongation limits are removed.
    """

    hs = smooth_h(h_od, mpp, cfg)
    thr = nucleus_threshold(hs, valid, cfg) if h_threshold is None else float(h_threshold)
    fg = ((hs > thr) & valid).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, _disk(0.6 / mpp))
    if not fg.any():
        return np.zeros(h_od.shape, np.int32)
    fg = _fill_holes(fg)
    n_cc, cc, cc_stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8, ltype=cv2.CV_32S)

    # seeds: maxima of the (slightly smoothed) distance transform, split_min_distance apart
    dist = cv2.distanceTransform(fg, cv2.DIST_L2, 5)
    dist = cv2.GaussianBlur(dist, (0, 0), 1.0)
    min_r_px = 1.2 / mpp  # a seed sits at least 1.2 µm inside the nucleus
    peak = (dist >= cv2.dilate(dist, _disk(cfg.split_min_distance_um / mpp))) & (dist >= min_r_px)
    peak &= fg.astype(bool)
    n_pk, pk = cv2.connectedComponents(peak.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    # components with one seed (or none) are nuclei as they are; others are split
    seeds_per_cc = np.zeros(n_cc, np.int64)
    if n_pk > 1:
        pk_cc = np.zeros(n_pk, np.int64)
        ys, xs = np.nonzero(pk)
        pk_cc[pk[ys, xs]] = cc[ys, xs]
        seeds_per_cc = np.bincount(pk_cc[1:], minlength=n_cc)
    labels = cc.copy()
    next_label = n_cc
    # a long, thin or huge blob is no clump of nuclei (pen stroke, fold, ink): it is not split
    cc_area_um2 = cc_stats[:, cv2.CC_STAT_AREA].astype(np.float64) * mpp * mpp
    cc_area_um2[0] = 0.0
    cc_elong = np.ones(n_cc)
    big = cc_area_um2 > cfg.nucleus_max_area_um2  # only these can be strokes: measure them
    if big.any():
        _, elong_big = _shape_stats(np.where(big[cc], cc, 0), n_cc)
        cc_elong[big] = elong_big[big]
    not_nuclei = (cc_area_um2 > MAX_CLUMP_NUCLEI * cfg.nucleus_max_area_um2) | (
        (cc_area_um2 > cfg.nucleus_max_area_um2) & (cc_elong > 2 * cfg.nucleus_max_elongation)
    )
    seeds_per_cc[not_nuclei] = 0
    multi = seeds_per_cc > 1
    if multi.any():
        # each pixel of a multi-seed blob joins its nearest seed of the same blob (a distance-
        # based split: no plateau artefacts; the cut falls where two round nuclei touch),
        # computed in the blob's bounding box
        for c in np.flatnonzero(multi):
            x, y = int(cc_stats[c, cv2.CC_STAT_LEFT]), int(cc_stats[c, cv2.CC_STAT_TOP])
            w, h = int(cc_stats[c, cv2.CC_STAT_WIDTH]), int(cc_stats[c, cv2.CC_STAT_HEIGHT])
            sl = (slice(y, y + h), slice(x, x + w))
            own = cc[sl] == c
            seeds = np.where(own, pk[sl], 0)
            _, near = cv2.distanceTransformWithLabels(
                (seeds == 0).astype(np.uint8),
                cv2.DIST_L2,
                cv2.DIST_MASK_5,
                labelType=cv2.DIST_LABEL_PIXEL,
            )
            sy, sx = np.nonzero(seeds)
            seed_of = np.zeros(int(near.max()) + 1, np.int32)
            seed_of[near[sy, sx]] = seeds[sy, sx]
            sub = labels[sl]
            sub[own] = n_cc + seed_of[near][own]
        next_label = n_cc + n_pk
    return _filter_nuclei(labels, next_label, mpp, cfg)


def _shape_stats(labels: np.ndarray, n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Area (px) and elongation (major / minor axis, from second moments) of labels 0…n−1."""
    ys, xs = np.nonzero(labels)
    lab = labels[ys, xs]
    area = np.bincount(lab, minlength=n_labels).astype(np.float64)
    safe = np.maximum(area, 1.0)
    mx = np.bincount(lab, xs, minlength=n_labels) / safe
    my = np.bincount(lab, ys, minlength=n_labels) / safe
    dx, dy = xs - mx[lab], ys - my[lab]
    cxx = np.bincount(lab, dx * dx, minlength=n_labels) / safe + 1 / 12
    cyy = np.bincount(lab, dy * dy, minlength=n_labels) / safe + 1 / 12
    cxy = np.bincount(lab, dx * dy, minlength=n_labels) / safe
    tr, det = cxx + cyy, cxx * cyy - cxy * cxy
    disc = np.sqrt(np.maximum(tr * tr / 4 - det, 0.0))
    l1, l2 = tr / 2 + disc, np.maximum(tr / 2 - disc, 1e-9)
    return area, np.sqrt(l1 / l2)


def _filter_nuclei(labels: np.ndarray, n_labels: int, mpp: float, cfg: CellConfig) -> np.ndarray:
    """Drop nuclei outside the area and elongation limits; relabel 1…N in raster order."""
    area, elong = _shape_stats(labels, n_labels)
    area_um2 = area * mpp * mpp
    ok = (
        (area_um2 >= cfg.nucleus_min_area_um2)
        & (area_um2 <= cfg.nucleus_max_area_um2)
        & (elong <= cfg.nucleus_max_elongation)
    )
    ok[0] = False
    new_id = np.zeros(n_labels, np.int32)
    new_id[ok] = np.arange(1, int(ok.sum()) + 1, dtype=np.int32)
    return new_id[labels]


def grow_cells(nuclei: np.ndarray, tissue: np.ndarray, mpp: float, cfg: CellConfig) -> np.ndarray:
    """Cell labels: each tissue pixel within ``cell_expand_um`` of a nucleus joins the nearest."""
    if not nuclei.any():
        return np.zeros_like(nuclei)
    src = (nuclei == 0).astype(np.uint8)
    dist, lab = cv2.distanceTransformWithLabels(
        src, cv2.DIST_L2, cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL
    )
    ys, xs = np.nonzero(nuclei)
    owner = np.zeros(int(lab.max()) + 1, np.int32)
    owner[lab[ys, xs]] = nuclei[ys, xs]
    cells = owner[lab]
    cells[(dist > cfg.cell_expand_um / mpp) | (~tissue & (nuclei == 0))] = 0
    return cells


def measure_cells(
    nuclei: np.ndarray,
    cells: np.ndarray,
    h_od: np.ndarray,
    dab_od: np.ndarray,
    mpp: float,
    cfg: CellConfig,
) -> RegionCells:
    """Per-cell nucleus and membrane measurements (see the module docstring)."""
    n = int(nuclei.max())
    if n == 0:
        return empty_cells()
    ys, xs = np.nonzero(nuclei)
    lab = nuclei[ys, xs]
    area = np.bincount(lab, minlength=n + 1)[1:].astype(np.float64)
    cx = np.bincount(lab, xs, minlength=n + 1)[1:] / area
    cy = np.bincount(lab, ys, minlength=n + 1)[1:] / area
    h_mean = np.bincount(lab, h_od[ys, xs], minlength=n + 1)[1:] / area

    # membrane band: cell pixels within band_um of the cell's boundary, outside the nucleus
    # boundary pixels: a 4-neighbour with another label (labels as float32 are exact < 2^24)
    lab_f = cells.astype(np.float32)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    not_edge = (cv2.dilate(lab_f, cross) == cv2.erode(lab_f, cross)).astype(np.uint8)
    del lab_f
    dist_edge = cv2.distanceTransform(not_edge, cv2.DIST_L2, 3)
    in_cell = cells > 0
    band = in_cell & (dist_edge <= cfg.band_um / mpp) & (nuclei == 0)
    interior = in_cell & ~band & (nuclei == 0)

    sigma = cfg.membrane_smooth_um / mpp
    dab_s = (cv2.GaussianBlur(dab_od, (0, 0), sigma) if sigma > 0.3 else dab_od).ravel()
    flat_cells = cells.ravel()
    fi = np.flatnonzero(interior)
    il = flat_cells[fi]
    dab_int = dab_s[fi]
    n_int = np.bincount(il, minlength=n + 1)[1:]
    # the median, not the mean: the blurred tail of a membrane that reaches the interior (a
    # boundary a little off the true membrane) is not taken for cytoplasm
    bg_int = _group_quantile(il, dab_int, n, 0.5)
    # cells without interior (tiny, crowded): the region's median cytoplasm, or 0
    fallback = float(np.median(dab_int)) if fi.size else 0.0
    bg = np.where(n_int >= 5, bg_int, fallback)
    del fi, il, dab_int

    fb = np.flatnonzero(band)
    by, bx = np.divmod(fb, cells.shape[1])
    bl = flat_cells[fb]
    n_band = np.bincount(bl, minlength=n + 1)[1:]
    peak, has = _sector_peaks(
        bl, by, bx, dab_s[fb], dist_edge.ravel()[fb], cx, cy, n, cfg.n_sectors
    )
    # background-corrected, calibrated OD of each sector's membrane peak
    peak = np.maximum(peak - bg[:, None].astype(np.float32), 0)
    if cfg.dab_scale != 1.0 or cfg.center_noise_od is not None:
        peak = calibrate_od(peak, cfg.dab_scale, cfg.dab_noise_od, cfg.center_noise_od)
    n_sec = has.sum(1)
    mem_mean = np.where(has, peak, 0).sum(1) / np.maximum(n_sec, 1)
    # the 90th percentile over the cell's sectors (the stained arc of an incomplete membrane)
    ranked = np.sort(np.where(has, peak, -1.0), axis=1)  # sectors without pixels first
    k = cfg.n_sectors
    pick = (k - n_sec) + np.floor(0.9 * np.maximum(n_sec - 1, 0)).astype(np.int64)
    p90 = np.where(n_sec > 0, ranked[np.arange(n), np.minimum(pick, k - 1)], 0.0)
    thr = np.maximum(cfg.od_faint, cfg.complete_rel * p90)
    n_st = (has & (peak >= thr[:, None])).sum(1)
    comp = np.where(n_sec > 0, n_st / np.maximum(n_sec, 1), 0.0)
    no_band = n_band == 0
    mem_mean[no_band] = 0.0
    p90[no_band] = 0.0
    comp[p90 < cfg.od_faint] = 0.0  # an unstained membrane has no stained arc
    return RegionCells(
        x=cx.astype(np.float32),
        y=cy.astype(np.float32),
        nucleus_area_um2=(area * mpp * mpp).astype(np.float32),
        nucleus_h_od=h_mean.astype(np.float32),
        membrane_od_mean=mem_mean.astype(np.float32),
        membrane_od_p90=p90.astype(np.float32),
        completeness=comp.astype(np.float32),
        nuclei=nuclei,
        cells=cells,
    )


def _group_quantile(lab: np.ndarray, values: np.ndarray, n: int, q: float) -> np.ndarray:
    """The ``q`` quantile (lower value) of ``values`` (≥ 0) per label 1…n; 0 for empty labels."""
    out = np.zeros(n, np.float64)
    if lab.size == 0:
        return out
    # sort by (label, value) with one integer key: the bits of a float32 ≥ 0 order like it
    v = np.ascontiguousarray(np.maximum(values, 0), np.float32)
    key = (lab.astype(np.uint64) << np.uint64(32)) | v.view(np.uint32).astype(np.uint64)
    key.sort()
    lab_s = (key >> np.uint64(32)).astype(np.int64)
    val_s = (key & np.uint64(0xFFFFFFFF)).astype(np.uint32).view(np.float32)
    starts = np.flatnonzero(np.r_[True, lab_s[1:] != lab_s[:-1]])
    counts = np.diff(np.r_[starts, lab_s.size])
    out[lab_s[starts] - 1] = val_s[starts + np.floor(q * (counts - 1)).astype(np.int64)]
    return out


def _sector_peaks(
    lab: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    dab: np.ndarray,
    dist_px: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    n: int,
    n_sectors: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Peak DAB OD along the membrane normal in each angular sector of each cell.

    Band pixels (cell ``lab`` 1…n at ``ys, xs``, ``dist_px`` from the cell boundary) are grouped
    by sector (around the nucleus centroid ``cx, cy``) and by one-pixel ring of distance to the
    boundary; each group is averaged (along the membrane: noise falls, the profile across it is
    not blurred) and the sector's value is the highest ring mean — the membrane's peak, however
    thin the membrane is. Returns ``peak`` (n × n_sectors, float32) and ``has`` (the sector holds
    band pixels).
    """
    k = n_sectors
    n_rings = int(dist_px.max()) + 1 if dist_px.size else 1
    ang = np.arctan2(ys - cy[lab - 1], xs - cx[lab - 1])
    sector = np.minimum(((ang + np.pi) / (2 * np.pi) * k).astype(np.int64), k - 1)
    ring = dist_px.astype(np.int64)  # floor: rings of one pixel from the boundary
    key = ((lab.astype(np.int64) - 1) * k + sector) * n_rings + ring
    size = n * k * n_rings
    total = np.bincount(key, dab.astype(np.float64), minlength=size)
    count = np.bincount(key, minlength=size)
    mean = np.where(count > 0, total / np.maximum(count, 1), -np.inf).reshape(n, k, n_rings)
    peak = mean.max(axis=2)
    has = np.isfinite(peak)
    return np.where(has, peak, 0.0).astype(np.float32), has


def analyse_region(
    rgb: np.ndarray,
    stain_matrix: np.ndarray,
    mpp: float,
    cfg: CellConfig,
    io: float = 240.0,
    h_threshold: float | None = None,
) -> RegionCells:
    """Nuclei, cells and membrane measurements of an RGB uint8 region at ``mpp`` µm/px.

    ``h_threshold``: the nucleus hematoxylin threshold to use (one per slide keeps the result
    independent of how the slide is cut into regions); None: the region's own Otsu threshold.
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an H×W×3 uint8 RGB region, got {rgb.dtype} {rgb.shape}")
    h_od, dab_od, valid = stain_concentrations(rgb, stain_matrix, io)
    nuclei = find_nuclei(h_od, valid, mpp, cfg, h_threshold)
    tissue = brightest(rgb) < WHITE_LEVEL
    cells = grow_cells(nuclei, tissue, mpp, cfg)
    return measure_cells(nuclei, cells, h_od, dab_od, mpp, cfg)


def outlines(labels: np.ndarray, n: int, keep: np.ndarray | None = None) -> list[np.ndarray]:
    """Outer outline (k×2 float x, y, region px) of labels 1…n (only where ``keep[i]``).

    The largest external contour of each label, simplified to within 0.5 px; a label without
    pixels gets an empty (0, 2) array.
    """
    from scipy import ndimage as ndi

    slices = ndi.find_objects(labels, max_label=n)
    out: list[np.ndarray] = []
    for i, sl in enumerate(slices):
        if keep is not None and not keep[i]:
            continue
        if sl is None:
            out.append(np.zeros((0, 2), np.float32))
            continue
        mask = np.zeros((sl[0].stop - sl[0].start + 2, sl[1].stop - sl[1].start + 2), np.uint8)
        mask[1:-1, 1:-1] = labels[sl] == i + 1
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:  # pragma: no cover - a labelled box has pixels
            out.append(np.zeros((0, 2), np.float32))
            continue
        c = max(contours, key=cv2.contourArea)
        c = cv2.approxPolyDP(c, 0.5, True).reshape(-1, 2).astype(np.float32)
        c[:, 0] += sl[1].start - 1
        c[:, 1] += sl[0].start - 1
        out.append(c)
    return out
