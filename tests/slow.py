"""What the ``slow`` marker covers (``make test-fast`` runs ``-m "not slow"``): one home for it.

A test is slow when it takes over ~5 s on 2 cores: it builds a large architecture, or it needs a
session fixture that tiles and stain-fits a cohort or trains a model (marked by
``tests/conftest.py`` wherever the test is defined).
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

#: Fixtures that take seconds to build: tiling + stain fitting (``tiny_tiles``), training a model
#: (``tiny_run``, ``hostile_run``, ``tiny_scoring_run``, ``site_setup``), the whole pipeline
#: (``piped``, test_pipeline.py).
SLOW_FIXTURES = frozenset(
    {"tiny_tiles", "tiny_run", "hostile_run", "tiny_scoring_run", "site_setup", "piped"}
)

#: Architectures whose build (and a step) takes over ~5 s on 2 loaded cores.
SLOW_MODELS = frozenset({"vgg16", "densenet121", "inception_v3", "swin_t"})


def models_marked(names: Iterable[str]) -> list[object]:
    """Parametrize values for model ``names``, the slow architectures marked ``slow``."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n for n in names]
