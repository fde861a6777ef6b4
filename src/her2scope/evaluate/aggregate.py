"""Tile → slide → patient aggregation of class probabilities (numpy + pandas, no torch).

Three rules, each giving a group a score vector ``prob_<class>`` (used for AUC, Brier score and
calibration) and a call ``pred`` (used for accuracy, F1, kappa, confusion matrix):

``mean`` (default)
    Scores: the mean of the tiles' probability vectors. Call: the class with the highest mean.
``majority``
    Each tile votes for its arg-max class. Scores: the fraction of tiles voting for each class.
    Call: the class with the most votes.
``percent``
    In the spirit of ASCO/CAP ("3+ when > 10 % of cells …"): each tile gets its arg-max grade; the
    call is the **highest** grade ``k`` such that at least ``percent_threshold`` % of the tiles
    reach grade ``k`` or higher (grade ≥ ``k``, classes in ordinal order). The lowest class is
    always reached (100 % of tiles), so a call always exists. Scores: the vote fractions (as for
    ``majority``), since the rule itself gives no probability.

Tie rules (exact, documented in docs/evaluation.md): every arg-max — a tile's class, the mean rule's
call and the majority vote — breaks ties toward the **higher** grade (the later class in the
scheme's ordinal order), so an equivocal group is never silently down-graded. The percent rule's
comparison is ``fraction >= percent_threshold / 100`` (a grade reached by exactly X % counts).

A patient is aggregated from **all of its tiles pooled** (not from its slides' summaries), so a
slide with many tiles weighs more than a slide with few. A group's ``label`` is carried over when
all of its rows agree; a patient whose slides have different labels gets the highest grade among
them (logged as a warning), matching how a patient's HER2 status is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import pandas as pd

from her2scope.errors import ConfigError

logger = logging.getLogger(__name__)

Rule = Literal["mean", "majority", "percent"]
RULES: tuple[str, ...] = ("mean", "majority", "percent")

#: Columns copied from tiles to a group when they are constant within it.
CARRY_COLUMNS: tuple[str, ...] = ("patient_id", "center", "label")


def argmax_high(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """Arg-max along ``axis`` with ties broken toward the **last** (highest-grade) index."""
    values = np.asarray(values)
    flipped = np.flip(values, axis=axis)
    return values.shape[axis] - 1 - np.argmax(flipped, axis=axis)


def _check_rule(rule: str, percent_threshold: float) -> None:
    if rule not in RULES:
        raise ConfigError(f"unknown aggregation rule '{rule}'; choose one of: {', '.join(RULES)}")
    if not 0.0 < float(percent_threshold) <= 100.0:
        raise ConfigError(
            f"percent_threshold must be in (0, 100] (a percentage of tiles), got {percent_threshold}"
        )


def aggregate_probs(
    probs: np.ndarray, rule: Rule = "mean", percent_threshold: float = 10.0
) -> tuple[np.ndarray, int]:
    """Aggregate one group's tile probabilities ``[N, K]`` into ``(scores [K], call index)``.

    ``scores`` sums to 1 (mean probabilities, or vote fractions for ``majority``/``percent``).
    Raises ``ValueError`` on an empty group or a non-2-D array, ``ConfigError`` on a bad rule.
    """
    _check_rule(rule, percent_threshold)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise ValueError(f"expected a non-empty [N, K] probability array, got shape {p.shape}")
    n, k = p.shape
    if rule == "mean":
        scores = p.mean(axis=0)
        return scores, int(argmax_high(scores))
    votes = np.bincount(argmax_high(p, axis=1), minlength=k).astype(np.float64) / n
    if rule == "majority":
        return votes, int(argmax_high(votes))
    # percent: fraction of tiles at grade >= k, highest k reaching the threshold
    reached = np.cumsum(votes[::-1])[::-1]  # reached[k] = fraction of tiles with grade >= k
    # tolerance so that e.g. 1 tile of 10 counts as exactly 10 %
    ok = np.nonzero(reached >= float(percent_threshold) / 100.0 - 1e-12)[0]
    return votes, int(ok.max())


def prob_columns(classes: Sequence[str]) -> list[str]:
    """The probability column names, ``prob_<class>``, in the scheme's order."""
    return [f"prob_{c}" for c in classes]


def aggregate(
    df: pd.DataFrame,
    by: str | Sequence[str],
    rule: Rule = "mean",
    classes: Sequence[str] = ("1+", "2+", "3+"),
    percent_threshold: float = 10.0,
) -> pd.DataFrame:
    """Aggregate a tile-level table to one row per group of ``by`` (e.g. ``"slide_id"``).

    ``df`` needs the ``prob_<class>`` columns for every class. The result has the ``by`` columns,
    ``patient_id`` / ``center`` / ``label`` when present in ``df`` (see the module docstring for a
    patient whose slides disagree), ``n_tiles``, ``prob_<class>`` (the rule's scores) and ``pred``
    (the called class name). Rows are sorted by the group keys. Raises ``ValueError`` naming the
    missing columns or a group whose probabilities are not finite.
    """
    _check_rule(rule, percent_threshold)
    keys = [by] if isinstance(by, str) else list(by)
    classes = list(classes)
    pcols = prob_columns(classes)
    missing = [c for c in [*keys, *pcols] if c not in df.columns]
    if missing:
        raise ValueError(
            f"cannot aggregate: missing column(s) {missing}; the table has {list(df.columns)}"
        )
    if df.empty:
        raise ValueError("cannot aggregate an empty table (no tiles)")
    carry = [c for c in CARRY_COLUMNS if c in df.columns and c not in keys]
    rows = []
    for group_key, g in df.groupby(keys, sort=True, dropna=False):
        key_vals = group_key if isinstance(group_key, tuple) else (group_key,)
        probs = g[pcols].to_numpy(dtype=np.float64)
        if not np.isfinite(probs).all():
            raise ValueError(
                f"group {dict(zip(keys, key_vals, strict=True))}: non-finite probabilities"
            )
        scores, call = aggregate_probs(probs, rule, percent_threshold)
        row: dict[str, object] = dict(zip(keys, key_vals, strict=True))
        for c in carry:
            row[c] = _carry_value(g[c], c, classes, dict(zip(keys, key_vals, strict=True)))
        row["n_tiles"] = len(g)
        row.update(zip(pcols, scores.tolist(), strict=True))
        row["pred"] = classes[call]
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.reset_index(drop=True)


def _carry_value(col: pd.Series, name: str, classes: list[str], group: dict[str, object]) -> object:
    values = pd.unique(col.dropna())
    if len(values) == 1:
        return values[0]
    if len(values) == 0:
        return None
    if name == "label":
        known = [v for v in values if v in classes]
        if len(known) == len(values):
            top = max(known, key=classes.index)
            logger.warning(
                "group %s has labels %s; using the highest grade %s", group, list(values), top
            )
            return top
        raise ValueError(f"group {group}: labels {list(values)} are not all in classes {classes}")
    return None
