"""Batch augmentations for training, as torch callables on NCHW RGB batches.

Every transform takes either a float batch in [0, 1] or a uint8 batch in [0, 255] and returns the
same dtype, shape and device. Randomness is drawn per image from ``torch`` (or the ``generator``
passed in), so seeding torch makes a run repeatable.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from her2scope.errors import ConfigError
from her2scope.stain.macenko import RUIFROK_H_DAB


def _to_float255(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"augment: expected an NCHW RGB batch, got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        return x.float(), True
    if not x.is_floating_point():
        raise ValueError(f"augment: expected uint8 or float [0, 1], got {x.dtype}")
    return x.float() * 255.0, False


def _back(y255: torch.Tensor, was_uint8: bool, dtype: torch.dtype) -> torch.Tensor:
    y255 = y255.clamp(0.0, 255.0)
    if was_uint8:
        return y255.round().to(torch.uint8)
    return (y255 / 255.0).to(dtype)


def _uniform(
    n: int, lo: float, hi: float, gen: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen).to(device)


class StainAugment:
    """Tellez-style H/DAB jitter in OD space, per image.

    Each image is unmixed with the reference H and DAB vectors (plus their cross product as a
    residual channel), each stain concentration becomes ``c·scale + shift`` with ``scale`` from
    ``U(1-s, 1+s)`` and ``shift`` from ``U(-t, t)``, the stain vectors are tilted by Gaussian noise
    of SD ``vector_sd`` (then re-normalised), and the image is recomposed. DAB ranges are kept
    smaller than H by default because DAB intensity carries the HER2 label.
    """

    def __init__(
        self,
        h_scale: float = 0.10,
        h_shift: float = 0.05,
        dab_scale: float = 0.05,
        dab_shift: float = 0.02,
        vector_sd: float = 0.02,
        p: float = 1.0,
        stain_matrix: Sequence[Sequence[float]] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        for name, v in (("h_scale", h_scale), ("dab_scale", dab_scale)):
            if not 0 <= v < 1:
                raise ValueError(f"StainAugment: {name} must be in [0, 1), got {v}")
        m = torch.as_tensor(
            RUIFROK_H_DAB if stain_matrix is None else stain_matrix, dtype=torch.float32
        )
        m = m / m.norm(dim=1, keepdim=True)
        resid = torch.linalg.cross(m[0], m[1])
        self.matrix = torch.cat([m, (resid / resid.norm())[None]])  # (3, 3) rows H, DAB, residual
        self.h_scale, self.h_shift = h_scale, h_shift
        self.dab_scale, self.dab_shift = dab_scale, dab_shift
        self.vector_sd, self.p, self.generator = vector_sd, p, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x255, was_uint8 = _to_float255(x)
        n, dev, gen = x.shape[0], x.device, self.generator
        od = -torch.log((x255 + 1.0) / 256.0)  # (N, 3, H, W); exact inverse below
        m = self.matrix.to(dev)
        conc = torch.einsum("ij,njhw->nihw", torch.linalg.inv(m).T, od)
        ones = torch.ones(n, device=dev)
        zeros = torch.zeros(n, device=dev)
        scale = torch.stack(
            [
                _uniform(n, 1 - self.h_scale, 1 + self.h_scale, gen, dev),
                _uniform(n, 1 - self.dab_scale, 1 + self.dab_scale, gen, dev),
                ones,
            ],
            1,
        )
        shift = torch.stack(
            [
                _uniform(n, -self.h_shift, self.h_shift, gen, dev),
                _uniform(n, -self.dab_shift, self.dab_shift, gen, dev),
                zeros,
            ],
            1,
        )
        apply = (torch.rand(n, generator=gen).to(dev) < self.p).float()
        scale = 1 + (scale - 1) * apply[:, None]
        shift = shift * apply[:, None]
        conc = conc * scale[:, :, None, None] + shift[:, :, None, None]
        noise = torch.randn(n, 3, 3, generator=gen).to(dev) * self.vector_sd * apply[:, None, None]
        noise[:, 2] = 0.0  # the residual channel is not a stain
        mats = m[None] + noise
        mats = mats / mats.norm(dim=2, keepdim=True)
        od_out = torch.einsum("nij,nihw->njhw", mats, conc)
        return _back(256.0 * torch.exp(-od_out) - 1.0, was_uint8, dtype)


class RandomFlipRot90:
    """Per-image random horizontal flip and rotation by k·90° (k uniform in 0..3)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
            raise ValueError(f"RandomFlipRot90: expected square NCHW tiles, got {tuple(x.shape)}")
        n = x.shape[0]
        flip = torch.rand(n, generator=self.generator) < 0.5
        k = torch.randint(0, 4, (n,), generator=self.generator)
        out = x.clone()
        for i in range(n):
            t = x[i].flip(-1) if flip[i] else x[i]
            out[i] = torch.rot90(t, int(k[i]), dims=(-2, -1))
        return out


