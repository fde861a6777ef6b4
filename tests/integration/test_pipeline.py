"""The whole pipeline with its real stages on the tiny synthetic cohort, and the report's content."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from her2scope.config import RunConfig, apply_overrides
from tests.integration.tiny_pipeline import tiny_pipeline


@pytest.fixture(scope="module")
def piped(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunConfig, object]:
    return tiny_pipeline(tiny_cohort, tmp_path_factory.mktemp("pipeline") / "out")


def test_first_run_writes_every_output(piped: tuple[RunConfig, object]) -> None:
    cfg, res = piped
    out = Path(cfg.out_dir)
    assert res.ok, res.failures
    run = out / "runs" / "alexnet"
    for rel in (
        "tiles/tiles.parquet",
        "tiles/tiling_report.json",
        "config.yaml",
        "compare/comparison.csv",
        "report.html",
        "timings.json",
    ):
        assert (out / rel).is_file(), rel
    for rel in (
        "checkpoints/best.pt",
        "splits.csv",
        "results.json",
        "predictions.parquet",
        "explain/gallery.png",
    ):
        assert (run / rel).is_file(), rel
    steps = json.loads((out / "timings.json").read_text())["steps"]
    assert [(s["stage"], s["status"]) for s in steps] == [
        ("tile", "ok"),
        ("stain", "ok"),
        ("train", "ok"),
        ("evaluate", "ok"),
        ("compare", "ok"),
        ("explain", "ok"),
        ("cells", "ok"),
        ("report", "ok"),
    ]
    # the test split is exactly centre B
    pred = pd.read_parquet(run / "predictions.parquet")
    assert set(pred["center"]) == {"B"}
    splits = pd.read_csv(run / "splits.csv")
    assert set(splits.loc[splits["split"] == "test", "center"]) == {"B"}


def test_cells_stage_scores_the_test_slides_beside_the_cnn(piped: tuple[RunConfig, object]) -> None:
    """cells.enabled: every test slide gets the cell outputs; the agreement file pairs each
    slide's cell-rule call with the CNN's slide call (the evaluate stage's own aggregation)."""
    from her2scope.cells.fit import label_index
    from her2scope.evaluate.aggregate import aggregate

    cfg, _ = piped
    out = Path(cfg.out_dir)
    run = out / "runs" / "alexnet"
    splits = pd.read_csv(run / "splits.csv")
    test_ids = sorted(splits.loc[splits["split"] == "test", "slide_id"])
    summary = pd.read_csv(out / "cells" / "cells_summary.csv")
    assert sorted(summary["slide_id"]) == test_ids
    assert (summary["status"] == "ok").all(), summary
    for sid in test_ids:
        for suffix in (".cells.parquet", ".cells.json", ".cells.geojson", ".cells.png"):
            assert (out / "cells" / f"{sid}{suffix}").is_file(), (sid, suffix)
    agreement = json.loads((out / "cells" / "cells_agreement.json").read_text())
    pred = pd.read_parquet(run / "predictions.parquet")
    classes = [c[len("prob_") :] for c in pred.columns if c.startswith("prob_")]
    slides = aggregate(pred, "slide_id", cfg.evaluate.aggregate, classes)
    expected_cnn = dict(zip(slides["slide_id"], slides["pred"], strict=True))
    assert dict(zip(summary["slide_id"], summary["cnn_score"], strict=True)) == expected_cnn
    table = agreement["cnn_vs_cells"]
    comparable = summary["cell_score"].notna()
    assert table["n_slides"] == int(comparable.sum())
    conf = table["confusion"]
    for r in summary[comparable].itertuples():
        assert conf[label_index(r.cnn_score)][label_index(r.cell_score)] >= 1
    assert sum(map(sum, conf)) == table["n_slides"]
    assert agreement["cells_vs_label"]["n_slides"] == table["n_slides"]
    n_review = int(summary["review"].sum())
    assert len(agreement["review"]) == n_review
    assert n_review == int((summary["cnn_score"] != summary["cell_score"]).sum())


def test_second_run_skips_and_keeps_outputs(piped: tuple[RunConfig, object]) -> None:
    from her2scope.pipeline import run_pipeline

    cfg, _ = piped
    run = Path(cfg.out_dir) / "runs" / "alexnet"
    before = {p: (run / p).read_bytes() for p in ("checkpoints/best.pt", "results.json")}
    res = run_pipeline(cfg, workers=1)
    assert res.ok
    assert [t.status for t in res.timings] == ["skipped"] * 7 + ["ok"]  # report: always
    assert {p: (run / p).read_bytes() for p in before} == before


def test_report_content_matches_the_results(piped: tuple[RunConfig, object]) -> None:
    from PIL import Image

    cfg, _ = piped
    out = Path(cfg.out_dir)
    html = (out / "report.html").read_text(encoding="utf-8")
    results = json.loads((out / "runs" / "alexnet" / "results.json").read_text())
    assert "SYNTHETIC DATA" in html
    m = results["levels"]["patient"]["macro_auc"]
    if m["value"] is not None:
        assert f"{m['value']:.3f} [{m['ci'][0]:.3f}, {m['ci'][1]:.3f}]" in html
    assert "Leakage check: <span class='ok'>passed</span>" in html
    tiling = json.loads((out / "tiles" / "tiling_report.json").read_text())
    for s in tiling["slides"]:
        assert f"<td>{s['slide_id']}</td>" in html
    # every artefact the pipeline wrote made it into the report
    assert "Not available" not in html
    # self-contained: every image is an inline PNG/JPEG that decodes; no external references
    srcs = re.findall(r'<img src="([^"]+)"', html)
    plots = list((out / "runs" / "alexnet" / "plots").glob("*.png"))
    cams = list((out / "runs" / "alexnet" / "explain").rglob("*.png"))
    cells = sorted((out / "cells").glob("*.cells.png"))[:4]
    assert cells  # raw-vs-normalised grid + plots + CAMs + up to 4 cell overlays
    assert len(srcs) == 1 + len(plots) + len(cams) + len(cells)
    # the cells section: the three agreement tables with their κ, the review list
    agreement = json.loads((out / "cells" / "cells_agreement.json").read_text())
    for key, caption in (
        ("cnn_vs_cells", "CNN vs cell rules"),
        ("cells_vs_label", "Labels vs cell rules"),
        ("cnn_vs_label", "Labels vs CNN"),
    ):
        t = agreement[key]
        kappa = "—" if t["kappa_quadratic"] is None else f"{t['kappa_quadratic']:.3f}"
        assert f"{caption}: {t['n_slides']} slide(s)" in html
        assert f"quadratic κ {kappa}" in html
    assert f"Slides to review ({len(agreement['review'])})" in html
    # the tiny cohort has ground-truth masks: the explain stage measured where the maps point
    pointing = json.loads((out / "runs" / "alexnet" / "explain" / "pointing_game.json").read_text())
    assert pointing["n_tiles"] > 0 and 0 < pointing["chance"] < 1
    assert set(pointing["methods"]) == {"gradcam", "input_x_gradient"}
    for v in pointing["methods"].values():
        assert 0 <= v["pointing_game"] <= 1
        assert v["pointing_game"] * pointing["n_tiles"] == pytest.approx(
            round(v["pointing_game"] * pointing["n_tiles"])
        )  # a share of whole tiles
        assert f"<td>{v['pointing_game']:.3f}</td><td>{pointing['chance']:.3f}</td>" in html
    for src in srcs:
        assert re.match(r"data:image/(png|jpeg);base64,", src)
        with Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))) as im:
            assert im.width > 0 and im.height > 0
    assert not re.search(r'(src|href)="(https?:|//|file:)', html)


