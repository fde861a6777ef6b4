"""Rendered IHC-like test images shared by unit and integration tests (plain functions)."""

from __future__ import annotations

import numpy as np

H_OD = np.array([0.65, 0.70, 0.29])
DAB_OD = np.array([0.27, 0.57, 0.78])


def render_cells(second: np.ndarray, seed: int = 0, px: int = 192) -> np.ndarray:
    """Cells on glass: hematoxylin nuclei and a second stain on rings (DAB) or everywhere (eosin)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:px, :px]
    h = np.zeros((px, px))
    s2 = np.zeros((px, px))
    for cy, cx in rng.uniform(12, px - 12, size=(40, 2)):
        r = np.hypot(yy - cy, xx - cx)
        h += np.where(r < 5, rng.uniform(0.4, 0.9), 0.0)
        s2 += np.where((r > 8) & (r < 10), rng.uniform(0.3, 1.0), 0.0)
    # the second stain also fills the cytoplasm: faint for DAB, strong for eosin (as in H&E)
    fill = 0.15 if second is DAB_OD else 2.0
    s2 += fill * (h == 0) * (rng.random((px, px)) < 0.6)
    h[:, : px // 6] = 0.0  # a strip of glass
    s2[:, : px // 6] = 0.0
    od = h[..., None] * H_OD / np.linalg.norm(H_OD) + s2[..., None] * second / np.linalg.norm(
        second
    )
    rgb = 240.0 * np.exp(-od) - 1.0 + rng.normal(0, 1.5, size=od.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)
