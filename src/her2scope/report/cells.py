"""Report section on cell-level scoring: agreement of the ASCO/CAP cell rules with the CNN and
the labels, the slides to review and a few cell overlays (``OUT/cells/``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from her2scope.config import RunConfig
from her2scope.layout import OutLayout
from her2scope.report._markup import esc, figure, figures, fmt, missing, read_json, table

#: Cell overlays shown at most.
MAX_OVERLAYS = 4


def grade_table_html(grades: dict[str, Any], caption: str) -> str:
    """A confusion table of grades (``cells_agreement.json`` format) with agreement and κ."""
    order = grades["order"]
    rows = [
        [f"{grades['rows']} {g}", *row] for g, row in zip(order, grades["confusion"], strict=True)
    ]
    head = [f"{grades['rows']} \\ {grades['columns']}", *order]
    summary = (
        f"{caption}: {grades['n_slides']} slide(s), agreement {fmt(grades.get('agreement'))}, "
        f"quadratic κ {fmt(grades.get('kappa_quadratic'))}"
    )
    return f"<p>{esc(summary)}</p>" + table(head, rows)


def cells_section(out: OutLayout, cfg: RunConfig) -> str:
    parts = ["<h2 id='cells'>Cells</h2>"]
    agreement = read_json(out.cells_agreement)
    if not cfg.cells.enabled and agreement is None:
        parts.append(
            "<p class='note'>Cell-level scoring by the ASCO/CAP rules is off "
            "(cells.enabled: false); see docs/cells.md.</p>"
        )
        return "".join(parts)
    if agreement is None:
        parts.append(missing("cell-level scoring", "the cells stage writes cells/"))
        return "".join(parts)
    parts.append(
        "<p class='note'>Each test slide's cells scored by the ASCO/CAP membrane rules "
        "(nuclei, membrane DAB OD and completeness; docs/cells.md), beside the CNN's slide call "
        f"of {esc(Path(agreement.get('run', '')).name)}. A slide where the two calls differ is "
        "listed for review. Grades 0 / 1+ / 2+ / 3+ (both kinds of 0 are 0).</p>"
    )
    parts.append(grade_table_html(agreement["cnn_vs_cells"], "CNN vs cell rules"))
    parts.append(grade_table_html(agreement["cells_vs_label"], "Labels vs cell rules"))
    parts.append(grade_table_html(agreement["cnn_vs_label"], "Labels vs CNN"))
    review = agreement.get("review") or []
    parts.append(f"<h3>Slides to review ({len(review)})</h3>")
    if review:
        parts.append(
            table(
                ["slide", "CNN", "cell rules"],
                [[r["slide_id"], r["cnn_score"], r["cell_call"]] for r in review],
            )
        )
    for line in agreement.get("failures") or []:
        parts.append(f"<p class='note'>Cell scoring failed: {esc(line)}</p>")
    overlays = sorted(out.cells_dir.glob("*.cells.png"))[:MAX_OVERLAYS]
    if overlays:
        parts.append(
            figures(
                figure(p, f"cells of {p.name.removesuffix('.cells.png')}", 560, photo=True)
                for p in overlays
            )
        )
    return "".join(parts)
