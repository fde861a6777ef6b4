"""The stain fit and the third-stain gate work on distinct colours weighted by pixel counts.

They must give what the per-pixel computation gives: the counts are exact, the weighted
percentile is numpy's linear percentile of the repeated values, and the off-plane share is the
per-pixel share.
"""

from __future__ import annotations

import numpy as np
import pytest

from her2scope.stain.macenko import (
    RUIFROK_H_DAB,
    colour_counts,
    estimate_stains,
    od_lut,
    weighted_percentile,
)
from her2scope.stain.qc import off_plane_share


def _ihc_like(seed: int, n: int = 40_000) -> np.ndarray:
    """Pixels mixing hematoxylin and DAB at random strengths, with noise and some glass."""
    rng = np.random.default_rng(seed)
    conc = rng.gamma(2.0, 0.25, size=(n, 2)) * (rng.random((n, 1)) < 0.8)
    od = conc @ RUIFROK_H_DAB + rng.normal(0, 0.02, size=(n, 3))
    rgb = 240.0 * np.exp(-np.clip(od, 0, None)) - 1.0
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("n", [40_000, 1 << 20])  # both ways of counting (sort, histogram)
def test_colour_counts_are_exact(n: int) -> None:
    px = _ihc_like(0, n)
    colours, counts = colour_counts(px)
    assert counts.sum() == len(px)
    assert len(np.unique(colours, axis=0)) == len(colours)
    rebuilt = np.repeat(colours, counts, axis=0)
    key = lambda a: np.lexsort(a.T[::-1])  # noqa: E731
    np.testing.assert_array_equal(rebuilt[key(rebuilt)], px[key(px)])


@pytest.mark.parametrize("q", [0.0, 1.0, 37.5, 50.0, 99.0, 100.0])
def test_weighted_percentile_is_numpys_percentile_of_the_repeated_values(q: float) -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        values = rng.normal(size=rng.integers(1, 30))
        counts = rng.integers(1, 7, size=len(values))
        want = np.percentile(np.repeat(values, counts), q)
        assert weighted_percentile(values, counts, q) == pytest.approx(want, rel=1e-12, abs=1e-15)


def test_off_plane_share_equals_the_per_pixel_share() -> None:
    img = _ihc_like(2).reshape(200, 200, 3)
    tilted = RUIFROK_H_DAB + np.array([[0.0, 0.0, 0.0], [0.3, -0.2, 0.0]])  # a plane off the data
    lut = od_lut(240.0)
    od = lut[img.reshape(-1, 3)]
    od = od[(od >= 0.15).all(axis=1)]
    q, _ = np.linalg.qr(tilted.T)
    sin_off = np.linalg.norm(od - (od @ q) @ q.T, axis=1) / np.linalg.norm(od, axis=1)
    want = float((sin_off > np.sin(np.radians(10.0))).mean())
    got = off_plane_share([img], tilted, off_plane_deg=10.0)
    assert 0.05 < want < 0.95  # the case is not trivial
    assert got == pytest.approx(want, abs=1e-12)


def test_fit_does_not_depend_on_pixel_order_or_repetition() -> None:
    px = _ihc_like(3)
    fit = estimate_stains(px, RUIFROK_H_DAB)
    assert fit.stain_matrix is not None and fit.n_px == len(px)
    shuffled = px[np.random.default_rng(4).permutation(len(px))]
    again = estimate_stains(shuffled, RUIFROK_H_DAB)
    np.testing.assert_allclose(again.stain_matrix, fit.stain_matrix, atol=1e-9)
    np.testing.assert_allclose(again.max_conc, fit.max_conc, atol=1e-6)
    assert again.n_tissue_px == fit.n_tissue_px
