"""Stage skipping, --force and failure handling of ``run_pipeline`` (stages replaced by fakes).

The fakes write each stage's real output files and count calls, so these tests check exactly
which stages re-run after each kind of change, in well under a second each.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest

from her2scope import pipeline
from her2scope.config import RunConfig, apply_overrides
from her2scope.errors import ConfigError


class FakeStages:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: Counter[str] = Counter()
        self.fail_train: set[str] = set()
        monkeypatch.setattr(pipeline, "_run_tiling", self.tile)
        monkeypatch.setattr(pipeline, "_run_stain", self.stain)
        monkeypatch.setattr(pipeline, "_run_train", self.train)
        monkeypatch.setattr(pipeline, "_run_evaluate", self.evaluate)
        monkeypatch.setattr(pipeline, "_run_compare", self.compare)
        monkeypatch.setattr(pipeline, "_run_explain", self.explain)
        self.resumed: list[bool] = []

    def tile(self, manifest: Path, tiles_dir: Path, cfg: RunConfig, workers: int) -> None:
        self.calls["tile"] += 1
        tiles_dir.mkdir(parents=True, exist_ok=True)
        (tiles_dir / "tiles.parquet").write_bytes(b"x")
        (tiles_dir / "tiling_report.json").write_text("{}")

    def stain(self, tiles_dir: Path, cfg: RunConfig, workers: int) -> None:
        self.calls["stain"] += 1

    def train(self, cfg: RunConfig, model: str, tiles_dir: Path, run_dir: Path, h: str) -> None:
        self.calls[f"train:{model}"] += 1
        if model in self.fail_train:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            raise RuntimeError(f"{model} diverged")
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        (run_dir / "checkpoints" / "best.pt").write_bytes(b"x")

    def evaluate(self, run_dir: Path, cfg: RunConfig) -> None:
        self.calls[f"evaluate:{run_dir.name}"] += 1
        (run_dir / "results.json").write_text("{}")
        (run_dir / "predictions.parquet").write_bytes(b"x")

    def compare(self, run_dirs: list[Path], out_dir: Path) -> None:
        self.calls["compare"] += 1
        self.compared = [p.name for p in run_dirs]
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "comparison.csv").write_text("model\n")

    def explain(self, run_dir: Path, cfg: RunConfig) -> None:
        self.calls[f"explain:{run_dir.name}"] += 1
        (run_dir / "explain").mkdir(parents=True, exist_ok=True)
        (run_dir / "explain" / "gallery.png").write_bytes(b"x")

    def take(self) -> Counter[str]:
        out, self.calls = self.calls, Counter()
        return out


ALL_ONE_MODEL = Counter(
    {
        "tile": 1,
        "stain": 1,
        "train:alexnet": 1,
        "evaluate:alexnet": 1,
        "compare": 1,
        "explain:alexnet": 1,
    }
)
DOWNSTREAM_OF_TRAIN = Counter(
    {"train:alexnet": 1, "evaluate:alexnet": 1, "compare": 1, "explain:alexnet": 1}
)


@pytest.fixture()
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[FakeStages, RunConfig]:
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "slide_id,patient_id,center,label,slide_path\nS1,P1,A,1+,s1.tif\nS0,P0,B,2+,s0.tif\n"
    )
    for name in ("s0.tif", "s1.tif", "s2.tif"):  # the run validates the manifest first
        (tmp_path / name).write_bytes(b"x")
    monkeypatch.setattr("her2scope.report.html.write_report", _fake_report)
    cfg = apply_overrides(
        RunConfig(),
        [
            f"out_dir={tmp_path / 'out'}",
            f"cohort.manifest={manifest}",
            "stain.mode=preserve_dab",
            "cohort.test_centers=[B]",
        ],
    )
    return FakeStages(monkeypatch), cfg


def _fake_report(out_dir: Path, cfg: RunConfig, path: Path) -> Path:
    Path(path).write_text("<html></html>")
    return Path(path)


def test_second_run_skips_every_stage_but_the_report(setup: tuple[FakeStages, RunConfig]) -> None:
    fakes, cfg = setup
    res = pipeline.run_pipeline(cfg)
    assert fakes.take() == ALL_ONE_MODEL
    assert res.ok and res.report_path == Path(cfg.out_dir) / "report.html"
    res2 = pipeline.run_pipeline(cfg)
    assert fakes.take() == Counter()
    status = {(t.stage, t.model): t.status for t in res2.timings}
    assert status[("tile", None)] == "skipped"
    assert status[("train", "alexnet")] == "skipped"
    assert status[("report", None)] == "ok"
    timings = json.loads((Path(cfg.out_dir) / "timings.json").read_text())
    assert [s["stage"] for s in timings["steps"]] == [
        "tile",
        "stain",
        "train",
        "evaluate",
        "compare",
        "explain",
        "report",
    ]


def test_changed_setting_reruns_that_stage_and_downstream(
    setup: tuple[FakeStages, RunConfig],
) -> None:
    fakes, cfg = setup
    pipeline.run_pipeline(cfg)
    fakes.take()
    pipeline.run_pipeline(apply_overrides(cfg, ["train.epochs=3"]))
    assert fakes.take() == DOWNSTREAM_OF_TRAIN
    pipeline.run_pipeline(apply_overrides(cfg, ["train.epochs=3", "evaluate.n_boot=200"]))
    assert fakes.take() == Counter({"evaluate:alexnet": 1, "compare": 1, "explain:alexnet": 1})
    pipeline.run_pipeline(
        apply_overrides(cfg, ["train.epochs=3", "evaluate.n_boot=200", "stain.mode=standard"])
    )
    assert fakes.take() == Counter({"stain": 1, **DOWNSTREAM_OF_TRAIN})


def test_changed_manifest_reruns_everything(setup: tuple[FakeStages, RunConfig]) -> None:
    fakes, cfg = setup
    pipeline.run_pipeline(cfg)
    fakes.take()
    manifest = Path(cfg.cohort.manifest)
    manifest.write_text(manifest.read_text() + "S2,P2,B,3+,s2.tif\n")
    pipeline.run_pipeline(cfg)
    assert fakes.take() == ALL_ONE_MODEL


def test_force_reruns_one_stage_and_what_reads_it(setup: tuple[FakeStages, RunConfig]) -> None:
    fakes, cfg = setup
    pipeline.run_pipeline(cfg)
    fakes.take()
    pipeline.run_pipeline(cfg, force=["evaluate"])
    assert fakes.take() == Counter({"evaluate:alexnet": 1, "compare": 1, "explain:alexnet": 1})
    pipeline.run_pipeline(cfg, force=["explain"])
    assert fakes.take() == Counter({"explain:alexnet": 1})
    pipeline.run_pipeline(cfg, force=["tile"])
    assert fakes.take() == ALL_ONE_MODEL
    pipeline.run_pipeline(cfg, force=["all"])
    assert fakes.take() == ALL_ONE_MODEL
    with pytest.raises(ConfigError, match="unknown stage.*bogus"):
        pipeline.run_pipeline(cfg, force=["bogus"])


def test_added_model_runs_only_its_own_stages(setup: tuple[FakeStages, RunConfig]) -> None:
    fakes, cfg = setup
    pipeline.run_pipeline(cfg)
    fakes.take()
    pipeline.run_pipeline(cfg, models=["alexnet", "timm:resnet18"])
    assert fakes.take() == Counter(
        {
            "train:timm:resnet18": 1,
            "evaluate:timm_resnet18": 1,
            "compare": 1,
            "explain:timm_resnet18": 1,
        }
    )
    assert fakes.compared == ["alexnet", "timm_resnet18"]


def test_missing_output_reruns_its_stage(setup: tuple[FakeStages, RunConfig]) -> None:
    fakes, cfg = setup
    pipeline.run_pipeline(cfg)
    fakes.take()
    (Path(cfg.out_dir) / "runs" / "alexnet" / "results.json").unlink()
    pipeline.run_pipeline(cfg)
    assert fakes.take() == Counter({"evaluate:alexnet": 1, "compare": 1, "explain:alexnet": 1})


def test_one_failing_model_does_not_stop_the_others(setup: tuple[FakeStages, RunConfig]) -> None:
    fakes, cfg = setup
    fakes.fail_train = {"vgg16"}
    cfg = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, models=("vgg16", "alexnet"))
    )
    res = pipeline.run_pipeline(cfg)
    calls = fakes.take()
    assert calls["train:vgg16"] == 1 and calls["evaluate:vgg16"] == 0
    assert calls["evaluate:alexnet"] == 1 and calls["explain:alexnet"] == 1
    assert fakes.compared == ["alexnet"]
    assert not res.ok and res.failures == ["train[vgg16] failed: vgg16 diverged"]
    assert not (Path(cfg.out_dir) / ".stamps" / "train@vgg16.json").exists()
    # the fixed model is retried alone on the next run
    fakes.fail_train = set()
    res = pipeline.run_pipeline(cfg)
    assert res.ok
    assert fakes.take() == Counter(
        {"train:vgg16": 1, "evaluate:vgg16": 1, "compare": 1, "explain:vgg16": 1}
    )


def test_crash_in_a_fatal_stage_leaves_no_stamp(
    setup: tuple[FakeStages, RunConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes, cfg = setup
    pipeline.run_pipeline(cfg)

    def boom(tiles_dir: Path, cfg: RunConfig, workers: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "_run_stain", boom)
    with pytest.raises(KeyboardInterrupt):
        pipeline.run_pipeline(cfg, force=["stain"])
    assert not (Path(cfg.out_dir) / ".stamps" / "stain.json").exists()
    monkeypatch.setattr(pipeline, "_run_stain", fakes.stain)
    fakes.take()
    pipeline.run_pipeline(cfg)
    assert fakes.take() == Counter({"stain": 1, **DOWNSTREAM_OF_TRAIN})


def test_missing_manifest_is_a_clear_error(tmp_path: Path) -> None:
    cfg = apply_overrides(RunConfig(), [f"out_dir={tmp_path}", "cohort.manifest=nope.csv"])
    with pytest.raises(ConfigError, match=r"cohort.manifest .*nope.csv' not found"):
        pipeline.run_pipeline(cfg)


def test_models_train_then_evaluate_one_after_the_other(
    setup: tuple[FakeStages, RunConfig],
) -> None:
    _, cfg = setup
    res = pipeline.run_pipeline(cfg, models=["vgg16", "alexnet"])
    assert [(t.stage, t.model) for t in res.timings] == [
        ("tile", None),
        ("stain", None),
        ("train", "vgg16"),
        ("evaluate", "vgg16"),
        ("train", "alexnet"),
        ("evaluate", "alexnet"),
        ("compare", None),
        ("explain", "vgg16"),
        ("explain", "alexnet"),
        ("report", None),
    ]


def test_cells_stage_runs_when_enabled_beside_the_first_evaluated_model(
    setup: tuple[FakeStages, RunConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    fakes, cfg = setup
    seen: list[str] = []

    def cells(
        manifest: Path, run_dir: Path, tiles_dir: Path, out: Path, cfg: RunConfig, workers: int
    ) -> None:
        seen.append(run_dir.name)
        out.mkdir(parents=True, exist_ok=True)
        (out / "cells_agreement.json").write_text("{}")

    monkeypatch.setattr(pipeline, "_run_cells", cells)
    fakes.fail_train = {"vgg16"}
    res = pipeline.run_pipeline(cfg, models=["vgg16", "alexnet"])
    assert seen == []  # cells.enabled is off by default
    assert "cells" not in [t.stage for t in res.timings]
    on = apply_overrides(cfg, ["cells.enabled=true"])
    res = pipeline.run_pipeline(on, models=["vgg16", "alexnet"])
    assert seen == ["alexnet"]  # vgg16 failed to train: the first evaluated model is alexnet
    assert [t.stage for t in res.timings][-2:] == ["cells", "report"]
    fakes.fail_train = set()
    pipeline.run_pipeline(on, models=["vgg16", "alexnet"])
    assert seen == ["alexnet", "vgg16"]  # now vgg16 is evaluated first: cells follows it
