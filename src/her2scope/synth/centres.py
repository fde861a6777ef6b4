"""Per-centre physical parameters of the synthetic cohort that need code (issue 11).

The profiles themselves are plain data in :mod:`her2scope.synth.params`
(:class:`~her2scope.synth.params.CenterProfile`, ``THIRD_CENTER_PHYSICS``); this module holds the
rules derived from them.
"""

from __future__ import annotations

import math

from her2scope.synth import params as P

#: Level-0 sides are whole multiples of the TIFF tile size.
_TILE_PX = 256


def centre_slide_px(slide_px: int, center: P.CenterProfile) -> int:
    """Level-0 side (px) of a slide scanned at ``center``.

    ``slide_px`` is the side at the default 0.5 µm/px. A finer scanner (e.g. 0.25 µm/px, a 40×
    scan) gets ``slide_px · sqrt(0.5 / mpp)`` pixels (rounded to 256 px): twice the pixels of a
    0.5 µm/px slide, so its slides cover about half the area (a 4096 px default slide: 2 mm at
    0.5 µm/px, 1.47 mm at 0.25 µm/px) while rendering cost and memory only double. Centres at
    0.5 µm/px keep ``slide_px`` exactly.
    """
    if center.mpp == P.SLIDE_MPP:
        return slide_px
    side = slide_px * math.sqrt(P.SLIDE_MPP / center.mpp)
    return max(_TILE_PX, round(side / _TILE_PX) * _TILE_PX)
