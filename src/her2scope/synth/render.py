"""Render one synthetic HER2 IHC slide from first principles (numpy + OpenCV, no torch).

The slide is built as maps of stain concentration at level 0 (0.5 µm/px):

- a tissue section (an irregular blob) on glass, with stroma (fibrous texture, spindle nuclei,
  lymphocytes), fat lobules and a tumour-rich region that the pathologist's ROI outlines;
- tumour nests whose cells are the Voronoi cells of jittered seeds: each cell has a hematoxylin
  nucleus (size, elongation, orientation and chromatin texture varying), cytoplasm and a membrane
  (the Voronoi boundary, ~1 µm thick);
- per-cell membrane DAB optical density drawn from the grade model of :mod:`her2scope.synth.params`
  (patient and slide offsets, a smooth within-slide heterogeneity field and per-cell noise), and a
  stained arc whose length is the membrane's completeness.

Colour follows Beer–Lambert with the centre's stain vectors and scanner profile:
``I = white · 10^(−(c_H·s_H·v_H + c_DAB·v_DAB + c_res·v_res))``, then optical blur, sensor noise,
gamma and (when written) JPEG compression at the centre's quality.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from her2scope.synth import params as P

#: Values of the level-0 label mask (``masks/<slide_id>.png``).
MASK_GLASS, MASK_TISSUE, MASK_TUMOUR, MASK_MEMBRANE = 0, 1, 2, 3

_LN10 = math.log(10.0)


@dataclass(frozen=True)
class SlidePlan:
    """What one slide must show; everything else is drawn from ``seed``."""

    slide_id: str
    patient_id: str
    center: P.CenterProfile
    label: str
    slide_px: int
    patient_offset: float  # log-scale offset of membrane DAB OD shared by the patient's slides
    seed: tuple[int, ...]  # entropy for np.random.default_rng
    zero_kind: str | None = None  # label "0" only: "0-null" or "0-ultralow" (None: either)


@dataclass
class RenderedSlide:
    """A rendered slide: RGB and label mask at level 0, the tumour cells and the ROI polygon."""

    rgb: np.ndarray  # H×W×3 uint8
    mask: np.ndarray  # H×W uint8, MASK_* values
    cells: dict[str, np.ndarray]  # x, y (level-0 px), class_idx, completeness, dab_od, in_roi
    roi: np.ndarray  # (n, 2) float level-0 (x, y) vertices of the Tumor ROI, not closed
    score: str  # ASCO/CAP score of the rendered cells (equals plan.label)
    log_offset: float  # the slide's final log-scale offset of membrane DAB OD
    call: str = ""  # ASCO/CAP 2023 call of the cells: 0-null, 0-ultralow, 1+, 2+ or 3+


# --- noise helpers ---------------------------------------------------------------------------


def _coarse(
    rng: np.random.Generator, shape: tuple[int, int], scale_px: float
) -> tuple[np.ndarray, float, float]:
    """A smoothed unit-variance noise grid, one node per ``scale_px``, and its (x, y) margins.

    Node ``k`` of the grid sits at ``(k + 0.5)·scale_px − margin`` in the output frame.
    """
    gh = max(2, math.ceil(shape[0] / scale_px) + 3)
    gw = max(2, math.ceil(shape[1] / scale_px) + 3)
    white = rng.standard_normal((gh, gw)).astype(np.float32)
    g = cv2.GaussianBlur(white, (0, 0), 0.7, borderType=cv2.BORDER_REFLECT)
    np.divide(g, max(float(g.std()), 1e-6), out=g)
    return g, (gw * scale_px - shape[1]) / 2, (gh * scale_px - shape[0]) / 2


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float) -> np.ndarray:
    """A smooth random field of ``shape`` with features of about ``scale_px``, roughly N(0, 1)."""
    g, ox, oy = _coarse(rng, shape, scale_px)
    m = np.array(
        [[1 / scale_px, 0, ox / scale_px - 0.5], [0, 1 / scale_px, oy / scale_px - 0.5]],
        np.float64,
    )
    flags = cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP
    return cv2.warpAffine(g, m, (shape[1], shape[0]), flags=flags, borderMode=cv2.BORDER_REFLECT)


def field_at(
    rng: np.random.Generator, shape: tuple[int, int], scale_px: float, xy: np.ndarray
) -> np.ndarray:
    """The field :func:`smooth_field` would draw from ``rng``, evaluated only at points ``xy``
    (n×2 level-0 x, y); cheaper when only cell centres need it."""
    from scipy.ndimage import map_coordinates

    g, ox, oy = _coarse(rng, shape, scale_px)
    gy = (xy[:, 1] + oy) / scale_px - 0.5
    gx = (xy[:, 0] + ox) / scale_px - 0.5
    return map_coordinates(g, [gy, gx], order=3, mode="nearest").astype(np.float32)


def _jittered_grid(
    rng: np.random.Generator, shape: tuple[int, int], spacing: float, jitter: float
) -> np.ndarray:
    """Seeds on a hexagonal grid with ``spacing`` px, each moved by up to ``jitter``·spacing."""
    h, w = shape
    row_h = spacing * math.sqrt(3) / 2
    ys = np.arange(0, h, row_h)
    xs = np.arange(0, w, spacing)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    gx = gx + (np.arange(len(ys))[:, None] % 2) * spacing / 2
    pts = np.stack([gx.ravel(), gy.ravel()], axis=1)
    pts += rng.uniform(-jitter, jitter, pts.shape) * spacing
    keep = (pts[:, 0] >= 0) & (pts[:, 0] < w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] < h - 1)
    return pts[keep]


def _blob_polygon(
    rng: np.random.Generator,
    centre: tuple[float, float],
    radii: tuple[float, float],
    n_vertices: int,
    roughness: float,
) -> np.ndarray:
    """An irregular closed outline (n×2 float x, y) around ``centre``: an ellipse with wobble."""
    theta = np.linspace(0, 2 * np.pi, n_vertices, endpoint=False)
    r = np.ones_like(theta)
    for k in range(2, 6):
        r += roughness / k * rng.normal() * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    rot = rng.uniform(0, np.pi)
    x = radii[0] * r * np.cos(theta)
    y = radii[1] * r * np.sin(theta)
    xr = centre[0] + x * math.cos(rot) - y * math.sin(rot)
    yr = centre[1] + x * math.sin(rot) + y * math.cos(rot)
    return np.stack([xr, yr], axis=1)


def _fill(shape: tuple[int, int], poly: np.ndarray) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [np.round(poly * 16).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=4)
    return m.astype(bool)


# --- membrane model --------------------------------------------------------------------------


def _complete_probability(od: np.ndarray) -> np.ndarray:
    """Chance that a membrane with DAB OD ``od`` is stained all round (rises through weak)."""
    x = (np.log(np.maximum(od, 1e-4)) - math.log(0.2)) / 0.22
    return 1.0 / (1.0 + np.exp(-x))


def membrane_state(
    base_log: np.ndarray, u_complete: np.ndarray, v_arc: np.ndarray, log_offset: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Membrane DAB OD, class index and completeness of cells, given their latent draws.

    Monotone in ``log_offset``: raising it never lowers a cell's class or completeness, so the
    slide's ASCO/CAP score is non-decreasing in it (used to hit the requested grade exactly).
    """
    od = np.exp(base_log + log_offset)
    cls = P.membrane_class_index(od)
    complete = u_complete < _complete_probability(od)
    completeness = np.where(complete, 0.9 + 0.1 * v_arc, 0.2 + 0.65 * v_arc)
    completeness = np.where(cls == 0, 0.0, completeness)
    return od.astype(np.float32), cls, completeness.astype(np.float32)


