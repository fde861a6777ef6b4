"""IHC-aware Macenko stain normalisation: numpy reference (no torch import here).

Frames and units: images are RGB uint8; optical density (OD) is ``-ln((I + 1) / io)`` per channel
(``io`` = 240, Macenko 2009 / torchstain); stain vectors are unit OD vectors, rows ``[H, DAB]``;
concentrations are OD along those unit vectors.

One algorithm: :meth:`StainNormalizer.fit` estimates the slide's stain matrix and 99th-percentile
concentrations; the normalisation itself is then one 3×3 linear map in OD space
(:meth:`StainNormalizer.od_matrix`), applied by :meth:`StainNormalizer.transform` in numpy or, for
NCHW torch tensors, by :mod:`her2scope.stain._torch` with the same matrix.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np

from her2scope.errors import ConfigError

log = logging.getLogger(__name__)

Mode = Literal["preserve_dab", "standard"]
MODES: tuple[str, ...] = ("preserve_dab", "standard")

# Ruifrok & Johnston 2001 hematoxylin and DAB OD vectors (as in skimage.color.hdx_from_rgb):
# used only to order the two vectors found by fit_reference.
RUIFROK_H_DAB = np.array([[0.650, 0.704, 0.286], [0.268, 0.570, 0.776]])
RUIFROK_H_DAB = RUIFROK_H_DAB / np.linalg.norm(RUIFROK_H_DAB, axis=1, keepdims=True)

MAX_FIT_PX = 1 << 22  # pixels pooled by one fit; larger inputs are subsampled (fixed seed)
MIN_TISSUE_PX = 500  # fewer tissue pixels than this: no fit (passthrough)
MIN_TISSUE_FRAC = 0.02  # nor with less than this fraction of the pixels being tissue
MAX_H_ONLY_ANGLE_DEG = 15.0  # hematoxylin-only fallback: fitted H within this of the reference H
MIN_STAIN_ANGLE_DEG = 3.0  # two estimated vectors closer than this: one stain only (no fit)
# Tissue OD whose second covariance eigenvalue is below this fraction of the first has one direction
# of variation only (flat-colour tiles: one stain at varying strength, or ink of a few flat colours).
# Its Macenko plane is not determined by the data: the eigenvectors of the (numerically) zero
# eigenvalues are whatever the BLAS kernel returns, so such tiles are decided without them. The
# gap is wide on both sides: rounding noise is ~1e-15 of the first eigenvalue, real tissue ≥ 1e-4.
RANK1_REL_EIGVAL = 1e-9
# One stain at varying strength lies on a line through the OD origin; flat ink colours lie on a line
# that misses it (pen tile of the tests: 37° away). Lines within this angle of the origin: one stain.
MAX_LINE_TO_ORIGIN_DEG = 5.0


@dataclass(frozen=True)
class StainReference:
    """Target appearance: unit OD vectors (rows H, DAB) and 99th-percentile concentrations."""

    stain_matrix: np.ndarray  # (2, 3)
    max_conc: np.ndarray  # (2,) H, DAB
    name: str = "custom"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "stain_matrix": np.asarray(self.stain_matrix, float).round(6).tolist(),
            "max_conc": np.asarray(self.max_conc, float).round(6).tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "reference") -> StainReference:
        try:
            m = np.asarray(d["stain_matrix"], dtype=float)
            c = np.asarray(d["max_conc"], dtype=float)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"stain {source}: needs 'stain_matrix' (2x3) and 'max_conc' (2 numbers): {exc}"
            ) from None
        if (
            m.shape != (2, 3)
            or c.shape != (2,)
            or not (np.isfinite(m).all() and np.isfinite(c).all())
        ):
            raise ConfigError(
                f"stain {source}: stain_matrix must be 2x3 and max_conc 2 finite numbers, "
                f"got shapes {m.shape} and {c.shape}"
            )
        if (c <= 0).any() or (np.linalg.norm(m, axis=1) == 0).any():
            raise ConfigError(f"stain {source}: max_conc must be > 0 and vectors non-zero")
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        return cls(m, c, str(d.get("name", "custom")))


def default_reference() -> StainReference:
    """The packaged reference (``resources/stain_reference.json``; see docs/stain.md)."""
    text = resources.files("her2scope").joinpath("resources/stain_reference.json").read_text()
    return StainReference.from_dict(json.loads(text), "packaged reference")


def load_reference(ref: StainReference | dict | str | Path | None) -> StainReference:
    """A reference from an object, a dict, a JSON file written by :func:`save_reference`, or None."""
    if ref is None:
        return default_reference()
    if isinstance(ref, StainReference):
        return ref
    if isinstance(ref, dict):
        return StainReference.from_dict(ref)
    path = Path(ref)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"stain reference '{path}': cannot read it ({exc}); write one with fit_reference"
        ) from None
    return StainReference.from_dict(d, f"reference '{path}'")


def save_reference(ref: StainReference, path: str | Path) -> None:
    from her2scope._io import write_json

    write_json(path, ref.to_dict())


def od_lut(io: float) -> np.ndarray:
    """OD of every uint8 value: ``-ln((v + 1) / io)`` (float64, 256 entries)."""
    return -np.log((np.arange(256, dtype=np.float64) + 1.0) / io)


def _max_tissue_value(lut: np.ndarray, beta: float) -> int:
    below = np.nonzero(lut >= beta)[0]
    return int(below[-1]) if len(below) else -1


def _as_images(images: Any) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        arrs = [images] if images.ndim == 3 else list(images)
    else:
        arrs = [np.asarray(a) for a in images]
    for a in arrs:
        if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
            raise ValueError(
                f"stain fit: expected HWC uint8 RGB images, got {a.dtype} array of shape {a.shape}"
            )
    return arrs


def _pool_pixels(arrs: list[np.ndarray], max_px: int, seed: int = 0) -> np.ndarray:
    """All pixels (N, 3) uint8, or a fixed-seed sample of ``max_px`` spread over the images."""
    total = sum(a.shape[0] * a.shape[1] for a in arrs)
    if total <= max_px:
        return np.concatenate([a.reshape(-1, 3) for a in arrs])
    rng = np.random.default_rng(seed)
    parts = []
    for a in arrs:
        flat = a.reshape(-1, 3)
        k = max(1, round(len(flat) * max_px / total))
        parts.append(flat[rng.choice(len(flat), size=min(k, len(flat)), replace=False)])
    return np.concatenate(parts)


@dataclass(frozen=True)
class StainFit:
    """Result of estimating stains on pooled pixels; ``stain_matrix`` is None when no fit."""

    stain_matrix: np.ndarray | None  # (2, 3) rows H, DAB
    max_conc: np.ndarray | None  # (2,)
    n_px: int
    n_tissue_px: int
    reason: str = ""  # why there is no fit


def estimate_stains(
    px: np.ndarray,
    order_by: np.ndarray,
    io: float = 240.0,
    alpha: float = 1.0,
    beta: float = 0.15,
    min_tissue_px: int = MIN_TISSUE_PX,
) -> StainFit:
    """Macenko 2009 on pixels ``px`` (N, 3) uint8; vectors ordered by matching ``order_by`` (2, 3).

    Tissue = pixels with OD ≥ ``beta`` in every channel; a fit needs ``min_tissue_px`` of them and
    at least ``MIN_TISSUE_FRAC`` of all pixels. Never raises on bad content: too little tissue, one
    stain only, vectors that do not match the reference H and DAB (pen ink, no DAB) or non-finite
    maths give a fit with ``stain_matrix=None`` and a reason. Computed on the distinct colours
    weighted by their pixel counts (:func:`colour_counts`): the statistics of the pixels.
    """
    lut = od_lut(io)
    colours, counts = colour_counts(px)
    od = lut.astype(np.float32)[colours]  # (U, 3); float32 for the concentrations, float64 below
    # OD ≥ beta in every channel ⇔ the brightest channel is at most the last uint8 value whose OD ≥ beta
    is_tissue = colours.max(axis=1) <= _max_tissue_value(lut, beta)
    tissue, w = lut[colours[is_tissue]], counts[is_tissue]  # float64 OD, pixels per colour
    n_px, n_tissue = len(px), int(w.sum())
    need = max(min_tissue_px, int(np.ceil(MIN_TISSUE_FRAC * n_px)))
    if n_tissue < need:
        return StainFit(
            None, None, n_px, n_tissue, f"too little tissue ({n_tissue} of {n_px} px < {need})"
        )
    mean = (w @ tissue) / n_tissue
    centred = tissue - mean
    cov = (centred * w[:, None]).T @ centred / (n_tissue - 1)
    if not np.isfinite(cov).all():
        return StainFit(None, None, n_px, n_tissue, "non-finite OD covariance")
    try:
        eigvals, vecs = np.linalg.eigh(cov)
    except np.linalg.LinAlgError as exc:
        return StainFit(None, None, n_px, n_tissue, f"eigen decomposition failed: {exc}")
    flat = eigvals[-1] <= 1e-6  # no stain variation at all (a black or single-colour tile)
    if not flat and eigvals[-2] <= RANK1_REL_EIGVAL * eigvals[-1]:
        return _fit_one_direction(mean, vecs[:, 2], order_by, od, counts, n_tissue)
    plane = vecs[:, 1:3]
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = weighted_percentile(phi, w, alpha), weighted_percentile(phi, w, 100 - alpha)
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    angle = np.degrees(np.arccos(np.clip(abs(v1 @ v2), 0.0, 1.0)))
    if not np.isfinite(angle):
        return StainFit(None, None, n_px, n_tissue, "non-finite stain estimate")
    note = ""
    if angle < MIN_STAIN_ANGLE_DEG:
        m, why = None, f"one stain only ({angle:.1f}° apart)"
    else:
        # Order by matching the reference H and DAB vectors (not the H&E "larger red OD" rule).
        straight = v1 @ order_by[0] + v2 @ order_by[1]
        crossed = v2 @ order_by[0] + v1 @ order_by[1]
        m = np.stack([v1, v2] if straight >= crossed else [v2, v1])
        sim = m @ order_by.T  # sim[i, j]: fitted stain i vs reference stain j
        why = "vectors do not match reference H and DAB"
        if sim[0, 0] <= sim[0, 1] or sim[1, 1] <= sim[1, 0]:
            m = None  # both vectors look like one reference stain
    if m is None:
        # One stain only, or both vectors look like one reference stain: a slide with little
        # DAB (HER2 0/1+), or pen ink. When a vector is close to the reference hematoxylin, fit
        # hematoxylin only and take the DAB vector from the reference (DAB stays in absolute
        # units anyway); otherwise (pen ink, odd colours) there is no fit.
        h = max((v1, v2), key=lambda v: abs(v @ order_by[0]))
        h = h if h @ order_by[0] > 0 else -h
        h_angle = np.degrees(np.arccos(np.clip(h @ order_by[0], -1.0, 1.0)))
        if flat or not np.isfinite(h_angle) or h_angle > MAX_H_ONLY_ANGLE_DEG:
            return StainFit(None, None, n_px, n_tissue, why)
        m = np.stack([h, order_by[1]])
        note = f"hematoxylin-only fit ({why}): DAB vector taken from the reference"
    return _finish_fit(m, od, counts, n_tissue, note)


def colour_counts(px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct colours of ``px`` (N, 3) uint8, as (U, 3) uint8, and the pixels of each (U,).

    Every per-pixel quantity of a stain fit is a function of the pixel's colour, so statistics
    over the colours weighted by these counts equal those over the pixels, at a fraction of the
    cost: a fit pools millions of pixels, IHC tiles hold tens of thousands of distinct colours.
    """
    code = (px[:, 0].astype(np.int32) << 16) | (px[:, 1].astype(np.int32) << 8) | px[:, 2]
    # a sort, at every size: a 2^24-bin histogram (128 MiB to fill and scan) took 1.7-7x as long
    # as numpy's sort-based unique for 2-17 M pixels (benchmarks/bench_stain.py --colour-counts)
    present, counts = np.unique(code, return_counts=True)
    colours = np.stack([present >> 16, (present >> 8) & 255, present & 255], axis=1)
    return colours.astype(np.uint8), counts.astype(np.int64)


