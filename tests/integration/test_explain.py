"""``her2scope explain``: gallery and stitched CAM maps for a tiny trained run."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")

from tests.integration.test_predict import train_tiny_run


@pytest.fixture(scope="module")
def tiny_scoring_run(tmp_path_factory: pytest.TempPathFactory, toy_tiles: Path) -> Path:
    """A run folder holding a tiny model trained on the toy tiles (seconds)."""
    return train_tiny_run(tmp_path_factory.mktemp("tiny_run_explain"), toy_tiles)


def test_explain_split_writes_gallery_and_slide_maps(
    tiny_scoring_run: Path, tmp_path: Path
) -> None:
    from PIL import Image
    from typer.testing import CliRunner

    from her2scope.cli import app

    out = tmp_path / "explain"
    res = CliRunner().invoke(
        app, ["explain", str(tiny_scoring_run), "--split", "test", "--n", "2", "--out", str(out)]
    )
    assert res.exit_code == 0, res.output
    with Image.open(out / "gallery.png") as im:
        assert im.format == "PNG"
    html = (out / "gallery.html").read_text()
    # 3 classes × (correct, wrong); each item has the tile and its overlay
    assert html.count("<h2>") == 6
    blocks = {b.split("</h2>")[0]: b.count("<figure>") for b in html.split("<h2>")[1:]}
    # each test slide (one per class, 4 tiles) is predicted right by the tiny model: n=2 per class
    for cls in ("1+", "2+", "3+"):
        assert blocks[f"predicted {cls} — correct"] == 2, blocks
    assert html.count("data:image/png;base64,") == 2 * html.count("<figure>")
    maps = sorted(p.name for p in (out / "slides").glob("*.png"))
    assert maps == ["B0_S1_cam.png", "B1_S1_cam.png", "B2_S1_cam.png"]  # the 3 test slides


def test_explain_one_slide_and_unknown_slide(tiny_scoring_run: Path, tmp_path: Path) -> None:
    from her2scope.errors import ConfigError
    from her2scope.explain.run import explain_run

    out = explain_run(tiny_scoring_run, slide="A0_S1", n=1, out_dir=tmp_path)
    assert [p.name for p in (out / "slides").glob("*.png")] == ["A0_S1_cam.png"]
    with pytest.raises(ConfigError, match="NOPE"):
        explain_run(tiny_scoring_run, slide="NOPE", out_dir=tmp_path)
    with pytest.raises(ConfigError, match="split 'val'"):
        explain_run(tiny_scoring_run, split="val", out_dir=tmp_path)
