"""Batch augmentations: identity at zero strength, ranges respected, dtype/shape kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from her2scope.stain.augment import (
    BrightnessContrast,
    RandomFlipRot90,
    StainAugment,
    default_train_augment,
)
from her2scope.stain.macenko import RUIFROK_H_DAB

from .test_stain import DAB_A, H_A, tissue_tile


def _batch(n: int = 4, px: int = 32) -> torch.Tensor:
    rng = np.random.default_rng(3)
    tiles = np.stack([tissue_tile(rng, 0.3 + 0.2 * i, H_A, DAB_A, px=px)[0] for i in range(n)])
    return torch.from_numpy(tiles).permute(0, 3, 1, 2).contiguous()


def _conc(x_uint8: torch.Tensor) -> np.ndarray:
    """Per-image mean (H, DAB, residual) concentration on the Ruifrok basis."""
    m = torch.as_tensor(RUIFROK_H_DAB, dtype=torch.float64)
    resid = torch.linalg.cross(m[0], m[1])
    basis = torch.cat([m, (resid / resid.norm())[None]])
    od = -torch.log((x_uint8.double() + 1) / 256)
    c = torch.einsum("ij,njhw->nihw", torch.linalg.inv(basis).T, od)
    return c.mean(dim=(2, 3)).numpy()


def test_zero_strength_is_identity_for_uint8_and_float() -> None:
    x = _batch()
    aug = StainAugment(0, 0, 0, 0, vector_sd=0)
    torch.testing.assert_close(aug(x), x, atol=0, rtol=0)
    xf = x.float() / 255
    out = aug(xf)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, xf, atol=1e-4, rtol=0)
    torch.testing.assert_close(BrightnessContrast(0, 0)(xf), xf, atol=1e-6, rtol=0)


def test_stain_scale_stays_in_range() -> None:
    x = _batch(8)
    g = torch.Generator().manual_seed(0)
    out = StainAugment(
        h_scale=0.2, h_shift=0, dab_scale=0.1, dab_shift=0, vector_sd=0, generator=g
    )(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    ratio = _conc(out)[:, :2] / _conc(x)[:, :2]
    assert (np.abs(ratio[:, 0] - 1) <= 0.2 + 0.02).all() and (np.abs(ratio[:, 0] - 1) > 0.005).any()
    assert (np.abs(ratio[:, 1] - 1) <= 0.1 + 0.02).all()
    # seeded: the same generator seed gives the same batch
    g2 = torch.Generator().manual_seed(0)
    again = StainAugment(
        h_scale=0.2, h_shift=0, dab_scale=0.1, dab_shift=0, vector_sd=0, generator=g2
    )(x)
    torch.testing.assert_close(out, again, atol=0, rtol=0)


def test_flip_rot90_gives_one_of_the_eight_symmetries() -> None:
    x = _batch(6)
    out = RandomFlipRot90(torch.Generator().manual_seed(1))(x)
    for i in range(len(x)):
        cands = [torch.rot90(t, k, dims=(-2, -1)) for t in (x[i], x[i].flip(-1)) for k in range(4)]
        assert any(torch.equal(out[i], c) for c in cands)
    with pytest.raises(ValueError, match="square"):
        RandomFlipRot90()(torch.zeros(1, 3, 4, 5))


def test_default_augment_keeps_float_range_and_shape() -> None:
    xf = _batch().float() / 255
    out = default_train_augment(torch.Generator().manual_seed(2))(xf)
    assert out.shape == xf.shape and out.dtype == xf.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, xf)
    with pytest.raises(ValueError, match="NCHW"):
        StainAugment()(torch.zeros(3, 8, 8))
