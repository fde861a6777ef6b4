"""The synthetic dual-centre HER2 IHC cohort (tests and demos only; never clinical evidence).

``make_cohort`` renders pyramidal TIFF slides, QuPath GeoJSON ROIs and a manifest from first
principles (Beer–Lambert hematoxylin + DAB, cells with membranes, ASCO/CAP grade model, per-centre
stain and scanner profiles). See docs/synthetic.md.
"""

from her2scope.synth.cohort import DEFAULT_SLIDE_PX, make_cohort
from her2scope.synth.params import MEMBRANE_CLASSES, asco_cap_score

__all__ = ["DEFAULT_SLIDE_PX", "MEMBRANE_CLASSES", "asco_cap_score", "make_cohort"]
