"""The white rule on histolab's real tiles and their expected labels (../shared/data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from her2scope.slide import open_slide
from her2scope.tiling.background import white_fraction

pytestmark = pytest.mark.real

MAX_WHITE = 0.60


def _white_fracs(shared_data: Path) -> pd.DataFrame:
    tiles = shared_data / "histolab/tiles"
    labels = pd.read_csv(
        tiles / "tile_labels_from_histolab_tests.csv", dtype=str, keep_default_na=False
    )
    fracs = []
    for name in labels.file:
        with open_slide(tiles / name, mpp=0.5) as s:  # RGBA PNGs are composited over white
            w, h = s.dimensions
            fracs.append(white_fraction(s.read_region((0, 0), 0, (w, h)), 220))
    labels["white_frac"] = fracs
    labels["kept"] = labels.white_frac <= MAX_WHITE
    return labels


def test_white_rule_on_histolab_tiles(shared_data: Path) -> None:
    t = _white_fracs(shared_data)
    almost_white = t[t.almost_white_expected == "True"]
    assert len(almost_white) == 3 and not almost_white.kept.any()
    tissue = t[t.almost_white_expected == "False"]
    assert len(tissue) == 8 and tissue.kept.all()
    no_tissue = t[t.nuclei_score_category_from_name == "no-tissue"].set_index("file")
    # plain glass and glass with a line artefact are dropped; pen ink is not white: kept
    assert not no_tissue.loc[
        ["no-tissue.png", "no-tissue2.png", "no-tissue-line.png"], "kept"
    ].any()
    assert no_tissue.loc[["no-tissue-red-pen.png", "no-tissue-green-pen.png"], "kept"].all()
    liver_none = t.set_index("file").loc["liver-level2-38626-13514-39426-14315.png"]
    assert not liver_none.kept
    scored = t[t.nuclei_score_category_from_name.isin(["very-low", "low", "medium", "high"])]
    # three tissue tiles that are mostly background (white 0.68-0.87) fall under the study's rule
    assert scored.kept.sum() == len(scored) - 3
    np.testing.assert_array_equal(
        sorted(scored.loc[~scored.kept, "file"]),
        [
            "high-nuclei-score-level2.png",
            "low-nuclei-score-level0.png",
            "low-nuclei-score-level1.png",
        ],
    )