def weighted_percentile(values: np.ndarray, counts: np.ndarray, q: float) -> float:
    """``np.percentile(np.repeat(values, counts), q)`` (its linear method) without the repeat."""
    order = np.argsort(values, kind="stable")
    v, cum = values[order], np.cumsum(counts[order])
    n = int(cum[-1])
    virtual = (q / 100.0) * (n - 1)
    lo = int(np.floor(virtual))
    hi = min(lo + 1, n - 1)
    gamma = virtual - lo
    a = float(v[np.searchsorted(cum, lo, side="right")])
    b = float(v[np.searchsorted(cum, hi, side="right")])
    # numpy's lerp, measured from the nearer end
    return b - (b - a) * (1.0 - gamma) if gamma >= 0.5 else a + (b - a) * gamma


def _finish_fit(
    m: np.ndarray, od: np.ndarray, counts: np.ndarray, n_tissue: int, note: str
) -> StainFit:
    """Concentrations of every colour ``od`` (U, 3) by least squares on the stain matrix ``m``;
    their 99th percentile over the pixels (``counts`` per colour)."""
    conc = np.linalg.pinv(m.T).astype(np.float32) @ od.T  # (2, U) least squares
    max_conc = np.array([weighted_percentile(c, counts, 99) for c in conc], dtype=np.float64)
    n_px = int(counts.sum())
    if not (np.isfinite(m).all() and np.isfinite(max_conc).all()):
        return StainFit(None, None, n_px, n_tissue, "non-finite stain estimate")
    return StainFit(m, max_conc, n_px, n_tissue, note)