def _fit_offset(
    target: str, base_log: np.ndarray, u: np.ndarray, v: np.ndarray, start: float
) -> float:
    """The log offset nearest to ``start`` whose cells score ``target`` by ASCO/CAP."""
    order = ("0", "1+", "2+", "3+")

    def score(off: float) -> int:
        _, cls, comp = membrane_state(base_log, u, v, off)
        return order.index(P.asco_cap_score(cls, comp))

    want = order.index(target)
    off = start
    for _ in range(200):
        s = score(off)
        if s == want:
            return off
        off += -0.02 if s > want else 0.02
    raise RuntimeError(f"could not reach HER2 {target} from offset {start}")  # pragma: no cover


def _fit_zero_offset(
    kind: str, base_log: np.ndarray, u: np.ndarray, v: np.ndarray, start: float
) -> float:
    """The log offset nearest to ``start`` whose cells are HER2-0 of ``kind``.

    ``0-null``: no stained cell; ``0-ultralow``: stained (faint) cells in
    :data:`~her2scope.synth.params.ULTRALOW_RANGE` of the tumour cells, inside the ASCO/CAP
    ultralow band (> 0 and ≤ 10 %) with a margin on both sides.
    """
    lo, hi = P.ULTRALOW_RANGE

    def rank(off: float) -> float:  # non-decreasing in off (membrane_state is monotone)
        _, cls, comp = membrane_state(base_log, u, v, off)
        if P.asco_cap_score(cls, comp) != "0":
            return 2.0
        stained = np.count_nonzero(cls >= 1) / cls.size
        if stained == 0:
            return 0.0
        if stained < lo:
            return 0.5
        return 1.0 if stained <= hi else 1.5

    want = {"0-null": 0.0, "0-ultralow": 1.0}[kind]
    off = start
    for _ in range(400):
        r = rank(off)
        if r == want:
            return off
        off += -0.02 if r > want else 0.02
    raise RuntimeError(f"could not reach HER2 {kind} from offset {start}")  # pragma: no cover


