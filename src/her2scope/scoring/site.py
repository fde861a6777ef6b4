"""Site calibration: a centre's DAB-scale factor, fitted once, applied in OD space before the model.

Why a DAB scale (docs/generalisation.md): for HER2 the DAB intensity *is* the label. A centre whose
assay is weaker shows the same grade with less DAB optical density, so a model trained elsewhere
calls its 3+ a 2+ and its 2+ a 1+. Stain normalisation cannot fix this (it keeps DAB absolute on
purpose) and an intensity-invariant model cannot separate 2+ from 3+. What such a centre needs is
one number: the factor ``k`` by which its DAB concentrations must be multiplied to look like the
training centres' assay. It is applied to every normalised tile, on the stain-normalisation
reference basis (:func:`her2scope.stain.augment.scale_concentrations`), before the model.

Two ways to fit ``k`` (``her2scope calibrate``):

- **supervised** (default): a few labelled slides of the centre (e.g. 2 per class); ``k`` minimises
  the slide-level negative log-likelihood of their labels under the run's model, over a log grid,
  with a weak prior towards ``k = 1`` (so that one slide cannot push it to the grid's edge).
- **unsupervised** (``--unsupervised``, an explicit option, never the default), two methods, both
  resting on one **assumption: the centre's slides have a similar grade mix to the training
  centres'**; with a skewed mix (e.g. a 3+-rich referral centre) ``k`` is biased. The assumption
  is stored with ``k``.

  - ``grade_mix`` (the default method): ``k`` is where the mean over the centre's slides of the
    model's expected grade (slide probabilities · class index) equals the mean grade of the run's
    training slides, found on the grid and interpolated in log ``k``. It measures in the model's
    own terms what the centre needs, so it needs a model whose expected grade rises with the DAB
    factor (the DAB-order loss trains that); it refuses a model where it does not.
  - ``dab``: ``k`` matches the median over the centre's slides of a slide-level DAB statistic
    (99th percentile of tissue DAB concentration) to the median over the run's training slides.

The result is stored in ``RUN/site_calibration.json`` under the centre's name (atomic write);
``her2scope predict --center NAME`` applies it and records it in each slide's JSON.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from her2scope.errors import ConfigError
from her2scope.layout import SITE_CALIBRATION_JSON, RunLayout, TilesLayout

log = logging.getLogger(__name__)

#: File in the run directory holding every calibrated centre.
SITE_FILE = SITE_CALIBRATION_JSON
#: Log grid of DAB factors searched by the supervised fit (0.2× … 5×).
K_GRID: tuple[float, ...] = tuple(math.exp(math.log(5.0) * i / 16) for i in range(-16, 17))
#: Weight of the Gaussian prior on log k (per calibration slide): 0.5·(log k / PRIOR_SD)².
PRIOR_SD = 1.0
#: Tissue pixels: OD sum above this (glass excluded) for the DAB statistic.
TISSUE_OD = 0.15
#: Quantile of tissue DAB concentration per slide (the unsupervised statistic).
DAB_QUANTILE = 0.99
UNSUPERVISED_ASSUMPTION = (
    "the centre's slides have a grade mix similar to the training centres' (median slide DAB "
    "statistic matched); biased when the mix is skewed"
)
GRADE_MIX_ASSUMPTION = (
    "the centre's slides have a grade mix similar to the training centres' (mean expected grade "
    "matched to the training slides' mean grade); biased when the mix is skewed"
)
#: Unsupervised methods of :func:`calibrate_site`.
UNSUPERVISED_METHODS: tuple[str, ...] = ("grade_mix", "dab")
#: How far (in grades) the mean expected grade may fall between neighbouring grid factors before
#: the grade-mix method calls the model non-monotone in DAB and refuses it.
MONOTONE_TOL = 0.05


def site_file(run_dir: str | Path) -> Path:
    return Path(run_dir) / SITE_FILE


def load_sites(run_dir: str | Path) -> dict[str, Any]:
    """``{centre: record}`` of ``RUN/site_calibration.json`` (empty when absent)."""
    import json

    path = site_file(run_dir)
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ConfigError(
            f"'{path}' is not valid JSON ({exc}); delete it and re-run her2scope calibrate"
        ) from None
    centres = doc.get("centers") if isinstance(doc, dict) else None
    if not isinstance(centres, dict):
        raise ConfigError(f"'{path}' has no 'centers' mapping; re-run her2scope calibrate")
    return centres


def site_record(run_dir: str | Path, center: str) -> dict[str, Any]:
    """The stored calibration of ``center``; ``ConfigError`` naming the fix when there is none."""
    sites = load_sites(run_dir)
    if center not in sites:
        known = ", ".join(sorted(sites)) or "none"
        raise ConfigError(
            f"run '{run_dir}' has no site calibration for centre '{center}' (calibrated: {known}); "
            f"run `her2scope calibrate {run_dir} --manifest SITE.csv --center {center}` first"
        )
    rec = sites[center]
    k = rec.get("dab_scale") if isinstance(rec, dict) else None
    if not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
        raise ConfigError(
            f"'{site_file(run_dir)}': centre '{center}' has no positive 'dab_scale' ({k!r}); "
            "re-run her2scope calibrate"
        )
    return dict(rec)


def save_site(run_dir: str | Path, center: str, record: Mapping[str, Any]) -> Path:
    """Add or replace ``center``'s record in ``RUN/site_calibration.json`` (atomic)."""
    from her2scope._io import write_json

    sites = load_sites(run_dir)
    sites[str(center)] = dict(record)
    path = site_file(run_dir)
    write_json(path, {"centers": dict(sorted(sites.items()))})
    return path


