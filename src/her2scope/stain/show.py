"""A figure of raw vs normalised tiles with their H and DAB channels (``her2scope stain show``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from her2scope._io import atomic_path
from her2scope.errors import ConfigError
from her2scope.stain.config import StainConfig
from her2scope.stain.macenko import stain_channels
from her2scope.stain.slides import _read_table, load_normalizers


def show_slide(
    tiles_dir: str | Path,
    slide_id: str,
    cfg: StainConfig,
    out: str | Path | None = None,
    n: int = 4,
) -> Path:
    """Write the PNG for ``n`` tiles of ``slide_id`` (evenly spaced rows of the tile table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from her2scope.slide.reader import open_slide

    tiles_dir = Path(tiles_dir)
    if cfg.mode == "none":
        raise ConfigError("stain show needs stain.mode preserve_dab or standard, not none")
    df = _read_table(tiles_dir)
    rows = df[df["slide_id"].astype(str) == slide_id]
    if rows.empty:
        known = ", ".join(sorted(df["slide_id"].astype(str).unique())[:5])
        raise ConfigError(
            f"slide '{slide_id}' is not in '{tiles_dir / 'tiles.parquet'}' (e.g. {known})"
        )
    norm = load_normalizers(tiles_dir, cfg)[slide_id]
    pick = rows.iloc[np.linspace(0, len(rows) - 1, min(n, len(rows))).round().astype(int)]
    out = Path(out) if out is not None else tiles_dir / f"stain_{slide_id}.png"
    k = len(pick)
    fig, axes = plt.subplots(4, k, figsize=(2.2 * k, 9), squeeze=False)
    with open_slide(pick.iloc[0]["slide_path"]) as slide:
        for j, r in enumerate(pick.itertuples()):
            rgb = slide.read_tile(
                (int(r.x), int(r.y)), int(r.level), int(r.read_px), int(r.tile_px)
            )
            h, dab = stain_channels(norm, rgb)
            panels = [
                (rgb, {}, "raw"),
                (norm.transform(rgb), {}, "normalised"),
                (h, {"cmap": "Blues", "vmin": 0, "vmax": 2}, "H (OD)"),
                (dab, {"cmap": "Oranges", "vmin": 0, "vmax": 2}, "DAB (OD)"),
            ]
            for i, (img, kw, title) in enumerate(panels):
                axes[i, j].imshow(img, **kw)
                axes[i, j].set_axis_off()
                axes[i, j].set_title(f"{title} ({r.x},{r.y})" if i == 0 else title, fontsize=7)
    state = "passthrough: " + norm.reason if norm.passthrough else "slide-fitted"
    fig.suptitle(f"{slide_id} — {cfg.mode} ({state})", fontsize=9)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return out
