"""Gallery of the most confident tiles per class (correct and wrong): tile beside its CAM overlay."""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from her2scope._io import atomic_path, write_text


def pick_confident(
    probs: np.ndarray, labels: np.ndarray, n: int
) -> dict[tuple[int, bool], np.ndarray]:
    """Row indices of the ``n`` most confident tiles per (predicted class, correct?) group.

    ``labels`` are true class indices (-1 = unknown: such tiles count as neither correct nor
    wrong and are skipped). Within a group rows are ordered by decreasing predicted probability.
    """
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    out: dict[tuple[int, bool], np.ndarray] = {}
    for k in range(probs.shape[1]):
        for correct in (True, False):
            mask = (pred == k) & (labels >= 0) & ((labels == k) == correct)
            rows = np.flatnonzero(mask)
            out[(k, correct)] = rows[np.argsort(-conf[rows], kind="stable")][:n]
    return out


def write_gallery(
    png_path: str | Path,
    groups: Sequence[tuple[str, list[tuple[np.ndarray, np.ndarray, str]]]],
    title: str,
    html_path: str | Path | None = None,
) -> Path:
    """Draw ``groups`` (heading, [(tile RGB, overlay RGB, caption), ...]) as one PNG grid.

    Each non-empty group is one row block; each item shows the tile and its CAM overlay side by
    side. With ``html_path`` an HTML page with the same content (embedded PNG images; empty groups
    marked "(no tiles)") is written as well.
    """
    from matplotlib.figure import Figure  # object API: no pyplot state, no backend switch

    all_groups = list(groups)
    groups = [g for g in all_groups if g[1]] or [("no tiles", [])]
    ncol = max((len(items) for _, items in groups), default=1) * 2
    ncol = max(ncol, 2)
    nrow = len(groups)
    fig = Figure(figsize=(1.6 * ncol, 1.9 * nrow + 0.5))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for r, (heading, items) in enumerate(groups):
        for c in range(ncol):
            axes[r, c].set_axis_off()
        axes[r, 0].set_title(heading, loc="left", fontsize=8, pad=12)
        for j, (tile, over, caption) in enumerate(items):
            axes[r, 2 * j].imshow(tile)
            axes[r, 2 * j + 1].imshow(over)
            axes[r, 2 * j].text(0, -2, caption, fontsize=6, va="bottom")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    if html_path is not None:
        write_text(html_path, _html(all_groups, title))
    return png_path


def _png_data_uri(rgb: np.ndarray) -> str:
    import base64

    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover - cv2 encodes any uint8 RGB
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _html(
    groups: Sequence[tuple[str, list[tuple[np.ndarray, np.ndarray, str]]]], title: str
) -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif} figure{display:inline-block;margin:4px}"
        " img{width:128px;image-rendering:pixelated}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for heading, items in groups:
        parts.append(f"<h2>{html.escape(heading)}</h2><div>")
        if not items:
            parts.append("<p>(no tiles)</p>")
        for tile, over, caption in items:
            parts.append(
                f"<figure><img src='{_png_data_uri(tile)}'><img src='{_png_data_uri(over)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
