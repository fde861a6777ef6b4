"""Evaluation plots (matplotlib's object API): ROC curves, confusion matrix, reliability diagram."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from her2scope.evaluate.aggregate import argmax_high, prob_columns

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _figure(figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """A figure with one axes, on matplotlib's object API (no pyplot state, no backend switch)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _save(fig: Figure, path: Path) -> None:
    from her2scope._io import write_with

    write_with(path, lambda p: fig.savefig(p, dpi=110, bbox_inches="tight", format="png"))


def plot_roc(table: pd.DataFrame, classes: Sequence[str], path: Path, title: str) -> None:
    """One-vs-rest ROC per class present (with negatives), plus the macro-average curve (mean TPR
    on a common FPR grid) only when every class is present."""
    from sklearn.metrics import roc_auc_score, roc_curve

    classes = list(classes)
    y = table["label"].map(classes.index).to_numpy()
    scores = table[prob_columns(classes)].to_numpy(np.float64)
    grid = np.linspace(0, 1, 201)
    tprs = []
    fig, ax = _figure(figsize=(4.6, 4.2))
    for j, c in enumerate(classes):
        pos = y == j
        if pos.all() or not pos.any():
            continue
        fpr, tpr, _ = roc_curve(pos, scores[:, j])
        tprs.append(np.interp(grid, fpr, tpr))
        ax.plot(fpr, tpr, lw=1.5, label=f"{c} (AUC {roc_auc_score(pos, scores[:, j]):.3f})")
    if len(tprs) == len(classes):
        ax.plot(grid, np.mean(tprs, axis=0), "k--", lw=2, label="macro average")
    else:
        ax.text(0.4, 0.1, "macro ROC not drawn:\na class is absent", fontsize=8)
    ax.plot([0, 1], [0, 1], color="0.7", lw=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def plot_confusion(counts: np.ndarray, classes: Sequence[str], path: Path, title: str) -> None:
    """Counts with row percentages (share of each true class); rows = true, columns = called."""
    counts = np.asarray(counts)
    row = counts.sum(axis=1, keepdims=True)
    pct = np.divide(counts, row, out=np.zeros(counts.shape, dtype=float), where=row > 0) * 100
    fig, ax = _figure(figsize=(1.2 * len(classes) + 1.6, 1.1 * len(classes) + 1.2))
    ax.imshow(pct, cmap="Blues", vmin=0, vmax=100)
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(
                j,
                i,
                f"{counts[i, j]}\n{pct[i, j]:.0f} %",
                ha="center",
                va="center",
                color="white" if pct[i, j] > 60 else "black",
                fontsize=9,
            )
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="called", ylabel="true", title=title)
    _save(fig, path)


def plot_reliability(
    table: pd.DataFrame, classes: Sequence[str], path: Path, title: str, n_bins: int = 10
) -> None:
    """Top-label reliability diagram: accuracy vs mean confidence per equal-width bin (bar width is
    the bin, the number above each bar its case count)."""
    classes = list(classes)
    y = table["label"].map(classes.index).to_numpy()
    scores = table[prob_columns(classes)].to_numpy(np.float64)
    conf = scores.max(axis=1)
    correct = argmax_high(scores, axis=1) == y
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    fig, ax = _figure(figsize=(4.6, 4.2))
    edges = np.arange(n_bins) / n_bins
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            ax.bar(
                edges[b],
                correct[sel].mean(),
                width=1 / n_bins,
                align="edge",
                edgecolor="k",
                color="tab:blue",
                alpha=0.7,
            )
            ax.text(
                edges[b] + 0.5 / n_bins,
                min(correct[sel].mean() + 0.02, 0.97),
                str(int(sel.sum())),
                ha="center",
                fontsize=7,
            )
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.set(
        xlabel="confidence (max probability)",
        ylabel="accuracy",
        title=title,
        xlim=(0, 1),
        ylim=(0, 1),
    )
    _save(fig, path)


def write_plots(
    tables: dict[str, pd.DataFrame], classes: Sequence[str], out_dir: Path, n_bins: int = 10
) -> list[str]:
    """ROC, confusion and reliability plots per level into ``out_dir``; returns the file names."""
    from sklearn.metrics import confusion_matrix

    out_dir = Path(out_dir)
    classes = list(classes)
    names = []
    for level, t in tables.items():
        y = t["label"].map(classes.index).to_numpy()
        pred = t["pred"].map(classes.index).to_numpy()
        n = f"{level} level, n={len(t)}"
        plot_roc(t, classes, out_dir / f"roc_{level}.png", f"ROC, {n}")
        plot_confusion(
            confusion_matrix(y, pred, labels=list(range(len(classes)))),
            classes,
            out_dir / f"confusion_{level}.png",
            f"Confusion, {n}",
        )
        plot_reliability(
            t, classes, out_dir / f"reliability_{level}.png", f"Reliability, {n}", n_bins
        )
        names += [f"roc_{level}.png", f"confusion_{level}.png", f"reliability_{level}.png"]
    return names