def _fit_one_direction(
    mean: np.ndarray,
    direction: np.ndarray,
    order_by: np.ndarray,
    od: np.ndarray,
    counts: np.ndarray,
    n_tissue: int,
) -> StainFit:
    """Fit for tissue OD with one direction of variation (see ``RANK1_REL_EIGVAL``).

    Uses only well-determined quantities (the principal direction and the tissue's mean OD
    ``mean``), so the verdict does not depend on the BLAS kernel. One stain at varying strength
    (a line through the OD origin) close to the reference hematoxylin gets a hematoxylin-only
    fit; flat colours on a line that misses the origin (pen ink, artwork) or a stain that is not
    hematoxylin get none.
    """
    n_px = int(counts.sum())
    d = direction / np.linalg.norm(direction)
    mean = mean / np.linalg.norm(mean)
    line_angle = np.degrees(np.arccos(np.clip(abs(d @ mean), 0.0, 1.0)))
    if not np.isfinite(line_angle) or line_angle > MAX_LINE_TO_ORIGIN_DEG:
        why = (
            f"flat colours, not stains: tissue colours vary along one line {line_angle:.0f}° "
            "away from the optical-density origin (pen ink or artwork)"
        )
        return StainFit(None, None, n_px, n_tissue, why)
    h = d if d @ order_by[0] > 0 else -d
    h_angle = np.degrees(np.arccos(np.clip(h @ order_by[0], -1.0, 1.0)))
    if h_angle > MAX_H_ONLY_ANGLE_DEG:
        why = f"one stain only, {h_angle:.0f}° from the reference hematoxylin"
        return StainFit(None, None, n_px, n_tissue, why)
    m = np.stack([h, order_by[1]])
    note = "hematoxylin-only fit (one stain only): DAB vector taken from the reference"
    return _finish_fit(m, od, counts, n_tissue, note)


