"""Small HTML building blocks shared by the report's sections (escaping, tables, figures, numbers)."""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

#: Widest embedded image in pixels; larger PNGs are downscaled before embedding.
MAX_IMG_PX = 1400


def reason(exc: BaseException) -> str:
    """Why a report section is missing, in words (never a raw "KeyError: 'x'")."""
    from her2scope.errors import describe_exception

    return describe_exception(exc)


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def missing(what: str, hint: str) -> str:
    return f'<div class="missing">Not available: {esc(what)}. {esc(hint)}</div>'


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image_data_uri(png: bytes | Path, max_px: int = MAX_IMG_PX, photo: bool = False) -> str:
    """A ``data:`` URI of a PNG file or bytes, downscaled to at most ``max_px`` wide.

    A downscaled ``photo`` (tiles, CAM overlays) is re-encoded as JPEG (quality 88), plots as PNG.
    Bytes that PIL cannot decode are embedded unchanged (the browser test then flags them).
    """
    data = png.read_bytes() if isinstance(png, Path) else png
    mime = "image/png"
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as im:
            if im.width > max_px:
                small = im.convert("RGB").resize(
                    (max_px, max(1, round(im.height * max_px / im.width))), Image.Resampling.LANCZOS
                )
                buf = io.BytesIO()
                if photo:
                    small.save(buf, format="JPEG", quality=88)
                    mime = "image/jpeg"
                else:
                    small.save(buf, format="PNG", compress_level=6)
                data = buf.getvalue()
    except Exception:  # not a decodable image: embed as is, the browser test will catch it
        log.debug("could not inspect %s", png, exc_info=True)
    return f"data:{mime};base64," + base64.b64encode(data).decode("ascii")


def figure(
    png: bytes | Path, caption: str, width_px: int | None = None, photo: bool = False
) -> str:
    style = f' style="max-width:{width_px}px"' if width_px else ""
    max_px = min(MAX_IMG_PX, round(width_px * 1.5)) if width_px else MAX_IMG_PX
    uri = image_data_uri(png, max_px, photo)
    return (
        f'<figure{style}><img src="{uri}" alt="{esc(caption)}">'
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def figures(items: Iterable[str]) -> str:
    return "<div class='figs'>" + "".join(items) + "</div>"


def read_json(path: Path) -> Any:
    """The JSON in ``path``, or None when it is absent or unreadable (the section says so)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def metric_cell(m: Any) -> str:
    """``0.912 [0.85, 0.97]`` from ``{"value": v, "ci": [lo, hi]}`` (or a bare number)."""
    if isinstance(m, dict):
        v = m.get("value")
        ci = m.get("ci")
        if v is None:
            return "—" + (f" ({m['reason']})" if m.get("reason") else "")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
            return f"{fmt(v)} [{fmt(ci[0])}, {fmt(ci[1])}]"
        return fmt(v)
    if isinstance(m, (int, float)):
        return fmt(float(m))
    return "—"


def is_metric(m: Any) -> bool:
    return isinstance(m, dict) and "value" in m and not isinstance(m.get("value"), (dict, list))
