"""her2scope: HER2 IHC scoring of breast-cancer whole-slide images with deep learning.

Importing the package is cheap and has no side effects: no logging set-up, no torch import, no
network. Stages live in sub-packages (``slide``, ``tiling``, ``stain``, ``cohort``, ``data``,
``models``, ``engine``, ``evaluate``, ``explain``, ``report``); see docs/ARCHITECTURE.md.
"""

from her2scope.errors import Her2ScopeError

__version__ = "0.1.0"

__all__ = ["Her2ScopeError", "__version__"]
