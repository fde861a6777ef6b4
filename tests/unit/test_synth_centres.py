"""Per-centre physical parameters of the synthetic cohort (issue 11): the hard third centre."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from her2scope.synth import params as P
from her2scope.synth.centres import centre_slide_px
from her2scope.synth.check import deconvolve_od
from her2scope.synth.render import MASK_MEMBRANE, SlidePlan, render_slide


def test_third_centre_is_hard_and_a_b_keep_their_physics() -> None:
    a, b, c = P.center_profiles(3, seed=0)
    for prof in (a, b):
        assert (prof.mpp, prof.dab_scale, prof.membrane_scale, prof.cell_scale) == (
            0.5,
            1.0,
            1.0,
            1.0,
        )
    assert c.mpp == 0.25 and c.dab_scale <= 0.5 and c.membrane_scale < 1 and c.cell_scale < 1
    # D onwards are drawn like C's colours but keep the default physics
    d = P.center_profiles(4, seed=0)[3]
    assert d.mpp == 0.5 and d.dab_scale == 1.0
    assert c.to_dict()["dab_scale"] == c.dab_scale


def test_centre_slide_px() -> None:
    a, _, c = P.center_profiles(3, seed=0)
    assert centre_slide_px(4096, a) == 4096
    assert centre_slide_px(4096, c) == 5888  # 4096·√2 rounded to 256 px: 1.47 mm at 0.25 µm/px
    assert centre_slide_px(1024, c) % 256 == 0


def test_weaker_assay_renders_less_membrane_dab_for_the_same_biology() -> None:
    """Same plan (same cells, same grade), assay scale 1 vs 0.4: membrane DAB OD drops ~2.5×."""
    base = replace(P.CENTER_A)
    weak = replace(P.CENTER_A, dab_scale=0.4)
    means = []
    for prof in (base, weak):
        r = render_slide(SlidePlan("S", "P", prof, "3+", 1024, 0.0, (5,)))
        assert r.score == "3+"
        dab = deconvolve_od(r.rgb)[..., 1]
        means.append(float(dab[r.mask == MASK_MEMBRANE].mean()))
    assert 1.8 < means[0] / means[1] < 3.5, means


def test_finer_scanner_renders_more_pixels_per_cell() -> None:
    """At 0.25 µm/px the same pixels cover a quarter of the area: far fewer cells (nests vary)."""
    coarse = render_slide(SlidePlan("S", "P", P.CENTER_A, "2+", 1024, 0.0, (5,)))
    fine = render_slide(SlidePlan("S", "P", replace(P.CENTER_A, mpp=0.25), "2+", 1024, 0.0, (5,)))
    ratio = coarse.cells["x"].size / fine.cells["x"].size
    assert 1.6 < ratio < 6.0, ratio
    assert np.array_equal(coarse.rgb.shape, fine.rgb.shape)
