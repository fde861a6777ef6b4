"""The study report: one self-contained HTML file (inline CSS, images as base64) that opens offline.

``write_report(out_dir, cfg)`` renders what :class:`her2scope.layout.OutLayout` points at under
``out_dir``, in six sections, each its own module: cohort and preprocessing
(``report.cohort``), results (``report.results``), explanations with the reflex-FISH list
(``report.explain``), cells (``report.cells``) and provenance (``report.provenance``). Every
section tolerates missing inputs: it says what is missing and which stage produces it, and never
raises because an optional artefact is absent. The report has no scripts and no external
references. Nothing here imports the pipeline (the pipeline calls the report).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from her2scope._io import write_text
from her2scope.config import RunConfig
from her2scope.layout import OutLayout
from her2scope.report._markup import esc, missing, reason
from her2scope.report.cells import cells_section
from her2scope.report.cohort import cohort_section, preprocessing_section
from her2scope.report.explain import explain_section
from her2scope.report.provenance import provenance_section
from her2scope.report.results import results_section

log = logging.getLogger(__name__)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d232a;
background:#f6f7f9;line-height:1.45}
main{max-width:1200px;margin:0 auto;padding:1rem 2rem 4rem}
h1{margin:.4rem 0}h2{border-bottom:2px solid #d0d5dc;padding-bottom:.2rem;margin-top:2.2rem}
h3{margin-bottom:.3rem}
.banner{background:#b3261e;color:#fff;padding:.8rem 2rem;font-weight:600;font-size:1.05rem}
.note{color:#5b6470;font-size:.92rem}
.missing{background:#fff4e5;border-left:4px solid #e8a33d;padding:.5rem .8rem;margin:.6rem 0}
.ok{color:#1e7d32;font-weight:600}.bad{color:#b3261e;font-weight:600}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem;background:#fff}
th,td{border:1px solid #d0d5dc;padding:.25rem .55rem;text-align:right}
th{background:#eef1f5}td:first-child,th:first-child{text-align:left}
.figs{display:flex;flex-wrap:wrap;gap:1rem}
figure{margin:0;background:#fff;padding:.5rem;border:1px solid #d0d5dc}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:.85rem;color:#5b6470;margin-top:.3rem}
pre{background:#fff;border:1px solid #d0d5dc;padding:.6rem;overflow:auto;font-size:.8rem}
nav a{margin-right:1rem}
"""

SYNTHETIC_TEXT = (
    "SYNTHETIC DATA — every number and image in this report comes from the generated demo "
    "cohort (her2scope synth). It shows that the pipeline works; it is not evidence of "
    "clinical performance."
)

Section = Callable[[OutLayout, RunConfig], str]

#: (anchor, renderer) in page order.
SECTIONS: tuple[tuple[str, Section], ...] = (
    ("cohort", cohort_section),
    ("preprocessing", preprocessing_section),
    ("results", results_section),
    ("explanations", explain_section),
    ("cells", cells_section),
    ("provenance", provenance_section),
)


def render_report(out_dir: str | Path, cfg: RunConfig) -> str:
    """The report's HTML text for the pipeline outputs under ``out_dir``."""
    out = OutLayout(Path(out_dir))
    sections = []
    for anchor, render in SECTIONS:
        try:
            sections.append(render(out, cfg))
        except Exception as exc:  # one broken artefact must not cost the whole report
            log.warning("report section %s failed: %s", anchor, exc, exc_info=True)
            sections.append(missing(f"section {anchor} ({reason(exc)})", "see the log"))
    banner = (
        f"<div class='banner' role='alert'>{esc(SYNTHETIC_TEXT)}</div>" if cfg.synthetic else ""
    )
    models = ", ".join(cfg.train.models)
    nav = "".join(f"<a href='#{a}'>{a.capitalize()}</a>" for a, _ in SECTIONS)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>her2scope report — {esc(models)}</title><style>{_CSS}</style></head><body>"
        f"{banner}<main><h1>her2scope study report</h1>"
        f"<p class='note'>Output folder: {esc(out.root)} · models: {esc(models)} · "
        "her2scope is a research tool, not a medical device.</p>"
        f"<nav>{nav}</nav>{''.join(sections)}</main></body></html>\n"
    )


def write_report(out_dir: str | Path, cfg: RunConfig, path: str | Path | None = None) -> Path:
    """Write ``report.html`` (default ``OutLayout(out_dir).report``) atomically; return its path."""
    path = Path(path) if path is not None else OutLayout(Path(out_dir)).report
    write_text(path, render_report(out_dir, cfg))
    return path
