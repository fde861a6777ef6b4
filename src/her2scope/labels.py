"""HER2 classes and label schemes.

A label scheme names the classes a model predicts, in order, and maps raw manifest labels ("2+",
"HER2 2+", "2", "score 2") onto them. Schemes:

- ``study`` (default): ``1+ / 2+ / 3+``, as in the dual-centre study.
- ``full``: ``0 / 1+ / 2+ / 3+``.
- ``her2low``: ``0 | low (1+, 2+) | positive (3+)``.
- ``asco2023``: ``0-null / 0-ultralow / 1+ / 2+ / 3+`` (HER2 0 labels must name their kind).

The order of ``classes`` is the ordinal order (used by weighted kappa and adjacent-error counts).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from her2scope.errors import ConfigError

#: Canonical HER2 IHC scores, in ordinal order.
HER2_SCORES: tuple[str, ...] = ("0", "1+", "2+", "3+")

_SCORE_RE = re.compile(r"^\s*(?:her[\s-]*2|her2/neu|score|ihc)?[\s:=-]*([0-3])\s*(\+*)\s*$", re.I)


def parse_score(raw: object) -> str | None:
    """Return the canonical score ("0", "1+", "2+", "3+") for a raw label, or None if unreadable.

    Accepts "2+", "2", "HER2 2+", "her2-2+", "score 2", " 3+ " and integers 0-3. "0+" reads as "0".
    """
    if raw is None:
        return None
    if isinstance(raw, bool):
        return None
    if isinstance(raw, (int, float)):
        if raw != raw or int(raw) != raw or not 0 <= int(raw) <= 3:  # NaN or non-integer
            return None
        raw = str(int(raw))
    m = _SCORE_RE.match(str(raw))
    if not m:
        return None
    digit, plus = m.group(1), m.group(2)
    if len(plus) > 1:
        return None
    return "0" if digit == "0" else f"{digit}+"


@dataclass(frozen=True)
class LabelScheme:
    """An ordered set of classes and the HER2 scores that fall in each."""

    name: str
    classes: tuple[str, ...]
    members: dict[str, tuple[str, ...]] = field(hash=False)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_of(self, raw: object) -> str | None:
        """Class name for a raw label, or None when the label is unreadable or not in this scheme."""
        if isinstance(raw, str) and raw.strip() in self.classes:
            return raw.strip()
        score = parse_score(raw)
        if score is None:
            return None
        for cls, scores in self.members.items():
            if score in scores:
                return cls
        return None

    def index_of(self, raw: object) -> int | None:
        cls = self.class_of(raw)
        return None if cls is None else self.classes.index(cls)

    def describe(self) -> str:
        return ", ".join(f"{c} ({'/'.join(self.members[c])})" for c in self.classes)


SCHEMES: dict[str, LabelScheme] = {
    "study": LabelScheme(
        "study", ("1+", "2+", "3+"), {"1+": ("1+",), "2+": ("2+",), "3+": ("3+",)}
    ),
    "full": LabelScheme(
        "full",
        ("0", "1+", "2+", "3+"),
        {"0": ("0",), "1+": ("1+",), "2+": ("2+",), "3+": ("3+",)},
    ),
    "her2low": LabelScheme(
        "her2low",
        ("0", "low", "positive"),
        {"0": ("0",), "low": ("1+", "2+"), "positive": ("3+",)},
    ),
    # ASCO/CAP 2023: HER2 0 split into null and ultralow. A plain "0" label is not enough here
    # (it does not say which kind): labels must read "0-null" or "0-ultralow" (exact names).
    "asco2023": LabelScheme(
        "asco2023",
        ("0-null", "0-ultralow", "1+", "2+", "3+"),
        {"0-null": (), "0-ultralow": (), "1+": ("1+",), "2+": ("2+",), "3+": ("3+",)},
    ),
}


def get_scheme(name: str) -> LabelScheme:
    """Look up a label scheme by name (``study``, ``full``, ``her2low``)."""
    try:
        return SCHEMES[name]
    except KeyError:
        raise ConfigError(
            f"unknown label scheme '{name}'; choose one of: {', '.join(SCHEMES)}"
        ) from None
