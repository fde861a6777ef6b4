"""Stain stage: IHC-aware Macenko normalisation (H + DAB) and stain augmentation.

The numpy path (this package's imports) never imports torch; ``her2scope.stain.augment`` and
torch-tensor transforms do. See docs/stain.md.
"""

from her2scope.stain.config import StainConfig
from her2scope.stain.macenko import (
    StainNormalizer,
    StainReference,
    default_reference,
    fit_reference,
    load_reference,
    save_reference,
)
from her2scope.stain.slides import fit_stains, load_normalizers

__all__ = [
    "StainConfig",
    "StainNormalizer",
    "StainReference",
    "default_reference",
    "fit_reference",
    "fit_stains",
    "load_normalizers",
    "load_reference",
    "save_reference",
]
