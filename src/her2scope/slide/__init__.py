"""Slide reading (``open_slide``) and ROI import (``load_rois``)."""

from her2scope.slide.reader import Slide, SlideInfo, open_slide
from her2scope.slide.rois import RoiSet, load_rois, read_rois

__all__ = ["RoiSet", "Slide", "SlideInfo", "load_rois", "open_slide", "read_rois"]
