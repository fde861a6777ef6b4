"""Batch augmentations for training, as torch callables on NCHW RGB batches.

Every transform takes either a float batch in [0, 1] or a uint8 batch in [0, 255] and returns the
same dtype, shape and device. Randomness is drawn per image from ``torch`` (or the ``generator``
passed in), so seeding torch makes a run repeatable.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

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


def default_train_augment(generator: torch.Generator | None = None) -> Compose:
    """Flips/rot90, stain jitter, then brightness/contrast."""
    return Compose(
        [
            RandomFlipRot90(generator),
            StainAugment(generator=generator),
            BrightnessContrast(generator=generator),
        ]
    )