# --- applying a factor -----------------------------------------------------------------------


def site_model(model: Any, meta: Any, dab_scale: float) -> Any:
    """``model`` preceded by the DAB scaling of a site (a module taking the same mean/std-normalised
    input); ``dab_scale == 1`` returns ``model`` itself."""
    if dab_scale == 1.0:
        return model
    import torch
    from torch import nn

    from her2scope.stain.augment import scale_concentrations, stain_basis

    class _SiteScaled(nn.Module):
        mean: torch.Tensor  # buffers, registered below
        std: torch.Tensor
        basis: torch.Tensor
        factors: torch.Tensor

        def __init__(self) -> None:
            super().__init__()
            self.inner = model
            self.register_buffer("mean", torch.tensor(meta.mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(meta.std).view(1, 3, 1, 1))
            self.register_buffer("basis", stain_basis())
            self.register_buffer("factors", torch.tensor([1.0, float(dab_scale), 1.0]))

        def forward(self, x: torch.Tensor) -> Any:
            rgb01 = (x.float() * self.std + self.mean).clamp(0.0, 1.0)
            rgb01 = scale_concentrations(rgb01, self.factors, self.basis)
            return self.inner(((rgb01 - self.mean) / self.std).to(x.dtype))

    return _SiteScaled()


def apply_site(
    model: Any, meta: Any, run_dir: str | Path, center: str | None
) -> tuple[Any, dict[str, Any] | None]:
    """``(model, record)`` for scoring at ``center``: the model with the centre's DAB factor in front
    and the record to write into each slide's JSON; ``(model, None)`` when ``center`` is None."""
    if center is None:
        return model, None
    rec = site_record(run_dir, center)
    out = {"center": center, **rec}
    return site_model(model, meta, float(rec["dab_scale"])), out


# --- fitting -----------------------------------------------------------------------------------


def read_tiles_uint8(tiles_df: Any, input_px: int, normalizers: Mapping[str, Any] | None) -> Any:
    """All tiles of ``tiles_df`` as one uint8 NCHW tensor, normalised as for prediction."""
    import torch

    from her2scope.data.dataset import TileDataset

    ds = TileDataset(tiles_df.reset_index(drop=True), input_px, normalizers)
    return (
        torch.stack([ds[i][0] for i in range(len(ds))])
        if len(ds)
        else torch.zeros(0, 3, input_px, input_px, dtype=torch.uint8)
    )


def tile_probs_at(
    model: Any, meta: Any, x_uint8: Any, dab_scale: float, batch: int = 64
) -> np.ndarray:
    """Softmax probabilities [N, K] of uint8 tiles after a DAB factor (CPU/float32)."""
    import torch

    from her2scope.data.dataset import to_model_input

    net = site_model(model, meta, dab_scale)
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)
    was = model.training
    net.eval()
    out = []
    try:
        with torch.inference_mode():
            for i in range(0, len(x_uint8), batch):
                logits = net(to_model_input(x_uint8[i : i + batch], mean, std))
                out.append(torch.softmax(logits.float(), 1).numpy())
    finally:
        model.train(was)
    return np.concatenate(out) if out else np.zeros((0, len(meta.classes)), np.float32)


