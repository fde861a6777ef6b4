"""The synthetic cohort's grade model, centre profiles and renderer, on tiny inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from her2scope.errors import ConfigError
from her2scope.synth import params as P
from her2scope.synth.render import (
    MASK_MEMBRANE,
    MASK_TUMOUR,
    SlidePlan,
    field_at,
    membrane_state,
    render_slide,
    smooth_field,
)


def _cells(counts: dict[int, int], complete: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Cells with the given class counts; ``complete[k]`` of class k are circumferential."""
    cls, comp = [], []
    for k, n in counts.items():
        cls += [k] * n
        comp += [1.0] * complete.get(k, 0) + [0.5] * (n - complete.get(k, 0))
    return np.array(cls), np.array(comp)


@pytest.mark.parametrize(
    ("counts", "complete", "score"),
    [
        # 11 % strong complete → 3+; exactly 10 % is not enough
        ({0: 89, 3: 11}, {3: 11}, "3+"),
        # strong complete in ≤10 % counts towards the >10 % of complete staining of 2+
        ({0: 85, 2: 5, 3: 10}, {2: 5, 3: 10}, "2+"),
        ({0: 85, 2: 5, 3: 10}, {2: 1, 3: 9}, "1+"),
        # strong but incomplete staining is not 3+
        ({1: 50, 3: 50}, {}, "1+"),
        ({1: 50, 2: 11, 0: 39}, {2: 11}, "2+"),
        ({1: 50, 2: 11, 0: 39}, {2: 10}, "1+"),
        ({1: 11, 0: 89}, {}, "1+"),
        ({1: 10, 0: 90}, {}, "0"),
        ({0: 100}, {}, "0"),
    ],
)
def test_asco_cap_rules(counts: dict[int, int], complete: dict[int, int], score: str) -> None:
    cls, comp = _cells(counts, complete)
    assert P.asco_cap_score(cls, comp) == score


def test_asco_cap_refuses_empty() -> None:
    with pytest.raises(ValueError, match="without tumour cells"):
        P.asco_cap_score(np.array([], int), np.array([]))


def test_membrane_class_bounds() -> None:
    lo, mid, hi = P.MEMBRANE_OD_BOUNDS
    od = np.array([0.0, lo - 1e-6, lo, mid - 1e-6, mid, hi - 1e-6, hi, 5.0])
    np.testing.assert_array_equal(P.membrane_class_index(od), [0, 0, 1, 1, 2, 2, 3, 3])


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    low=st.floats(-2.0, 1.0),
    step=st.floats(0.01, 1.5),
)
def test_membrane_state_is_monotone_in_offset(seed: int, low: float, step: float) -> None:
    rng = np.random.default_rng(seed)
    base = rng.normal(math.log(0.3), 0.6, 200)
    u, v = rng.uniform(size=200), rng.uniform(size=200)
    od1, cls1, comp1 = membrane_state(base, u, v, low)
    od2, cls2, comp2 = membrane_state(base, u, v, low + step)
    assert np.all(od2 >= od1)
    assert np.all(cls2 >= cls1)
    # a cell never loses completeness class (complete stays complete) as staining rises
    assert np.all((comp2 >= P.COMPLETE_MIN) >= (comp1 >= P.COMPLETE_MIN))
    order = ["0", "1+", "2+", "3+"]
    assert order.index(P.asco_cap_score(cls2, comp2)) >= order.index(P.asco_cap_score(cls1, comp1))


def test_centre_profiles_differ_in_colour_not_in_dab_amount() -> None:
    a, b, c = P.center_profiles(3, seed=0)
    assert (a.name, b.name, c.name) == ("A", "B", "C")
    assert P.center_profiles(3, seed=0) == [a, b, c]
    assert P.center_profiles(3, seed=1)[2] != c
    for prof in (a, b, c):
        np.testing.assert_allclose(np.linalg.norm(prof.h_vector), 1.0, atol=1e-3)
        np.testing.assert_allclose(np.linalg.norm(prof.dab_vector), 1.0, atol=1e-3)
    # hue of the stains differs between A and B by a few degrees, not by a different stain
    ang = math.degrees(math.acos(float(np.dot(a.dab_vector, b.dab_vector))))
    assert 3 < ang < 20
    assert a.white_rgb != b.white_rgb and a.gamma != b.gamma and a.jpeg_quality != b.jpeg_quality
    assert [p.name for p in P.center_profiles(1, 0)] == ["A"]


def test_smooth_field_statistics_and_field_at_agree() -> None:
    rng = np.random.default_rng(0)
    f = smooth_field(rng, (300, 500), 40.0)
    assert f.shape == (300, 500) and f.dtype == np.float32
    assert 0.4 < f.std() < 1.6
    # neighbouring pixels are strongly correlated at this scale
    assert np.corrcoef(f[:, :-1].ravel(), f[:, 1:].ravel())[0, 1] > 0.95
    # field_at draws the same coarse grid and interpolates it at points: same field, same values
    pts = np.array([[10.0, 20.0], [250.0, 150.0], [499.0, 299.0]], np.float32)
    vals = field_at(np.random.default_rng(0), (300, 500), 40.0, pts)
    np.testing.assert_allclose(vals, f[pts[:, 1].astype(int), pts[:, 0].astype(int)], atol=0.08)


