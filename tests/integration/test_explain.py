"""``her2scope explain``: gallery and stitched CAM maps for a tiny trained run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


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


# ---- membrane-scale maps, per-slide scale, slides scored by predict -------------------------


class _LineDetector(torch.nn.Module):
    """Logit 0 = mean of a 3×3 'dark red line' filter response; logit 1 = its negative."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0, 1, 1] = 1.0

    def forward(self, x):  # type: ignore[no-untyped-def]
        m = torch.relu(self.conv(x)).mean(dim=(1, 2, 3))
        return torch.stack([m, -m], dim=1)


def test_input_x_gradient_is_exact_and_resolves_a_one_pixel_line() -> None:
    import numpy as np

    from her2scope.explain.gradcam import input_x_gradient

    x = torch.zeros(1, 3, 16, 16)
    x[0, 0, :, 7] = 2.0  # a one-pixel-wide "membrane" in the red channel
    x[0, 1] = 0.5  # green everywhere: the model ignores it
    amap = input_x_gradient(_LineDetector(), x, target=0, smooth_px=0)[0]
    # d logit / d x_red = 1/256 where the filter is active, so x · grad = 2/256 on the line
    np.testing.assert_allclose(amap[:, 7], 2.0 / 256, rtol=1e-6)
    np.testing.assert_allclose(np.delete(amap, 7, axis=1), 0.0, atol=1e-9)


def test_per_slide_scale_keeps_weak_tiles_dark() -> None:
    import numpy as np

    from her2scope.explain.gradcam import normalise_per_slide

    strong = np.full((8, 8), 4.0, np.float32)
    weak = np.full((8, 8), 0.4, np.float32)
    out = normalise_per_slide(np.stack([strong, weak]))
    np.testing.assert_allclose(out[0], 1.0)
    np.testing.assert_allclose(out[1], 0.1, rtol=1e-6)  # a per-tile max would make it 1.0
    assert not normalise_per_slide(np.zeros((2, 4, 4), np.float32)).any()


def test_explain_a_slide_scored_by_predict(tiny_scoring_run: Path, tmp_path: Path) -> None:
    import json

    import numpy as np
    from PIL import Image
    from typer.testing import CliRunner

    from her2scope.cli import app
    from her2scope.scoring import score_slides
    from her2scope.slide.write import write_pyramidal_tiff
    from tests.integration.tiny_pipeline import TOY_COLOURS

    rng = np.random.default_rng(0)
    img = np.clip(np.array(TOY_COLOURS["3+"], float) + rng.normal(0, 12, (192, 192, 3)), 0, 255)
    slide = write_pyramidal_tiff(tmp_path / "S9.tif", img.astype(np.uint8), mpp=0.5)
    scored = tmp_path / "scored"
    refused = score_slides([slide], tiny_scoring_run, tmp_path / "refused")  # toy colours fail QC
    assert refused.summary.loc[0, "status"] == "qc_failed"
    score_slides([slide], tiny_scoring_run, scored, force=True)
    runner = CliRunner()
    res = runner.invoke(
        app,
        ["explain", str(tiny_scoring_run), "--scored", str(scored / "S9.her2scope.json")],
    )
    assert res.exit_code == 0, res.output
    with Image.open(scored / "S9.her2scope-explain.png") as im:
        assert im.format == "PNG" and im.size[0] > 200
    # a slide predict refused has no prediction to explain: a clear error, no traceback
    res = runner.invoke(
        app,
        [
            "explain",
            str(tiny_scoring_run),
            "--scored",
            str(tmp_path / "refused" / "S9.her2scope.json"),
        ],
    )
    from her2scope.errors import ConfigError

    assert isinstance(res.exception, ConfigError), res.output  # the CLI prints it, exit 2
    assert "was not scored" in str(res.exception) and "stain_" in str(res.exception)
    doc = json.loads((scored / "S9.her2scope.json").read_text())
    assert doc["mpp_given"] is None