def fit_reference(images: Any, name: str = "custom") -> StainReference:
    """A lab's own target from one HWC uint8 image or several (pooled).

    Raises :class:`ConfigError` when the images hold too little tissue or only one stain.
    """
    arrs = _as_images(images)
    fit = estimate_stains(_pool_pixels(arrs, MAX_FIT_PX), RUIFROK_H_DAB)
    if fit.stain_matrix is None or fit.max_conc is None or (fit.max_conc <= 0).any():
        raise ConfigError(f"fit_reference: cannot estimate H and DAB ({fit.reason or 'max ≤ 0'})")
    return StainReference(fit.stain_matrix, fit.max_conc, name)


class StainNormalizer:
    """Macenko normaliser for H + DAB IHC.

    ``mode="preserve_dab"`` (default): the slide's H and DAB vectors are mapped onto the reference
    vectors, hematoxylin is rescaled to the reference maximum, DAB concentration is kept (absolute
    OD). ``mode="standard"``: classic Macenko, both stains rescaled (as torchstain).

    After ``fit``, :attr:`passthrough` is True when the images had too little tissue or one stain
    only; ``transform`` then returns its input unchanged. An unfitted normaliser raises.
    """

    def __init__(
        self,
        mode: Mode = "preserve_dab",
        reference: StainReference | dict | str | Path | None = None,
        io: float = 240.0,
        alpha: float = 1.0,
        beta: float = 0.15,
        min_tissue_px: int = MIN_TISSUE_PX,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"stain mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.mode: Mode = mode
        self.reference = load_reference(reference)
        self.io, self.alpha, self.beta = float(io), float(alpha), float(beta)
        self.min_tissue_px = int(min_tissue_px)
        self._matrix: np.ndarray | None = None
        self._max_conc: np.ndarray | None = None
        self.passthrough = False
        self.reason = ""
        self.n_tissue_px = 0
        self._fitted = False
        self._od_matrix: np.ndarray | None = None

    # ----------------------------------------------------------------- estimation
    def fit(self, images: Any) -> StainNormalizer:
        """Estimate stains from one HWC uint8 image or a sequence/NHWC array pooled together."""
        arrs = _as_images(images)
        fit = estimate_stains(
            _pool_pixels(arrs, MAX_FIT_PX),
            self.reference.stain_matrix,
            self.io,
            self.alpha,
            self.beta,
            self.min_tissue_px,
        )
        self.n_tissue_px = fit.n_tissue_px
        self._set(fit.stain_matrix, fit.max_conc, fit.reason)
        return self

    def _set(self, matrix: np.ndarray | None, max_conc: np.ndarray | None, reason: str) -> None:
        self._fitted = True
        self._matrix, self._max_conc, self.reason = matrix, max_conc, reason
        self.passthrough = matrix is None
        if matrix is not None and max_conc is not None:
            needed = max_conc[:1] if self.mode == "preserve_dab" else max_conc
            if (needed <= 1e-6).any():
                self.passthrough, self.reason = True, f"stain maximum ≤ 0 ({max_conc.tolist()})"
        if self.passthrough:
            log.debug("stain fit: passthrough (%s)", self.reason)
        self._od_matrix = None if self.passthrough else self._build_od_matrix()

    @property
    def stain_matrix(self) -> np.ndarray | None:
        """Fitted unit OD vectors, shape (2, 3), rows hematoxylin and DAB; None if passthrough."""
        self._check_fitted()
        return None if self._matrix is None else self._matrix.copy()

    @property
    def max_conc(self) -> np.ndarray | None:
        """Fitted 99th-percentile concentrations (H, DAB) in OD units; None if passthrough."""
        self._check_fitted()
        return None if self._max_conc is None else self._max_conc.copy()

    def _check_fitted(self) -> None:
        if not self._fitted:
            raise RuntimeError("StainNormalizer: call fit() (or from_dict()) before using it")

    def _build_od_matrix(self) -> np.ndarray:
        assert self._matrix is not None and self._max_conc is not None
        ref = self.reference
        scale = ref.max_conc / self._max_conc
        if self.mode == "preserve_dab":
            scale = np.array([scale[0], 1.0])
        # OD_out = R^T · diag(scale) · pinv(S^T) · OD_in
        return ref.stain_matrix.T @ np.diag(scale) @ np.linalg.pinv(self._matrix.T)

    def od_matrix(self) -> np.ndarray | None:
        """The 3×3 map applied to OD column vectors (float64); None for passthrough."""
        self._check_fitted()
        return None if self._od_matrix is None else self._od_matrix.copy()

    # ---------------------------------------------------------------- application
    def transform(self, x: Any) -> Any:
        """Normalise an HWC / NHWC uint8 numpy array or an NCHW uint8 torch tensor.

        Returns the same type, shape and dtype; passthrough returns an unchanged copy.
        """
        self._check_fitted()
        if type(x).__module__.startswith("torch"):
            from her2scope.stain._torch import transform_nchw

            return transform_nchw(x, self._od_matrix, self.io)
        arr = np.asarray(x)
        if arr.dtype != np.uint8 or arr.ndim not in (3, 4) or arr.shape[-1] != 3:
            raise ValueError(
                f"stain transform: expected HWC or NHWC uint8 RGB, got {arr.dtype} {arr.shape}"
            )
        if self._od_matrix is None:
            return arr.copy()
        return apply_od_matrix(arr, self._od_matrix, self.io)

    # ------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready parameters (the ``stain`` object of a slide sidecar, without counts)."""
        self._check_fitted()
        return {
            "mode": self.mode,
            "passthrough": self.passthrough,
            "reason": self.reason,
            "stain_matrix": None if self._matrix is None else self._matrix.round(8).tolist(),
            "max_conc": None if self._max_conc is None else self._max_conc.round(8).tolist(),
            "n_tissue_px": int(self.n_tissue_px),
            "io": self.io,
            "alpha": self.alpha,
            "beta": self.beta,
            "reference": self.reference.to_dict(),
        }

    @classmethod
    def from_dict(
        cls,
        d: dict[str, Any],
        mode: Mode | None = None,
        reference: StainReference | dict | str | Path | None = None,
    ) -> StainNormalizer:
        """Rebuild from :meth:`to_dict`; ``mode`` / ``reference`` override the stored ones."""
        try:
            ref = reference if reference is not None else d.get("reference")
            norm = cls(
                mode=mode or d["mode"],
                reference=ref,
                io=d.get("io", 240.0),
                alpha=d.get("alpha", 1.0),
                beta=d.get("beta", 0.15),
            )
            matrix = None if d.get("stain_matrix") is None else np.asarray(d["stain_matrix"], float)
            conc = None if d.get("max_conc") is None else np.asarray(d["max_conc"], float)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"stain parameters: malformed ({exc!r}); re-run `stain fit`"
            ) from None
        if matrix is not None and (matrix.shape != (2, 3) or conc is None or conc.shape != (2,)):
            raise ConfigError("stain parameters: stain_matrix must be 2x3 and max_conc 2 numbers")
        norm.n_tissue_px = int(d.get("n_tissue_px", 0))
        norm._set(matrix, conc, str(d.get("reason", "")))
        return norm

    def __repr__(self) -> str:
        state = (
            "unfitted" if not self._fitted else ("passthrough" if self.passthrough else "fitted")
        )
        return f"StainNormalizer(mode={self.mode!r}, {state})"


