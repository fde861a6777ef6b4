"""Slide reading (``open_slide``) and ROI import (``load_rois``)."""

from her2scope.slide.reader import Slide, SlideInfo, open_slide

__all__ = ["Slide", "SlideInfo", "open_slide"]