def fit_dab_scale(
    tile_probs_for: Any,
    slide_index: np.ndarray,
    slide_labels: np.ndarray,
    rule: str = "mean",
    percent_threshold: float = 10.0,
    grid: Sequence[float] = K_GRID,
) -> tuple[float, list[dict[str, float]]]:
    """Supervised DAB factor: argmin over ``grid`` of the slides' mean NLL + prior.

    ``tile_probs_for(k) -> [N, K]`` gives tile probabilities at factor ``k``; ``slide_index`` (N)
    maps tiles to slides ``0..S-1`` whose labels are ``slide_labels`` (S, class indices). Slides
    are aggregated with the run's ``rule``. Returns ``k`` and the whole curve
    (``k, nll, accuracy`` per grid point).
    """
    from her2scope.evaluate.aggregate import aggregate_probs

    n_slides = len(slide_labels)
    if n_slides == 0:
        raise ConfigError("calibration needs at least one labelled slide of the centre")
    curve: list[dict[str, float]] = []
    for k in grid:
        probs = tile_probs_for(k)
        nll, correct = 0.0, 0
        for s in range(n_slides):
            p, call = aggregate_probs(probs[slide_index == s], rule, percent_threshold)  # type: ignore[arg-type]
            nll -= math.log(max(float(p[slide_labels[s]]), 1e-6))
            correct += int(call == slide_labels[s])
        prior = 0.5 * (math.log(k) / PRIOR_SD) ** 2
        curve.append(
            {
                "k": round(k, 6),
                "nll": nll / n_slides,
                "objective": nll / n_slides + prior / n_slides,
                "accuracy": correct / n_slides,
            }
        )
    best = min(range(len(curve)), key=lambda i: (curve[i]["objective"], abs(math.log(grid[i]))))
    return float(grid[best]), curve


