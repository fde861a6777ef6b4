"""``explain_run``: explanation gallery and stitched slide maps for a trained run;
``explain_scored``: the same slide map for a slide scored by ``her2scope predict``.

Writes under ``<run_dir>/explain/`` (or ``out_dir``): ``gallery.png`` and ``gallery.html`` (the most
confident tiles per class, correct and wrong, each beside its map overlay) and
``slides/<slide_id>_cam.png`` (the stitched map beside the expected-score heatmap). The method is
``input_x_gradient`` (per input pixel, normalised per slide; resolves membranes) or ``gradcam``
(last block, per tile); see docs/explain.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from her2scope._progress import track
from her2scope.errors import ConfigError
from her2scope.layout import GALLERY_HTML, GALLERY_PNG, RunLayout, TilesLayout, slide_map_path

if TYPE_CHECKING:
    import pandas as pd
    from torch import nn

    from her2scope.engine.checkpoint import RunMeta

log = logging.getLogger(__name__)


def tile_cams(
    model: nn.Module,
    meta: RunMeta,
    tiles_df: pd.DataFrame,
    targets: np.ndarray,
    normalizers: Mapping[str, Any] | None = None,
    batch_size: int = 32,
    device: Any = None,
    method: str = "gradcam",
) -> tuple[np.ndarray, np.ndarray]:
    """(tiles uint8 [N, P, P, 3], maps float32 [N, P, P]) at the model's ``input_px`` P.

    Tiles are read and normalised exactly as for prediction; ``targets`` [N] is the class explained
    per tile. ``gradcam`` maps are in [0, 1] per tile; ``input_x_gradient`` maps are normalised
    per slide here (one scale over all rows of the same ``slide_id``).
    """
    import torch

    from her2scope.data.dataset import TileDataset, to_model_input
    from her2scope.engine.predict import resolve_device
    from her2scope.explain.gradcam import explain_maps, normalise_per_slide

    dev = resolve_device(device)
    model.to(dev)
    ds = TileDataset(tiles_df.reset_index(drop=True), meta.input_px, normalizers)
    mean = torch.tensor(meta.mean, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(meta.std, device=dev).view(1, 3, 1, 1)
    p = meta.input_px
    rgbs = np.zeros((len(ds), p, p, 3), np.uint8)
    cams = np.zeros((len(ds), p, p), np.float32)
    starts = range(0, len(ds), batch_size)
    for s in track(starts, "grad-cam", total=len(starts)):
        idx = range(s, min(s + batch_size, len(ds)))
        batch = np.stack([ds.read_rgb(i) for i in idx])
        rgbs[s : s + len(batch)] = batch
        xb = torch.from_numpy(batch).permute(0, 3, 1, 2).to(dev)
        x = to_model_input(xb, mean, std)
        cams[s : s + len(batch)] = explain_maps(
            model, meta.model_name, x, [int(t) for t in targets[s : s + len(batch)]], method,
            white=(1.0 - mean) / std,
        )  # fmt: skip
    if method != "gradcam":
        ids = tiles_df["slide_id"].astype(str).to_numpy()
        for sid in np.unique(ids):
            cams[ids == sid] = normalise_per_slide(cams[ids == sid])
    return rgbs, cams


def _load_tiles(meta: RunMeta, run_dir: Path) -> tuple[pd.DataFrame, Path]:
    from her2scope._io import read_parquet

    cand = [TilesLayout(Path(meta.tiles_dir)), TilesLayout(run_dir / meta.tiles_dir)]
    for d in cand:
        if d.table.is_file():
            return read_parquet(d.table), d.root
    raise ConfigError(
        f"run '{run_dir}': its tiles table '{cand[0].table}' is missing; "
        "re-create it with `her2scope tile` into that folder"
    )


def explain_run(
    run_dir: str | Path,
    slide: str | None = None,
    split: str = "test",
    n: int = 16,
    out_dir: str | Path | None = None,
    device: str | None = None,
    batch_size: int = 32,
    heatmap_max_px: int | None = None,
    method: str = "input_x_gradient",
) -> Path:
    """Explain the run's best model on one slide (``slide``) or on all slides of ``split``.

    ``n`` is the number of tiles per (class, correct/wrong) group in the gallery.
    ``heatmap_max_px`` is the longest side of the slide maps (default: the run's
    ``explain.heatmap_max_px``; the pipeline passes the current config's value). Returns the
    output folder. Raises ``ConfigError`` when the slide or split has no tiles.
    """
    from her2scope.engine.checkpoint import load_run_model
    from her2scope.engine.predict import predict_tiles, resolve_device
    from her2scope.stain import load_normalizers

    run = Path(run_dir)
    dev = resolve_device(device)
    model, meta = load_run_model(run, "best", device=dev)
    tiles, tiles_dir = _load_tiles(meta, run)
    sel, what = _select_tiles(tiles, tiles_dir, run, slide, split)
    out = Path(out_dir) if out_dir is not None else RunLayout(run).explain_dir
    norms = load_normalizers(tiles_dir, meta.config.stain)  # {} when stain.mode is none
    probs = predict_tiles(model, meta, sel, norms, batch_size=batch_size, device=dev)
    _gallery(model, meta, sel, probs, norms, out, what, n, batch_size, dev, method)
    max_px = int(heatmap_max_px or meta.config.explain.heatmap_max_px)
    for sid, part in sel.groupby("slide_id", sort=True):
        _slide_maps(
            model, meta, part, probs[part.index.to_numpy()], norms, out, str(sid), batch_size,
            dev, max_px, method,
        )  # fmt: skip
    log.info("explanations written to %s", out)
    return out


def _select_tiles(
    tiles: pd.DataFrame, tiles_dir: Path, run: Path, slide: str | None, split: str
) -> tuple[pd.DataFrame, str]:
    """The tiles of one slide, or of the run's ``split`` (from its splits.csv), renumbered from 0;
    and words for them (``"slide S1"``, ``"split test"``)."""
    import pandas as pd

    if slide is not None:
        sel = tiles[tiles["slide_id"].astype(str) == slide]
        if sel.empty:
            some = ", ".join(sorted(tiles["slide_id"].astype(str).unique())[:8])
            raise ConfigError(f"slide '{slide}' has no tiles in {tiles_dir} (slides: {some}, …)")
        return sel.reset_index(drop=True), f"slide {slide}"
    splits_csv = RunLayout(run).splits
    if not splits_csv.is_file():
        raise ConfigError(f"run '{run}' has no splits.csv; give --slide ID instead")
    splits = pd.read_csv(splits_csv, dtype=str)
    ids = set(splits.loc[splits["split"] == split, "slide_id"])
    sel = tiles[tiles["slide_id"].astype(str).isin(ids)]
    if sel.empty:
        raise ConfigError(
            f"split '{split}' of run '{run}' has no tiles; splits there: "
            + ", ".join(sorted(splits["split"].unique()))
        )
    return sel.reset_index(drop=True), f"split {split}"


def _gallery(
    model: nn.Module,
    meta: RunMeta,
    sel: pd.DataFrame,
    probs: np.ndarray,
    norms: Mapping[str, Any] | None,
    out: Path,
    what: str,
    n: int,
    batch_size: int,
    device: Any,
    method: str,
) -> None:
    """``gallery.png`` / ``gallery.html``: the ``n`` most confident tiles per (predicted class,
    correct or wrong), each beside its map for the predicted class."""
    from her2scope.explain.gallery import pick_confident, write_gallery
    from her2scope.explain.gradcam import overlay

    classes = list(meta.classes)
    labels = np.array(
        [
            classes.index(str(v)) if str(v) in classes else -1
            for v in sel.get("label", [""] * len(sel))
        ]
    )
    picked = pick_confident(probs, labels, n)
    rows = np.concatenate([picked[k] for k in sorted(picked)]) if picked else np.zeros(0, int)
    rgbs, cams = tile_cams(
        model, meta, sel.iloc[rows], probs[rows].argmax(axis=1), norms, batch_size, device, method
    )
    pos = {int(r): i for i, r in enumerate(rows)}
    slide_ids = sel["slide_id"].astype(str).to_numpy()
    groups = []
    for (k, correct), idx in sorted(picked.items(), key=lambda kv: (kv[0][0], not kv[0][1])):
        items = []
        for r in idx:
            i = pos[int(r)]
            cap = f"{slide_ids[r]} p={probs[r, k]:.2f}"
            if not correct:
                cap += f" (true {classes[labels[r]]})"
            items.append((rgbs[i], overlay(rgbs[i], cams[i]), cap))
        groups.append((f"predicted {classes[k]} — {'correct' if correct else 'wrong'}", items))
    synthetic = " [SYNTHETIC DATA]" if meta.config.synthetic else ""
    write_gallery(
        out / GALLERY_PNG,
        groups,
        f"{meta.model_name}: most confident tiles, {what}{synthetic}",
        html_path=out / GALLERY_HTML,
    )


def explain_scored(
    scored_json: str | Path,
    run_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    device: str | None = None,
    batch_size: int = 32,
    method: str = "input_x_gradient",
) -> Path:
    """The stitched explanation map of a slide scored by ``her2scope predict``.

    ``scored_json`` is predict's ``<slide_id>.her2scope.json``; the slide is tiled, stain-fitted
    and predicted again exactly as predict did (same run, ROI and µm/px from the JSON). ``run_dir``
    defaults to the run recorded in it; ``out_dir`` to the JSON's folder (writes
    ``<slide_id>.her2scope-explain.png``). Raises ``ConfigError`` for a slide that was not scored
    (failed QC) or whose run or slide is gone.
    """
    import json

    from her2scope.engine.checkpoint import load_run_model
    from her2scope.engine.predict import predict_tiles, resolve_device
    from her2scope.stain.slides import fit_slide_normalizer
    from her2scope.tiling import tile_slide

    path = Path(scored_json)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        sid, slide_path = str(doc["slide_id"]), Path(doc["slide_path"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"'{path}' is not a her2scope predict result ({exc}); give <slide_id>.her2scope.json"
        ) from None
    if doc.get("status", "ok") != "ok" or doc.get("score") is None:
        why = "; ".join(doc.get("qc_reasons") or []) or "no score"
        raise ConfigError(
            f"slide '{sid}' ({path}) was not scored ({why}); there is no prediction to explain "
            "(score it with --force to explain it anyway)"
        )
    run = (
        Path(run_dir) if run_dir is not None else Path(doc.get("provenance", {}).get("run_dir", ""))
    )
    if not RunLayout(run).checkpoint_dir.is_dir():
        raise ConfigError(f"run '{run}' of '{path}' not found; pass the run folder")
    dev = resolve_device(device)
    model, meta = load_run_model(run, "best", device=dev)
    roi = doc.get("roi_path")
    mpp = doc.get("mpp_given")  # predict's --mpp, for a slide whose file has none
    tiles, _ = tile_slide(
        slide_path, sid, meta.config.tiling, roi_path=Path(roi) if roi else None, mpp=mpp
    )
    if tiles.empty:
        raise ConfigError(f"slide '{slide_path}' gives no tiles any more; was it changed?")
    fitted, _ = fit_slide_normalizer(meta.config, tiles, mpp)
    norms = {sid: fitted} if meta.config.stain.mode != "none" else None
    probs = predict_tiles(model, meta, tiles, norms, batch_size=batch_size, device=dev)
    out = Path(out_dir) if out_dir is not None else path.parent
    max_px = int(meta.config.explain.heatmap_max_px)
    return _slide_maps(
        model, meta, tiles.reset_index(drop=True), probs, norms, out, sid, batch_size, dev,
        max_px, method, out / f"{sid}.her2scope-explain.png", mpp,
    )  # fmt: skip


def _slide_maps(
    model: nn.Module,
    meta: RunMeta,
    part: pd.DataFrame,
    probs: np.ndarray,
    norms: Mapping[str, Any] | None,
    out: Path,
    sid: str,
    batch_size: int,
    device: Any,
    max_px: int,
    method: str = "gradcam",
    path: Path | None = None,
    mpp: float | None = None,
) -> Path:
    """Stitched map (for the slide's predicted class) beside the expected-score map, one PNG.

    Written to ``path`` (default ``out/slides/<sid>_cam.png``).
    """
    from matplotlib.figure import Figure  # object API: no pyplot state, no backend switch

    from her2scope._io import atomic_path
    from her2scope.explain.stitch import stitch_cams
    from her2scope.scoring.heatmap import tile_value_map
    from her2scope.slide.reader import open_slide

    classes = list(meta.classes)
    target = int(probs.mean(axis=0).argmax())
    _, cams = tile_cams(
        model, meta, part, np.full(len(part), target), norms, batch_size, device, method
    )
    row = part.iloc[0]
    with open_slide(row["slide_path"], mpp=mpp or float(row.get("mpp", 0.5) or 0.5)) as s:
        thumb = s.thumbnail(max_px)
        w0 = s.dimensions[0]
        level_ds = np.asarray(s.level_downsamples, dtype=np.float64)
    ds = w0 / thumb.shape[1]
    xy = part[["x", "y"]].to_numpy(np.float64)
    side = part["read_px"].to_numpy(np.float64) * level_ds[part["level"].to_numpy(int)]
    cam_map = stitch_cams(cams, xy, side, thumb.shape[:2], ds)
    score_map = tile_value_map(xy, side, probs @ np.arange(len(classes)), thumb.shape[:2], ds)
    fig = Figure(figsize=(12, 6 * thumb.shape[0] / thumb.shape[1] + 0.8))
    axes = fig.subplots(1, 2)
    for ax in axes:
        ax.imshow(thumb)
        ax.set_axis_off()
    im0 = axes[0].imshow(np.ma.masked_invalid(cam_map), cmap="jet", vmin=0, vmax=1, alpha=0.5)
    what = "Grad-CAM" if method == "gradcam" else "input × gradient (per-slide scale)"
    axes[0].set_title(f"{what} for class {classes[target]} (stitched)", fontsize=9)
    fig.colorbar(im0, ax=axes[0], fraction=0.04)
    im1 = axes[1].imshow(
        np.ma.masked_invalid(score_map), cmap="RdYlBu_r", vmin=0, vmax=len(classes) - 1, alpha=0.55
    )
    axes[1].set_title("expected score per tile", fontsize=9)
    cb = fig.colorbar(im1, ax=axes[1], fraction=0.04, ticks=list(range(len(classes))))
    cb.ax.set_yticklabels(classes)
    fig.suptitle(f"{sid} ({meta.model_name})" + (" [SYNTHETIC]" if meta.config.synthetic else ""))
    fig.tight_layout()
    path = path if path is not None else slide_map_path(out, sid)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path