class BrightnessContrast:
    """Per-image mild brightness and contrast: ``(x - mean)·c + mean + b`` (b in 0-1 units)."""

    def __init__(
        self,
        brightness: float = 0.05,
        contrast: float = 0.05,
        generator: torch.Generator | None = None,
    ) -> None:
        self.brightness, self.contrast, self.generator = brightness, contrast, generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x255, was_uint8 = _to_float255(x)
        n, dev = x.shape[0], x.device
        c = _uniform(n, 1 - self.contrast, 1 + self.contrast, self.generator, dev)[
            :, None, None, None
        ]
        b = _uniform(n, -self.brightness, self.brightness, self.generator, dev)[:, None, None, None]
        mean = x255.mean(dim=(1, 2, 3), keepdim=True)
        return _back((x255 - mean) * c + mean + b * 255.0, was_uint8, dtype)


class Compose:
    """Apply batch transforms in order."""

    def __init__(self, transforms: Sequence[object]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        for t in self.transforms:
            x = t(x)  # type: ignore[operator]
        return x


def _log_uniform(
    n: int, lo: float, hi: float, gen: torch.Generator | None, device: torch.device
) -> torch.Tensor:
    return torch.exp(_uniform(n, math.log(lo), math.log(hi), gen, device))


def _check_range(name: str, rng: Sequence[float]) -> tuple[float, float]:
    vals = tuple(float(v) for v in rng)
    if len(vals) != 2 or not (0 < vals[0] <= vals[1]) or not all(map(math.isfinite, vals)):
        raise ConfigError(
            f"train.{name} = {list(rng)}: give two positive factors lo <= hi, e.g. [0.3, 1.5], "
            "or [] to turn it off"
        )
    return vals[0], vals[1]


class AssayAugment:
    """Assay-sensitivity augmentation in optical-density space, per image (issue 11).

    Each image is unmixed on the stain-normalised basis (the reference H and DAB vectors of
    :func:`her2scope.stain.macenko.default_reference`, plus their cross product), its DAB
    concentration is multiplied by a factor drawn log-uniformly from ``dab_range`` (a weaker or
    stronger assay: the same biology shows less or more DAB), its hematoxylin by ``U(1 ± h_scale)``
    (counterstain strength), and the image is recomposed on the same vectors. Apply it after stain
    normalisation. The map is a positive scale of each concentration, so within an image the
    order of DAB between pixels is kept and a pixel without DAB gains none.
    """

    def __init__(
        self,
        dab_range: Sequence[float] = (0.3, 1.5),
        h_scale: float = 0.15,
        stain_matrix: Sequence[Sequence[float]] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.dab_lo, self.dab_hi = _check_range("assay_dab_range", dab_range)
        if not 0 <= h_scale < 1:
            raise ValueError(f"AssayAugment: h_scale must be in [0, 1), got {h_scale}")
        self.matrix = stain_basis(stain_matrix)  # rows H, DAB, residual
        self.h_scale, self.generator = h_scale, generator

    def factors(self, n: int, device: torch.device) -> torch.Tensor:
        """(n, 3) concentration factors (H, DAB, residual) for the next ``n`` images."""
        gen = self.generator
        h = _uniform(n, 1 - self.h_scale, 1 + self.h_scale, gen, device)
        d = _log_uniform(n, self.dab_lo, self.dab_hi, gen, device)
        return torch.stack([h, d, torch.ones(n, device=device)], 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return scale_concentrations(x, self.factors(x.shape[0], x.device), self.matrix)


def stain_basis(stain_matrix: Sequence[Sequence[float]] | np.ndarray | None = None) -> torch.Tensor:
    """(3, 3) rows H, DAB, residual (their cross product): unit OD vectors; default: the packaged
    stain-normalisation reference."""
    if stain_matrix is None:
        from her2scope.stain.macenko import default_reference

        stain_matrix = default_reference().stain_matrix
    m = torch.as_tensor(stain_matrix, dtype=torch.float32)
    m = m / m.norm(dim=1, keepdim=True)
    resid = torch.linalg.cross(m[0], m[1])
    return torch.cat([m, (resid / resid.norm())[None]])


def scale_concentrations(
    x: torch.Tensor, factors: torch.Tensor, basis: torch.Tensor | None = None
) -> torch.Tensor:
    """Multiply each image's stain concentrations (H, DAB, residual on ``basis``, default
    :func:`stain_basis`) by ``factors`` ((N, 3) or (3,)), in OD space; same dtype back.

    Used with random factors by :class:`AssayAugment` and with a site's fixed DAB factor by
    :mod:`her2scope.scoring.site`.
    """
    dtype = x.dtype
    x255, was_uint8 = _to_float255(x)
    m = (stain_basis() if basis is None else basis).to(x.device)
    f = factors.to(device=x.device, dtype=torch.float32)
    f = f.expand(x.shape[0], 3) if f.ndim == 1 else f
    od = -torch.log((x255 + 1.0) / 256.0)
    conc = torch.einsum("ij,njhw->nihw", torch.linalg.inv(m).T, od)
    od_out = torch.einsum("ij,nihw->njhw", m, conc * f[:, :, None, None])
    return _back(256.0 * torch.exp(-od_out) - 1.0, was_uint8, dtype)


class RandomZoom:
    """Resolution augmentation: per image, zoom by a factor drawn log-uniformly from
    ``zoom_range`` about the centre (``> 1`` magnifies, as a finer scanner or larger cells would;
    ``< 1`` shrinks, with reflected borders), keeping the tile size. Bilinear resampling."""

    def __init__(
        self, zoom_range: Sequence[float] = (0.8, 1.25), generator: torch.Generator | None = None
    ) -> None:
        self.lo, self.hi = _check_range("zoom_range", zoom_range)
        self.generator = generator

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        dtype = x.dtype
        x255, was_uint8 = _to_float255(x)
        n = x.shape[0]
        inv = 1.0 / _log_uniform(n, self.lo, self.hi, self.generator, x.device)
        theta = torch.zeros(n, 2, 3, device=x.device)
        theta[:, 0, 0] = inv
        theta[:, 1, 1] = inv
        grid = F.affine_grid(theta, list(x255.shape), align_corners=False)
        out = F.grid_sample(
            x255, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        return _back(out, was_uint8, dtype)


def default_train_augment(
    generator: torch.Generator | None = None,
    *,
    assay_dab_range: Sequence[float] = (),
    zoom_range: Sequence[float] = (),
) -> Compose:
    """Flips/rot90, [zoom], stain jitter, [assay DAB/H scaling], then brightness/contrast.

    ``assay_dab_range`` / ``zoom_range`` (``train.assay_dab_range`` / ``train.zoom_range``) add
    :class:`AssayAugment` / :class:`RandomZoom`; empty leaves them out.
    """
    steps: list[object] = [RandomFlipRot90(generator)]
    if zoom_range:
        steps.append(RandomZoom(zoom_range, generator))
    steps.append(StainAugment(generator=generator))
    if assay_dab_range:
        steps.append(AssayAugment(assay_dab_range, generator=generator))
    steps.append(BrightnessContrast(generator=generator))
    return Compose(steps)
