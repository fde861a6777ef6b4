"""Cell-level HER2 membrane scoring by the ASCO/CAP rules (numpy, scipy, OpenCV; no torch).

``analyse_region`` finds nuclei and cells in one RGB region and measures their membranes;
``classify_cells`` and ``slide_call`` turn measurements into membrane classes and the slide's
ASCO/CAP call (0 null, 0 ultralow, 1+, 2+, 3+); ``score_slide_cells`` / ``run_cells`` do whole
slides region by region and write the outputs. See docs/cells.md.
"""

from her2scope.cells.config import CellConfig
from her2scope.cells.segment import RegionCells, analyse_region

__all__ = ["CellConfig", "RegionCells", "analyse_region"]
