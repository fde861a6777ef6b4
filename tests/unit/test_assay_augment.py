"""Assay (DAB-scale) and resolution augmentation of issue 11."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from her2scope.errors import ConfigError
from her2scope.stain.augment import AssayAugment, RandomZoom, default_train_augment
from her2scope.stain.macenko import default_reference


def _basis() -> torch.Tensor:
    m = torch.as_tensor(default_reference().stain_matrix, dtype=torch.float64)
    m = m / m.norm(dim=1, keepdim=True)
    r = torch.linalg.cross(m[0], m[1])
    return torch.cat([m, (r / r.norm())[None]])


def _ramp_batch(n: int = 6, px: int = 16) -> tuple[torch.Tensor, np.ndarray]:
    """Float [0, 1] tiles on the reference basis: H 0.3 everywhere, DAB rising along x (0 in the
    first column), a different DAB range per tile. Returns the batch and the DAB map (n, px, px)."""
    b = _basis()
    dab = np.stack([np.tile(np.linspace(0.0, 0.15 + 0.1 * i, px), (px, 1)) for i in range(n)])
    conc = np.stack([np.full_like(dab, 0.3), dab, np.zeros_like(dab)], axis=1)  # n,3,h,w
    od = np.einsum("ij,nihw->njhw", b.numpy(), conc)
    x = (256.0 * np.exp(-od) - 1.0) / 255.0
    return torch.from_numpy(x).float(), dab


def _unmix(x: torch.Tensor) -> np.ndarray:
    od = -torch.log((x.double() * 255.0 + 1.0) / 256.0)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(_basis()).T, od).numpy()


def test_assay_augment_scales_dab_within_range_and_keeps_its_order() -> None:
    x, dab = _ramp_batch()
    aug = AssayAugment((0.3, 1.5), h_scale=0.15, generator=torch.Generator().manual_seed(1))
    y = aug(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    c = _unmix(y)
    for i in range(x.shape[0]):
        out_dab = c[i, 1, 0]
        # order of DAB between pixels is kept; the DAB-free column stays DAB-free
        assert np.all(np.diff(out_dab) > 0), out_dab
        assert abs(out_dab[0]) < 1e-4
        # one factor per tile, inside the range
        ratio = out_dab[1:] / dab[i, 0, 1:]
        np.testing.assert_allclose(ratio, ratio.mean(), rtol=1e-3)
        assert 0.3 - 1e-4 <= ratio.mean() <= 1.5 + 1e-4
        h_ratio = c[i, 0].mean() / 0.3
        assert 0.85 - 1e-4 <= h_ratio <= 1.15 + 1e-4
    # a batch gets different factors per tile (per-tile augmentation), reproducibly
    ratios = [c[i, 1, 0, -1] / dab[i, 0, -1] for i in range(x.shape[0])]
    assert np.ptp(ratios) > 0.05
    again = AssayAugment((0.3, 1.5), h_scale=0.15, generator=torch.Generator().manual_seed(1))(x)
    torch.testing.assert_close(again, y)


def test_assay_augment_keeps_the_dab_order_of_tiles_given_one_factor() -> None:
    """With a degenerate range every tile gets the same factor: tile order by DAB is kept."""
    x, _ = _ramp_batch()
    y = AssayAugment((0.5, 0.5), h_scale=0.0)(x)
    mean_dab_in = _unmix(x)[:, 1].mean(axis=(1, 2))
    mean_dab_out = _unmix(y)[:, 1].mean(axis=(1, 2))
    assert np.all(np.diff(mean_dab_in) > 0)
    assert np.all(np.diff(mean_dab_out) > 0)
    np.testing.assert_allclose(mean_dab_out, 0.5 * mean_dab_in, rtol=2e-3)


def test_assay_augment_uint8_and_bad_ranges() -> None:
    x, _ = _ramp_batch(2)
    xu = (x * 255).round().to(torch.uint8)
    yu = AssayAugment((1.0, 1.0), h_scale=0.0)(xu)
    assert yu.dtype == torch.uint8
    assert int((yu.int() - xu.int()).abs().max()) <= 1
    for bad in ([0.0, 1.0], [1.5, 0.3], [1.0], [0.3, float("inf")]):
        with pytest.raises(ConfigError, match="assay_dab_range"):
            AssayAugment(bad)
    with pytest.raises(ConfigError, match="zoom_range"):
        RandomZoom([2.0, 1.0])


def test_random_zoom_identity_and_magnification() -> None:
    px = 32
    yy, xx = np.mgrid[:px, :px]
    disk = ((yy - 15.5) ** 2 + (xx - 15.5) ** 2 < 6**2).astype(np.float32)
    x = torch.from_numpy(np.stack([disk] * 3)[None].repeat(2, 0))
    torch.testing.assert_close(RandomZoom((1.0, 1.0))(x), x, atol=1e-5, rtol=0)
    big = RandomZoom((2.0, 2.0))(x)
    small = RandomZoom((0.5, 0.5))(x)
    area = float(x[0, 0].sum())
    assert 3.0 < float(big[0, 0].sum()) / area < 5.0
    # zooming out shrinks the central disk (reflected borders repeat the content around it)
    assert float(small[0, 0, 8:24, 8:24].sum()) / area < 0.4
    assert big.shape == x.shape


def test_default_train_augment_adds_the_steps_only_when_asked() -> None:
    names = [type(t).__name__ for t in default_train_augment().transforms]
    assert "AssayAugment" not in names and "RandomZoom" not in names
    on = default_train_augment(assay_dab_range=(0.3, 1.5), zoom_range=(0.8, 1.25))
    names = [type(t).__name__ for t in on.transforms]
    assert names.index("StainAugment") < names.index("AssayAugment")
    assert "RandomZoom" in names
    x, _ = _ramp_batch(2)
    assert on(x).shape == x.shape