def slide_dab_statistic(x_uint8: Any) -> float:
    """The :data:`DAB_QUANTILE` quantile of DAB concentration over tissue pixels of a slide's
    normalised tiles (reference basis); 0 when no tissue."""
    import torch

    from her2scope.stain.augment import stain_basis

    od = -torch.log((x_uint8.float() + 1.0) / 256.0)
    conc = torch.einsum("ij,njhw->nihw", torch.linalg.inv(stain_basis()).T, od)
    tissue = od.sum(1) > TISSUE_OD
    dab = conc[:, 1][tissue]
    if dab.numel() == 0:
        return 0.0
    return float(torch.quantile(dab[:: max(1, dab.numel() // 200_000)], DAB_QUANTILE))


def unsupervised_dab_scale(site_stats: Sequence[float], train_stats: Sequence[float]) -> float:
    """``median(train) / median(site)`` of the slide DAB statistic (see the module doc for the
    assumption); ``ConfigError`` when either side has no stained slide."""
    s = np.median(np.asarray(site_stats, np.float64)) if len(site_stats) else 0.0
    t = np.median(np.asarray(train_stats, np.float64)) if len(train_stats) else 0.0
    if not (s > 0 and t > 0):
        raise ConfigError(
            f"unsupervised site calibration: no DAB measured (centre median {s:.3g}, training "
            f"median {t:.3g}); use labelled calibration slides instead"
        )
    return float(t / s)


def mean_expected_grade(
    probs: np.ndarray, slide_index: np.ndarray, n_slides: int, rule: str, percent_threshold: float
) -> float:
    """Mean over slides ``0..n_slides-1`` of the expected class index of their aggregated
    probabilities (``rule`` as in evaluation)."""
    from her2scope.evaluate.aggregate import aggregate_probs

    grades = np.arange(probs.shape[1], dtype=np.float64)
    vals = []
    for s in range(n_slides):
        p, _ = aggregate_probs(probs[slide_index == s], rule, percent_threshold)  # type: ignore[arg-type]
        vals.append(float(np.dot(np.asarray(p, np.float64), grades)))
    return float(np.mean(vals))


def fit_grade_mix_scale(
    tile_probs_for: Any,
    slide_index: np.ndarray,
    n_slides: int,
    target: float,
    rule: str = "mean",
    percent_threshold: float = 10.0,
    grid: Sequence[float] = K_GRID,
) -> tuple[float, list[dict[str, float]]]:
    """Unsupervised DAB factor by grade mix: ``k`` where the slides' mean expected grade equals
    ``target`` (the training slides' mean grade), interpolated in log ``k`` between grid points.

    ``ConfigError`` when the mean expected grade falls by more than :data:`MONOTONE_TOL` between
    neighbouring grid factors (the model does not rank DAB, so matching means nothing) or when no
    factor of the grid reaches ``target`` (the centre's mix or assay is outside the grid's reach).
    Returns ``k`` and the curve (``k, mean_grade`` per grid point).
    """
    if n_slides == 0:
        raise ConfigError("unsupervised calibration needs at least one slide of the centre")
    grid = sorted(grid)
    curve = [
        {
            "k": round(k, 6),
            "mean_grade": mean_expected_grade(
                tile_probs_for(k), slide_index, n_slides, rule, percent_threshold
            ),
        }
        for k in grid
    ]
    e = np.array([c["mean_grade"] for c in curve])
    drops = e[:-1] - e[1:]
    if drops.size and drops.max() > MONOTONE_TOL:
        i = int(np.argmax(drops))
        raise ConfigError(
            f"grade-mix calibration: the model's mean expected grade at this centre falls from "
            f"{e[i]:.2f} to {e[i + 1]:.2f} as the DAB factor rises from {grid[i]:.2f} to "
            f"{grid[i + 1]:.2f}, so it does not rank DAB and matching its grade mix means nothing; "
            "use labelled calibration slides, a run trained with train.dab_order_weight > 0, or "
            "--unsupervised-method dab"
        )
    if not e[0] <= target <= e.max():
        raise ConfigError(
            f"grade-mix calibration: no DAB factor in {grid[0]:.2f}-{grid[-1]:.2f} gives this "
            f"centre the training slides' mean grade {target:.2f} (it ranges {e[0]:.2f}-"
            f"{e.max():.2f}); the centre's grade mix is far from the training mix: use labelled "
            "calibration slides"
        )
    up = np.maximum.accumulate(e)  # dips within MONOTONE_TOL flattened: a sorted curve
    j = int(np.searchsorted(up, target, side="left"))  # first grid point at or above the target
    if j == 0 or up[j] == target or up[j] == up[j - 1]:
        return float(grid[j]), curve
    t = (target - up[j - 1]) / (up[j] - up[j - 1])
    k = math.exp(math.log(grid[j - 1]) + t * (math.log(grid[j]) - math.log(grid[j - 1])))
    return float(k), curve


def training_mean_grade(run_dir: str | Path, classes: Sequence[str]) -> float:
    """Mean class index of the run's training slides (``splits.csv``)."""
    from her2scope.cohort import read_splits

    splits = read_splits(RunLayout(Path(run_dir)).splits)
    labels = splits.loc[splits["split"] == "train", "label"].astype(str)
    known = [classes.index(v) for v in labels if v in classes]
    if not known:
        raise ConfigError(
            f"unsupervised calibration: the run '{run_dir}' lists no labelled training slide in "
            "its splits.csv; use labelled calibration slides instead"
        )
    return float(np.mean(known))


# --- the calibrate command -----------------------------------------------------------------------


def _site_tiles(run_cfg: Any, slides: Any, workers: int) -> tuple[Any, dict[str, Any]]:
    """Tile each manifest row as prediction does and fit its stain normaliser on its own tiles."""
    import pandas as pd

    from her2scope.cohort.manifest import mpp_of
    from her2scope.stain.slides import fit_slide_normalizer as _fit_normalizer
    from her2scope.tiling import tile_slide

    parts, norms = [], {}
    for row in slides.itertuples(index=False):
        roi = getattr(row, "roi_path", "") or None
        mpp = mpp_of(getattr(row, "mpp", None))
        tiles, _ = tile_slide(
            row.slide_path, row.slide_id, run_cfg.tiling, roi_path=roi, mpp=mpp, workers=workers
        )
        if len(tiles) == 0:
            raise ConfigError(
                f"calibration slide '{row.slide_id}' ({row.slide_path}): no tiles kept; check its ROI"
            )
        fitted, _ = _fit_normalizer(run_cfg, tiles, mpp)
        if run_cfg.stain.mode != "none":
            norms[row.slide_id] = fitted
        parts.append(tiles.assign(slide_id=row.slide_id))
    return pd.concat(parts, ignore_index=True), norms


def _training_dab_stats(meta: Any, run_dir: Path, per_slide: int = 8) -> list[float]:
    """Slide DAB statistic of the run's training slides (``per_slide`` tiles each, seeded)."""
    import pandas as pd

    from her2scope.cohort import read_splits

    tiles_dir = Path(meta.tiles_dir)
    table = TilesLayout(tiles_dir).table
    if not table.is_file():
        raise ConfigError(
            f"unsupervised calibration reads the run's training tiles, but '{table}' is gone; "
            "use labelled calibration slides instead"
        )
    splits = read_splits(RunLayout(run_dir).splits)
    train_ids = set(splits.loc[splits["split"] == "train", "slide_id"])
    tiles = pd.read_parquet(table)
    tiles = tiles[tiles["slide_id"].isin(train_ids)]
    tiles = tiles.sample(frac=1.0, random_state=0).groupby("slide_id").head(per_slide)
    norms: dict[str, Any] = {}
    if meta.config.stain.mode != "none":
        from her2scope.stain import load_normalizers

        norms = dict(load_normalizers(tiles_dir, meta.config.stain))
    out = []
    for _, g in tiles.groupby("slide_id"):
        out.append(slide_dab_statistic(read_tiles_uint8(g, meta.input_px, norms)))
    return out


def calibrate_site(
    run_dir: str | Path,
    manifest: str | Path,
    center: str,
    unsupervised: bool = False,
    workers: int = 1,
    unsupervised_method: str = "grade_mix",
) -> dict[str, Any]:
    """Fit centre ``center``'s DAB factor from the manifest's slides of that centre and store it in
    ``RUN/site_calibration.json``; returns the stored record (see the module doc)."""
    from datetime import datetime, timezone

    from her2scope.cohort import load_manifest
    from her2scope.engine.checkpoint import load_run_model
    from her2scope.labels import get_scheme

    if unsupervised_method not in UNSUPERVISED_METHODS:
        raise ConfigError(
            f"unsupervised method {unsupervised_method!r}: choose one of "
            + ", ".join(UNSUPERVISED_METHODS)
        )
    run_dir = Path(run_dir)
    model, meta = load_run_model(run_dir, "best", device="cpu")
    cfg = meta.config
    man = load_manifest(manifest, scheme=cfg.cohort.label_scheme)
    rows = man[man["center"].astype(str) == str(center)]
    if rows.empty:
        centres = ", ".join(sorted(man["center"].astype(str).unique()))
        raise ConfigError(
            f"manifest '{manifest}' has no slide of centre '{center}' (centres: {centres}); "
            "give --center one of them"
        )
    tiles, norms = _site_tiles(cfg, rows, workers)
    x = read_tiles_uint8(tiles, meta.input_px, norms)
    ids = list(rows["slide_id"])
    slide_index = tiles["slide_id"].map({s: i for i, s in enumerate(ids)}).to_numpy()
    record: dict[str, Any] = {
        "n_slides": len(ids),
        "slides": ids,
        "manifest": str(Path(manifest).resolve()),
        "fitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "applied_as": "DAB concentration × dab_scale on the stain-normalisation reference basis, "
        "after stain normalisation, before the model",
    }
    if unsupervised and unsupervised_method == "grade_mix":
        scheme = get_scheme(cfg.cohort.label_scheme)
        target = training_mean_grade(run_dir, list(scheme.classes))
        k, curve = fit_grade_mix_scale(
            lambda f: tile_probs_at(model, meta, x, f),
            slide_index,
            len(ids),
            target,
            cfg.evaluate.aggregate,
            cfg.evaluate.percent_threshold,
        )
        at1 = min(curve, key=lambda c: abs(c["k"] - 1.0))
        record.update(
            method="unsupervised_grade_mix",
            assumption=GRADE_MIX_ASSUMPTION,
            train_mean_grade=target,
            site_mean_grade_at_1=at1["mean_grade"],
        )
    elif unsupervised:
        site_stats = [slide_dab_statistic(x[slide_index == i]) for i in range(len(ids))]
        train_stats = _training_dab_stats(meta, run_dir)
        k = unsupervised_dab_scale(site_stats, train_stats)
        record.update(
            method="unsupervised_dab_quantile",
            assumption=UNSUPERVISED_ASSUMPTION,
            site_median=float(np.median(site_stats)),
            train_median=float(np.median(train_stats)),
        )
    else:
        scheme = get_scheme(cfg.cohort.label_scheme)
        labels = np.array([scheme.classes.index(str(v)) for v in rows["label"]])
        counts = {c: int((labels == i).sum()) for i, c in enumerate(scheme.classes)}
        k, curve = fit_dab_scale(
            lambda f: tile_probs_at(model, meta, x, f),
            slide_index,
            labels,
            cfg.evaluate.aggregate,
            cfg.evaluate.percent_threshold,
        )
        at1 = min(curve, key=lambda c: abs(c["k"] - 1.0))
        best = min(curve, key=lambda c: abs(c["k"] - k))
        record.update(
            method="supervised_nll",
            slides_per_class=counts,
            nll_at_1=at1["nll"],
            nll=best["nll"],
            accuracy_at_1=at1["accuracy"],
            accuracy=best["accuracy"],
        )
    record["dab_scale"] = round(float(k), 6)
    save_site(run_dir, center, record)
    log.info("site calibration of centre %s: DAB × %.3f (%s)", center, k, record["method"])
    return record
