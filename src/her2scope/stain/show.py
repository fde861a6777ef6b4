"""The raw-vs-normalised tile figure: built here only, for ``her2scope stain show`` (one slide, with
its H and DAB channels) and for the report (a few tiles per centre).

Drawn with matplotlib's object API (no pyplot, no backend switch), so it is safe in any process.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from her2scope._io import atomic_path
from her2scope.errors import ConfigError
from her2scope.stain.config import StainConfig
from her2scope.stain.macenko import StainNormalizer, stain_channels
from her2scope.stain.slides import _read_table, load_normalizers

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

#: Tiles per centre in the report's figure.
PER_CENTRE = 4


def read_tiles_rgb(rows: pd.DataFrame) -> list[np.ndarray]:
    """RGB uint8 pixels of tile-table rows (each slide opened once), in row order."""
    from her2scope.slide.reader import open_slide

    out: list[np.ndarray | None] = [None] * len(rows)
    for path, part in rows.reset_index(drop=True).groupby("slide_path", sort=False):
        with open_slide(str(path)) as slide:
            for i, r in zip(part.index, part.itertuples(index=False), strict=True):
                rgb = slide.read_tile(
                    (int(r.x), int(r.y)), int(r.level), int(r.read_px), int(r.tile_px)
                )
                out[i] = np.asarray(rgb)[..., :3]
    return [o for o in out if o is not None]


def raw_vs_normalised_figure(
    groups: Sequence[tuple[str, pd.DataFrame]],
    normalizers: Mapping[str, StainNormalizer],
    mode: str,
    channels: bool = False,
    panel_in: float = 1.6,
) -> Figure:
    """One block of rows per group (a slide or a centre): the raw tiles above the same tiles
    normalised (``normalizers[slide_id]``; a slide without one is shown unchanged), and with
    ``channels`` their H and DAB optical densities (0–2 OD) under them. One column per tile."""
    from matplotlib.figure import Figure

    kinds = ["raw", mode] + (["H (OD)", "DAB (OD)"] if channels else [])
    ncol = max([len(rows) for _, rows in groups] + [1])
    nrow = len(kinds) * max(len(groups), 1)
    fig = Figure(figsize=(panel_in * ncol + 0.4, (panel_in + 0.25) * nrow), dpi=100)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for g, (name, rows) in enumerate(groups):
        top = g * len(kinds)
        for j, (rgb, r) in enumerate(
            zip(read_tiles_rgb(rows), rows.itertuples(index=False), strict=True)
        ):
            norm = normalizers.get(str(r.slide_id))
            panels: list[tuple[Any, dict[str, Any]]] = [
                (rgb, {}),
                (norm.transform(rgb) if norm is not None else rgb, {}),
            ]
            if channels and norm is not None:
                h, dab = stain_channels(norm, rgb)
                panels += [(h, {"cmap": "Blues", "vmin": 0, "vmax": 2})]
                panels += [(dab, {"cmap": "Oranges", "vmin": 0, "vmax": 2})]
            for i, (img, kw) in enumerate(panels):
                ax = axes[top + i, j]
                ax.imshow(np.asarray(img), **kw)
                title = f"{name} {kinds[i]}" if j == 0 else kinds[i]
                ax.set_title(f"{title} ({r.x},{r.y})" if i == 0 and channels else title, fontsize=7)
    fig.tight_layout()
    return fig


def centre_figure_png(
    tiles_dir: str | Path, cfg: StainConfig, per_centre: int = PER_CENTRE
) -> bytes | None:
    """PNG bytes of the report's figure: ``per_centre`` tiles of each centre (drawn with seed 0),
    raw above normalised with the fitted normalisers; None when there is no tile table or no
    ``center`` column."""
    tiles_dir = Path(tiles_dir)
    from her2scope.layout import TilesLayout

    if not TilesLayout(tiles_dir).table.is_file():
        return None
    tiles = _read_table(tiles_dir)
    if tiles.empty or "center" not in tiles:
        return None
    rng = np.random.default_rng(0)
    groups = []
    for center, g in tiles.groupby("center", sort=True):
        pick = rng.choice(len(g), size=min(per_centre, len(g)), replace=False)
        groups.append((str(center), g.iloc[pick]))
    fig = raw_vs_normalised_figure(groups, load_normalizers(tiles_dir, cfg), cfg.mode)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def show_slide(
    tiles_dir: str | Path,
    slide_id: str,
    cfg: StainConfig,
    out: str | Path | None = None,
    n: int = 4,
) -> Path:
    """Write the PNG for ``n`` tiles of ``slide_id`` (evenly spaced rows of the tile table)."""
    from her2scope.layout import TilesLayout

    tiles_dir = Path(tiles_dir)
    if cfg.mode == "none":
        raise ConfigError("stain show needs stain.mode preserve_dab or standard, not none")
    df = _read_table(tiles_dir)
    rows = df[df["slide_id"].astype(str) == slide_id]
    if rows.empty:
        known = ", ".join(sorted(df["slide_id"].astype(str).unique())[:5])
        raise ConfigError(
            f"slide '{slide_id}' is not in '{TilesLayout(tiles_dir).table}' (e.g. {known})"
        )
    norm = load_normalizers(tiles_dir, cfg)[slide_id]
    pick = rows.iloc[np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int)]
    out = Path(out) if out is not None else tiles_dir / f"stain_{slide_id}.png"
    fig = raw_vs_normalised_figure(
        [(slide_id, pick)], {slide_id: norm}, cfg.mode, channels=True, panel_in=2.2
    )
    state = "passthrough: " + norm.reason if norm.passthrough else "slide-fitted"
    fig.suptitle(f"{slide_id} — {cfg.mode} ({state})", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    return out