def test_report_survives_missing_artefacts(tmp_path: Path) -> None:
    from her2scope.report.html import render_report

    cfg = apply_overrides(RunConfig(), [f"out_dir={tmp_path}"])
    html = render_report(tmp_path, cfg)
    assert "SYNTHETIC" not in html  # real-cohort runs get no banner
    for what in (
        "patient-level splits",
        "tiling report",
        "model comparison",
        "trained runs",
        "reflex-FISH list",
        "run times",
    ):
        assert f"Not available: {what}" in html, what
    assert "<h2 id='provenance'>Provenance</h2>" in html


def test_run_cli_prints_auc_timings_and_report(piped: tuple[RunConfig, object]) -> None:
    from typer.testing import CliRunner

    from her2scope.cli import app
    from her2scope.config import dump_config

    cfg, _ = piped
    out = Path(cfg.out_dir)
    cfg_path = out.parent / "run.yaml"
    dump_config(cfg, cfg_path)
    r = CliRunner().invoke(app, ["run", str(cfg_path), "--force", "report"])
    assert r.exit_code == 0, r.output
    assert "train[alexnet]" in r.output and "skipped" in r.output
    results = json.loads((out / "runs" / "alexnet" / "results.json").read_text())
    m = results["levels"]["patient"]["macro_auc"]
    assert (f"{m['value']:.3f}" if m["value"] is not None else "not available") in r.output
    assert f"Report: {out / 'report.html'}" in r.output
    r = CliRunner().invoke(app, ["run", str(cfg_path), "--force", "nonsense"])
    assert r.exit_code != 0 and "unknown stage" in str(r.exception)


def test_packaged_demo_config_matches_the_repository_copy() -> None:
    from her2scope.cli.run import demo_config_path
    from her2scope.config import load_config

    repo = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
    assert demo_config_path().read_text() == repo.read_text()
    cfg = load_config(demo_config_path())
    assert cfg.cohort.test_centers == ("B",) and cfg.train.models == ("alexnet",)
    assert cfg.train.pretrained == "auto" and cfg.synthetic