@pytest.fixture(scope="module")
def rendered():
    plan = SlidePlan("S1", "P1", P.CENTER_A, "2+", 1024, 0.0, (7, 1))
    return plan, render_slide(plan)


def test_render_is_deterministic_and_scores_its_label(rendered) -> None:
    plan, r = rendered
    again = render_slide(plan)
    np.testing.assert_array_equal(r.rgb, again.rgb)
    np.testing.assert_array_equal(r.mask, again.mask)
    assert r.score == "2+"
    assert P.asco_cap_score(r.cells["class_idx"], r.cells["completeness"]) == "2+"
    other = render_slide(SlidePlan("S1", "P1", P.CENTER_A, "2+", 1024, 0.0, (7, 2)))
    assert not np.array_equal(other.rgb, r.rgb)


def test_render_geometry_and_ground_truth_are_consistent(rendered) -> None:
    _, r = rendered
    assert r.rgb.shape == (1024, 1024, 3) and r.rgb.dtype == np.uint8
    assert r.mask.shape == (1024, 1024)
    # every cell centre lies on a tumour pixel of the mask
    xs = r.cells["x"].astype(int)
    ys = r.cells["y"].astype(int)
    assert np.isin(r.mask[ys, xs], [MASK_TUMOUR, MASK_MEMBRANE]).all()
    assert r.cells["in_roi"].mean() > 0.7
    assert (r.roi >= 0).all() and (r.roi <= 1024).all()
    # glass is bright, stained membranes are darker and browner than tumour cytoplasm
    glass = r.rgb[r.mask == 0].astype(float).mean(axis=0)
    mem = r.rgb[r.mask == MASK_MEMBRANE].astype(float).mean(axis=0)
    assert glass.min() > 220
    assert mem.sum() < glass.sum() - 100
    assert mem[0] > mem[2]  # brown: more red than blue


def test_grade_raises_membrane_dab_at_fixed_layout() -> None:
    """Same seed (same tissue), three grades: membrane DAB OD rises 1+ < 2+ < 3+."""
    from her2scope.synth.check import deconvolve_od

    means = []
    for label in ("1+", "2+", "3+"):
        r = render_slide(SlidePlan("S", "P", P.CENTER_B, label, 1024, 0.0, (3,)))
        dab = deconvolve_od(r.rgb)[..., 1]
        means.append(float(dab[r.mask == MASK_MEMBRANE].mean()))
        assert r.score == label
    assert means[0] < means[1] < means[2], means


def test_bad_arguments_are_config_errors(tmp_path) -> None:
    from her2scope.synth import make_cohort

    with pytest.raises(ConfigError, match="label '4\\+'"):
        make_cohort(tmp_path, n_patients=3, labels=("1+", "4+"))
    with pytest.raises(ConfigError, match="slide_px=100"):
        make_cohort(tmp_path, slide_px=100)
    with pytest.raises(ConfigError, match="n_patients=1"):
        make_cohort(tmp_path, n_patients=1, n_centers=2)
    with pytest.raises(ConfigError, match="workers=0"):
        make_cohort(tmp_path, workers=0)
    assert not any(tmp_path.iterdir())


def test_deconvolution_recovers_known_concentrations() -> None:
    from her2scope.synth.check import deconvolve_od

    conc = np.array([[0.3, 0.0, 0.1], [0.0, 0.5, 0.0], [0.2, 0.8, 0.05]])
    m = np.stack([P.unit(P.RJ_HEMATOXYLIN), P.unit(P.RJ_DAB), P.unit(P.TISSUE_RESIDUAL)])
    rgb = 255.0 * 10.0 ** -(conc @ m)  # Beer–Lambert, float (no quantisation)
    np.testing.assert_allclose(deconvolve_od(rgb[None]), conc[None], atol=1e-4)


def test_scan_is_beer_lambert_with_the_centres_vectors() -> None:
    """No blur, noise or gamma: a DAB-only map comes back as its concentration (±quantisation)
    when deconvolved with the centre's own vectors, and white glass as the scanner white."""
    from her2scope.synth.render import _scan

    prof = P.CenterProfile(
        name="T",
        h_vector=P.CENTER_B.h_vector,
        dab_vector=P.CENTER_B.dab_vector,
        h_strength=1.0,
        white_rgb=(250.0, 240.0, 230.0),
        gamma=1.0,
        blur_px=0.0,
        jpeg_quality=90,
        noise_sd=0.0,
    )
    c_d = np.zeros((8, 16), np.float32)
    c_d[:, 8:] = 0.4
    zero = np.zeros_like(c_d)
    rgb = _scan(np.random.default_rng(0), prof, zero, c_d, zero, band_px=4)
    np.testing.assert_array_equal(rgb[:, :8].reshape(-1, 3), np.tile([250, 240, 230], (64, 1)))
    od = -np.log10(rgb[:, 8:].astype(float) / np.array(prof.white_rgb))
    dab_only = od / np.asarray(prof.dab_vector)
    np.testing.assert_allclose(dab_only, 0.4, atol=0.01)