# --- rendering ---------------------------------------------------------------------------------


@dataclass
class _Layout:
    """Where things are on the slide (level-0 boolean maps and the ROI outline)."""

    roi: np.ndarray
    roi_mask: np.ndarray
    tissue: np.ndarray
    nests: np.ndarray
    fat_region: np.ndarray


@dataclass
class _Cells:
    """Voronoi cells: seeds, the owner of each pixel and the distance to the nearest boundary."""

    x: np.ndarray  # tumour cell seeds, level-0 px (float32)
    y: np.ndarray
    owner: np.ndarray  # H×W int32: index of the nearest seed (tumour first, then adipocytes)
    tumour: np.ndarray  # H×W bool: pixel belongs to a tumour cell
    fat: np.ndarray  # H×W bool: pixel belongs to an adipocyte
    edge_dist: np.ndarray  # H×W float32: px to the nearest cell boundary


def render_slide(plan: SlidePlan, band_px: int = 512) -> RenderedSlide:
    """Render ``plan`` into a level-0 RGB image, label mask, cell table and ROI polygon.

    Deterministic: the same plan gives the same arrays. Per-pixel work runs in bands of
    ``band_px`` rows to bound memory (under 1 GB for a 4096 px slide).
    """
    rng = np.random.default_rng(list(plan.seed))
    shape = (plan.slide_px, plan.slide_px)
    um = 1.0 / plan.center.mpp  # px per µm (the centre's scanner)

    lay = _layout(rng, shape, um)
    cells = _voronoi(rng, lay, um, plan.center.cell_scale)
    n_cells = cells.x.size
    if n_cells == 0:  # pragma: no cover - the ROI always holds nests
        raise RuntimeError(f"slide {plan.slide_id}: no tumour cells rendered")

    # membrane staining per cell: grade median × patient/slide offset × spatial field × cell noise
    xy = np.stack([cells.x, cells.y], axis=1)
    spatial = field_at(rng, shape, P.SPATIAL_SCALE_UM * um, xy)
    base_log = (
        math.log(P.GRADE_MEDIAN_OD[plan.label])
        + P.SIGMA_SPATIAL * spatial
        + P.SIGMA_CELL * rng.standard_normal(n_cells).astype(np.float32)
    )
    u_complete = rng.uniform(size=n_cells)
    v_arc = rng.uniform(size=n_cells)
    start = plan.patient_offset + P.SIGMA_SLIDE * float(rng.normal())
    if plan.label == "0" and plan.zero_kind is not None:
        log_offset = _fit_zero_offset(plan.zero_kind, base_log, u_complete, v_arc, start)
    else:
        log_offset = _fit_offset(plan.label, base_log, u_complete, v_arc, start)
    dab_od, cls, completeness = membrane_state(base_log, u_complete, v_arc, log_offset)
    score = P.asco_cap_score(cls, completeness)

    c_h, c_d, c_r = _background_maps(rng, lay, cells, um)
    mask = np.zeros(shape, np.uint8)
    mask[lay.tissue] = MASK_TISSUE
    mask[cells.tumour] = MASK_TUMOUR
    _paint_tumour(
        rng, cells, dab_od, cls, completeness, c_h, c_d, c_r, mask, um, band_px, plan.center
    )
    cx, cy = cells.x, cells.y
    del cells  # free the per-pixel maps before the colour stage

    rgb = _scan(rng, plan.center, c_h, c_d, c_r, band_px)
    del c_h, c_d, c_r

    out_cells = {
        "x": cx,
        "y": cy,
        "class_idx": cls,
        "completeness": completeness,
        "dab_od": dab_od,
        "in_roi": lay.roi_mask[cy.astype(np.int32), cx.astype(np.int32)],
    }
    return RenderedSlide(
        rgb=rgb,
        mask=mask,
        cells=out_cells,
        roi=lay.roi,
        score=score,
        log_offset=float(log_offset),
        call=P.asco_cap_call(cls, completeness),
    )