def apply_od_matrix(arr: np.ndarray, od_matrix: np.ndarray, io: float) -> np.ndarray:
    """``io·exp(-M·OD)`` per pixel, rounded and clipped to uint8 (float32 maths).

    The float32 intermediates live in buffers kept per thread (:func:`_float_buffers`): fresh
    multi-megabyte arrays for every tile cost page faults that took as long as the maths.
    """
    lut = od_lut(io).astype(np.float32)
    od, out_od = _float_buffers(arr.shape)
    np.take(lut, arr, out=od, mode="clip")  # (..., 3) ODs; uint8 indices: clip is exact, unbuffered
    np.matmul(od, od_matrix.T.astype(np.float32), out=out_od)
    np.negative(out_od, out=out_od)
    np.exp(out_od, out=out_od)
    out_od *= np.float32(io)
    np.clip(out_od, 0.0, 255.0, out=out_od)
    return np.rint(out_od, out=out_od).astype(np.uint8)


_BUFFERS = threading.local()
_MAX_BUFFER = 4 << 20  # float32 values per kept buffer (16 MiB: a tile up to ~1,180 px square)


def _float_buffers(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 arrays of ``shape``, views of this thread's buffers (grown as needed up to
    :data:`_MAX_BUFFER` values, never shared between threads; valid until this thread's next
    call); fresh arrays above that size, so a large batch does not stay in memory."""
    n = int(np.prod(shape))
    if n > _MAX_BUFFER:
        return np.empty(shape, np.float32), np.empty(shape, np.float32)
    bufs = getattr(_BUFFERS, "bufs", None)
    if bufs is None or bufs[0].size < n:
        bufs = _BUFFERS.bufs = (np.empty(n, np.float32), np.empty(n, np.float32))
    return bufs[0][:n].reshape(shape), bufs[1][:n].reshape(shape)


def stain_channels(norm: StainNormalizer, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """H and DAB concentration maps (OD units, float32) of ``rgb`` under the fitted vectors."""
    m = norm.stain_matrix if norm.stain_matrix is not None else norm.reference.stain_matrix
    od = od_lut(norm.io)[rgb].reshape(-1, 3)
    conc = od @ np.linalg.pinv(m.T).T
    h, w = rgb.shape[:2]
    return conc[:, 0].reshape(h, w).astype(np.float32), conc[:, 1].reshape(h, w).astype(np.float32)