def _layout(rng: np.random.Generator, shape: tuple[int, int], um: float) -> _Layout:
    """Tissue section, the ROI, tumour nests (dense inside the ROI, sparse outside) and fat."""
    h, w = shape
    size = max(h, w)
    c = (w / 2 + rng.uniform(-0.03, 0.03) * w, h / 2 + rng.uniform(-0.03, 0.03) * h)
    roi = _blob_polygon(
        rng, c, (rng.uniform(0.34, 0.40) * w, rng.uniform(0.31, 0.37) * h), 48, 0.08
    )
    roi = np.clip(roi, 0.03 * size, 0.97 * size)
    roi_mask = _fill(shape, roi)
    section = _blob_polygon(rng, c, (0.47 * w, 0.45 * h), 96, 0.07)
    tissue = _fill(shape, section) | roi_mask
    # a few holes (tears, empty lumina): glass inside the section, ~1 per 0.4 mm²
    holes = np.zeros(shape, np.uint8)
    n_holes = rng.poisson(h * w / (1300 * um) ** 2 * 1.0)
    for _ in range(n_holes):
        hx, hy = rng.uniform(0.1, 0.9, 2) * (w, h)
        ax = rng.uniform(15, 60) * um
        ay = ax * rng.uniform(0.3, 1.0)
        cv2.ellipse(
            holes, (int(hx), int(hy)), (int(ax), int(ay)), rng.uniform(0, 180), 0, 360, 1, -1
        )
    tissue &= holes == 0

    # signed distance to the ROI outline (positive inside), computed at 1/8 resolution: smooth
    k = 8
    small = cv2.resize(roi_mask.astype(np.uint8), (w // k, h // k), interpolation=cv2.INTER_AREA)
    inside = cv2.distanceTransform(small, cv2.DIST_L2, 3)
    outside = cv2.distanceTransform(1 - small, cv2.DIST_L2, 3)
    signed = (inside - outside) * k
    cellularity = rng.uniform(-0.1, 0.5)  # how tumour-rich the ROI is
    bias_small = np.where(signed > 0, cellularity, -1.5) + 0.6 * np.tanh(signed / (60 * um))
    bias = cv2.resize(bias_small.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    nest_field = smooth_field(rng, shape, 55 * um)
    nest_field += 0.4 * smooth_field(rng, shape, 20 * um)
    nest_field += bias
    nests = (nest_field > 0.0) & tissue
    del nest_field, bias
    signed_full = cv2.resize(signed.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    far_out = signed_full < -30 * um
    del signed_full
    fat_region = (smooth_field(rng, shape, 200 * um) > 0.6) & tissue & far_out
    fat_region &= ~cv2.dilate(nests.astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool)
    return _Layout(roi=roi, roi_mask=roi_mask, tissue=tissue, nests=nests, fat_region=fat_region)


def _voronoi(rng: np.random.Generator, lay: _Layout, um: float, cell_scale: float = 1.0) -> _Cells:
    """Tumour cells and adipocytes as Voronoi cells of jittered hexagonal seeds."""
    shape = lay.tissue.shape
    cell_px = rng.uniform(12.0, 16.0) * um * cell_scale  # tumour cell diameter
    seeds = _jittered_grid(rng, shape, cell_px, 0.3)
    sx, sy = seeds[:, 0].astype(np.int32), seeds[:, 1].astype(np.int32)
    keep = lay.nests[sy, sx]
    sx, sy = sx[keep], sy[keep]
    fat_seeds = _jittered_grid(rng, shape, 55 * um, 0.25)
    fx, fy = fat_seeds[:, 0].astype(np.int32), fat_seeds[:, 1].astype(np.int32)
    keep = lay.fat_region[fy, fx]
    fx, fy = fx[keep], fy[keep]
    n_cells = sx.size
    all_x = np.concatenate([sx, fx])
    all_y = np.concatenate([sy, fy])

    seed_img = np.full(shape, 255, np.uint8)
    seed_img[all_y, all_x] = 0
    dist, lab = cv2.distanceTransformWithLabels(
        seed_img, cv2.DIST_L2, cv2.DIST_MASK_5, labelType=cv2.DIST_LABEL_PIXEL
    )
    del seed_img
    owner_of_label = np.full(int(lab.max()) + 1, -1, np.int32)
    owner_of_label[lab[all_y, all_x]] = np.arange(all_x.size, dtype=np.int32)
    owner = owner_of_label[lab]  # index into all_x/all_y of the nearest seed
    del lab
    is_tumour_seed = np.arange(all_x.size) < n_cells
    owner_is_tumour = is_tumour_seed[owner]
    tumour = lay.nests & owner_is_tumour & (dist < 1.2 * cell_px)
    fat = lay.fat_region & ~owner_is_tumour
    del dist, owner_is_tumour

    # a 1 px line between neighbouring cells (and around each nest and lobule)
    cell_map = np.where(tumour | fat, owner, -1)
    line = np.zeros(shape, np.uint8)
    line[:, 1:] |= cell_map[:, 1:] != cell_map[:, :-1]
    line[1:, :] |= cell_map[1:, :] != cell_map[:-1, :]
    del cell_map
    edge_dist = cv2.distanceTransform(1 - line, cv2.DIST_L2, 3)
    return _Cells(
        x=sx.astype(np.float32),
        y=sy.astype(np.float32),
        owner=owner,
        tumour=tumour,
        fat=fat,
        edge_dist=edge_dist,
    )


def _background_maps(
    rng: np.random.Generator, lay: _Layout, cells: _Cells, um: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hematoxylin, DAB and residual concentration maps of everything but the tumour cells."""
    shape = lay.tissue.shape
    c_h = np.zeros(shape, np.float32)
    c_d = np.zeros(shape, np.float32)
    c_r = np.zeros(shape, np.float32)
    # stroma: collagen fibres along a slide-wide direction, faint counterstain
    stroma = lay.tissue & ~cells.tumour & ~cells.fat
    fib = _fibres(rng, shape, um)
    np.copyto(c_h, 0.035 + 0.02 * fib, where=stroma)
    np.copyto(c_r, 0.09 + 0.06 * fib, where=stroma)
    del fib
    background_dab = np.float32(rng.uniform(0.0, 0.05))  # non-specific DAB background
    np.copyto(c_d, background_dab, where=lay.tissue & ~cells.fat)
    # fat: empty adipocytes with thin walls
    wall = cells.fat & (cells.edge_dist < 1.0)
    c_r[wall] = 0.2
    c_h[wall] = 0.04
    # fibroblast and lymphocyte nuclei
    _stromal_nuclei(rng, c_h, stroma, um)
    return c_h, c_d, c_r


def _paint_tumour(
    rng: np.random.Generator,
    cells: _Cells,
    dab_od: np.ndarray,
    cls: np.ndarray,
    completeness: np.ndarray,
    c_h: np.ndarray,
    c_d: np.ndarray,
    c_r: np.ndarray,
    mask: np.ndarray,
    um: float,
    band_px: int,
    center: P.CenterProfile,
) -> None:
    """Nuclei, cytoplasm and membranes of the tumour cells, in bands of rows (in place).

    The centre's ``nucleus_scale`` and ``membrane_scale`` set the morphology; its ``dab_scale``
    (assay sensitivity) scales the rendered membrane and cytoplasmic DAB, not the cells' grade.
    """
    n = cells.x.size
    nuc_a = rng.uniform(2.8, 4.6, n).astype(np.float32) * um  # nucleus semi-axes, px
    nuc_a *= np.float32(center.nucleus_scale)
    nuc_b = nuc_a * rng.uniform(0.6, 0.95, n).astype(np.float32)
    nuc_t = rng.uniform(0, np.pi, n).astype(np.float32)
    cos_t, sin_t = np.cos(nuc_t), np.sin(nuc_t)
    nuc_x = cells.x + rng.normal(0, 0.8 * um, n).astype(np.float32)
    nuc_y = cells.y + rng.normal(0, 0.8 * um, n).astype(np.float32)
    nuc_h = rng.uniform(0.32, 0.6, n).astype(np.float32)
    arc_start = rng.uniform(0, 2 * np.pi, n).astype(np.float32)
    arc_len = (2 * np.pi * completeness).astype(np.float32)
    stainable = cls > 0
    # membrane half-width, px: ~0.6 µm unstained, up to ~1.3 µm for strong staining
    mem_hw = (0.6 + 0.45 * np.minimum(dab_od, 1.5)).astype(np.float32) * um
    mem_hw *= np.float32(center.membrane_scale)
    dab_od = dab_od * np.float32(center.dab_scale)  # what the assay shows (1.0: A and B)
    blush = (0.06 * dab_od).astype(np.float32)  # cytoplasmic DAB

    h, w = mask.shape
    for y0 in range(0, h, band_px):
        band = slice(y0, min(h, y0 + band_px))
        local = np.flatnonzero(cells.tumour[band])
        if local.size == 0:
            continue
        idx = local + y0 * w
        own = cells.owner.ravel()[idx]
        py, px = np.divmod(idx, w)
        dx = px.astype(np.float32) - nuc_x[own]
        dy = py.astype(np.float32) - nuc_y[own]
        u = (dx * cos_t[own] + dy * sin_t[own]) / nuc_a[own]
        v = (dy * cos_t[own] - dx * sin_t[own]) / nuc_b[own]
        q = u * u + v * v
        chrom = rng.standard_normal(idx.size, dtype=np.float32)
        in_nuc = q * (1.0 + 0.15 * chrom) < 1.0
        # nuclei: darker rim, grainy chromatin; cytoplasm: faint counterstain, DAB blush
        h_t = np.where(in_nuc, nuc_h[own] * (0.75 + 0.3 * q + 0.25 * chrom), 0.035)
        r_t = np.where(in_nuc, np.float32(0.08), np.float32(0.11))
        d_t = np.where(in_nuc, np.float32(0.0), blush[own])
        # membranes: profile 1 on the boundary, falling off over the cell's half-width; only the
        # cell's stained arc (its completeness) carries DAB
        e = cells.edge_dist.ravel()[idx] / mem_hw[own]
        prof = np.exp(-(e * e))
        ang = np.arctan2(py.astype(np.float32) - cells.y[own], px.astype(np.float32) - cells.x[own])
        arc = (np.mod(ang - arc_start[own], 2 * np.pi) < arc_len[own]) & ~in_nuc
        grain = rng.uniform(0.85, 1.15, idx.size).astype(np.float32)
        d_t = d_t + np.where(arc, dab_od[own] * grain * prof, np.float32(0.0))
        h_t = h_t + np.where(in_nuc, np.float32(0.0), 0.04 * prof)
        c_h.ravel()[idx] = np.maximum(h_t, 0.0)
        c_r.ravel()[idx] = r_t
        c_d.ravel()[idx] += d_t
        stained = arc & (e < 1.0) & stainable[own]
        mask.ravel()[idx[stained]] = MASK_MEMBRANE


def _fibres(rng: np.random.Generator, shape: tuple[int, int], um: float) -> np.ndarray:
    """Streaky collagen texture in [−1, 1]: noise stretched along a random direction."""
    h, w = shape
    side = math.hypot(h, w)
    along, across = 40 * um, 4 * um  # feature lengths, px
    nr, nc = math.ceil(side / across) + 4, math.ceil(side / along) + 4
    g = rng.standard_normal((nr, nc)).astype(np.float32)
    a = math.radians(float(rng.uniform(0, 180)))
    ca, sa = math.cos(a), math.sin(a)
    cx, cy = w / 2, h / 2
    # output (x, y) → grid (col, row): rotate about the centre, then scale each axis
    m = np.array(
        [
            [ca / along, sa / along, -(ca * cx + sa * cy) / along + nc / 2],
            [-sa / across, ca / across, (sa * cx - ca * cy) / across + nr / 2],
        ],
        np.float64,
    )
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    out = cv2.warpAffine(g, m, (w, h), flags=flags, borderMode=cv2.BORDER_REFLECT)
    return np.tanh(out)


def _stromal_nuclei(
    rng: np.random.Generator, c_h: np.ndarray, stroma: np.ndarray, um: float
) -> None:
    """Draw spindle-shaped fibroblast nuclei and small round lymphocytes into ``c_h`` (stroma)."""
    h, w = stroma.shape
    layer = np.zeros_like(c_h)
    n_fib = int(h * w / (45 * um) ** 2)
    xs = rng.uniform(0, w, n_fib)
    ys = rng.uniform(0, h, n_fib)
    base_angle = rng.uniform(0, 180)
    for x, y in zip(xs, ys, strict=True):
        ax = rng.uniform(4, 7) * um
        ay = rng.uniform(1.0, 1.8) * um
        ang = base_angle + rng.normal(0, 20)
        val = float(rng.uniform(0.35, 0.6))
        cv2.ellipse(
            layer, (int(x), int(y)), (int(ax), max(1, int(ay))), ang, 0, 360, val, -1, cv2.LINE_AA
        )
    n_clusters = int(rng.integers(2, 6))
    for _ in range(n_clusters):
        ccx, ccy = rng.uniform(0, w), rng.uniform(0, h)
        n_lym = int(rng.integers(30, 120))
        spread = rng.uniform(25, 60) * um
        for x, y in rng.normal([ccx, ccy], spread, (n_lym, 2)):
            r = int(rng.uniform(3.0, 4.0) * um)
            cv2.circle(layer, (int(x), int(y)), r, float(rng.uniform(0.7, 0.95)), -1, cv2.LINE_AA)
    np.maximum(c_h, np.where(stroma, layer, 0.0), out=c_h)


def _scan(
    rng: np.random.Generator,
    center: P.CenterProfile,
    c_h: np.ndarray,
    c_d: np.ndarray,
    c_r: np.ndarray,
    band_px: int = 512,
) -> np.ndarray:
    """Beer–Lambert colour, optical blur, sensor noise and gamma: concentration maps → RGB uint8.

    Works in bands of rows with a halo wide enough for the blur, so the result does not depend
    on ``band_px`` except through the order of the noise draws.
    """
    h, w = c_h.shape
    jitter = rng.uniform(0.92, 1.08)  # slide-to-slide counterstain variation within a centre
    vh = np.asarray(center.h_vector, np.float32) * np.float32(center.h_strength * jitter)
    vd = np.asarray(center.dab_vector, np.float32)
    vr = P.unit(P.TISSUE_RESIDUAL).astype(np.float32)
    white = np.asarray(center.white_rgb, np.float64)
    # log I = ln(white) − ln(10)·(c_H·v_H + c_DAB·v_DAB + c_res·v_res), one 3×4 affine per pixel
    to_log_i = np.concatenate(
        [-_LN10 * np.stack([vh, vd, vr], axis=1), np.log(white)[:, None]], axis=1
    ).astype(np.float64)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** center.gamma + 0.5, 0, 255).astype(np.uint8)
    # sensor noise: one block of draws reused with a random shift per band (invisible, cheaper)
    noise = rng.standard_normal((band_px, w + 64, 3), dtype=np.float32)
    noise *= np.float32(center.noise_sd)
    noise += np.float32(0.5)  # rounding offset for the uint8 conversion
    halo = math.ceil(4 * center.blur_px) + 1
    out = np.empty((h, w, 3), np.uint8)
    for y0 in range(0, h, band_px):
        y1 = min(h, y0 + band_px)
        a, b = max(0, y0 - halo), min(h, y1 + halo)
        conc = cv2.merge([c_h[a:b], c_d[a:b], c_r[a:b]])
        lin = cv2.exp(cv2.transform(conc, to_log_i))  # log intensity → intensity
        if center.blur_px > 0:
            lin = cv2.GaussianBlur(lin, (0, 0), center.blur_px, borderType=cv2.BORDER_REFLECT)
        block: np.ndarray = lin[y0 - a : y0 - a + (y1 - y0)]
        shift = int(rng.integers(0, 64))
        block += noise[: y1 - y0, shift : shift + w]
        np.clip(block, 0, 255, out=block)
        out[y0:y1] = cv2.LUT(block.astype(np.uint8), lut)
    return out
