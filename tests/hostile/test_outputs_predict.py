"""``her2scope predict`` as a clumsy user runs it: outputs into the slide/ROI folders, a folder
that cannot be written, a full disk, absurd options, a checkpoint that is not this run's."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.hostile.harness import (
    assert_clean_error,
    assert_no_traceback,
    cli,
    fail_writes,
    read_only,
    snapshot,
    writable_copy,
)

SID = "P000_S1"


@pytest.fixture()
def slide_dir(tiny_cohort: Path, tmp_path: Path) -> Path:
    """A user's folder: one slide and its hand-drawn QuPath ROI beside it."""
    d = tmp_path / "user"
    d.mkdir()
    cohort = tiny_cohort.parent
    sid = pd.read_csv(tiny_cohort)["slide_id"].iloc[0]
    shutil.copy(cohort / "slides" / f"{sid}.tif", d / f"{SID}.tif")
    shutil.copy(cohort / "rois" / f"{sid}.geojson", d / f"{SID}.geojson")
    return d


def _predict(slide_dir: Path, run: Path, *extra: str | Path) -> object:
    # --force: the tiny slides have fewer tumour tiles than the QC gate wants; these tests are
    # about where outputs go, not about QC
    return cli(
        "predict", slide_dir / f"{SID}.tif", "--run", run, "--device", "cpu", "--force", *extra
    )


def test_out_next_to_the_roi_never_replaces_it(slide_dir: Path, hostile_run: Path) -> None:
    """Issue 14.2: `--roi DIR/S.geojson --out DIR` replaced the hand-drawn ROI with tiles."""
    inputs = snapshot(slide_dir, hostile_run)
    r = _predict(slide_dir, hostile_run, "--roi", slide_dir / f"{SID}.geojson", "--out", slide_dir)
    assert r.exit_code == 0, r
    assert_no_traceback(r)
    inputs.assert_unchanged(allow_new=True)
    made = sorted(p.name for p in slide_dir.iterdir())
    assert made == sorted(
        [
            f"{SID}.tif",
            f"{SID}.geojson",
            f"{SID}.her2scope.json",
            f"{SID}.her2scope-heatmap.png",
            f"{SID}.her2scope-tiles.geojson",
            "summary.csv",
        ]
    )
    # the next run still reads the user's ROI, not tile detections
    doc = json.loads((slide_dir / f"{SID}.her2scope.json").read_text())
    assert doc["roi_path"].endswith(f"{SID}.geojson")


def test_out_into_the_roi_folder_keeps_the_rois(
    slide_dir: Path, hostile_run: Path, tmp_path: Path
) -> None:
    """Issue 14.2: `--roi DIR/rois --out DIR/rois`."""
    rois = tmp_path / "rois"
    rois.mkdir()
    shutil.move(slide_dir / f"{SID}.geojson", rois / f"{SID}.geojson")
    before = snapshot(rois, slide_dir, hostile_run)
    r = _predict(slide_dir, hostile_run, "--roi", rois, "--out", rois)
    assert r.exit_code == 0, r
    before.assert_unchanged(allow_new=True)
    assert (rois / f"{SID}.her2scope-tiles.geojson").is_file()


def test_an_output_that_is_an_input_is_refused_before_any_work(
    slide_dir: Path, hostile_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The earlier tile detections given back as the ROI, with the same --out: refuse."""
    import her2scope.engine.checkpoint as ckpt

    roi = slide_dir / f"{SID}.her2scope-tiles.geojson"
    shutil.copy(slide_dir / f"{SID}.geojson", roi)
    monkeypatch.setattr(ckpt, "load_run_model", _must_not_run)
    before = snapshot(slide_dir, hostile_run)
    r = _predict(slide_dir, hostile_run, "--roi", roi, "--out", slide_dir)
    assert_clean_error(r, "would replace an input", str(roi), "--out")
    before.assert_unchanged()


def test_a_symlinked_output_to_an_input_is_refused(slide_dir: Path, hostile_run: Path) -> None:
    out = slide_dir / "out"
    out.mkdir()
    (out / f"{SID}.her2scope.json").symlink_to(slide_dir / f"{SID}.geojson")
    before = snapshot(slide_dir, hostile_run)
    r = _predict(slide_dir, hostile_run, "--roi", slide_dir / f"{SID}.geojson", "--out", out)
    assert_clean_error(r, "would replace an input")
    before.assert_unchanged()


def _must_not_run(*args: object, **kwargs: object) -> None:
    raise AssertionError("the model was loaded although the command should have stopped first")


def test_read_only_out_fails_before_the_work(
    slide_dir: Path, hostile_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14.7: predict did all its work first, then died with `OSError: [Errno 30]`."""
    import her2scope.engine.checkpoint as ckpt

    out = tmp_path / "ro"
    out.mkdir()
    read_only(monkeypatch, out)
    monkeypatch.setattr(ckpt, "load_run_model", _must_not_run)
    before = snapshot(slide_dir, hostile_run, out)
    r = _predict(slide_dir, hostile_run, "--out", out)
    assert_clean_error(r, "read-only", str(out))
    before.assert_unchanged()


def test_disk_full_while_writing_is_named(
    slide_dir: Path, hostile_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "full"
    fail_writes(monkeypatch, errno.ENOSPC)
    before = snapshot(slide_dir, hostile_run)
    r = _predict(slide_dir, hostile_run, "--out", out)
    assert_clean_error(r, "disk full")
    before.assert_unchanged()
    assert not [p for p in out.rglob("*") if p.name != ".her2scope.lock"]


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--workers", "-3", "--workers -3"),
        ("--batch-size", "0", "--batch-size 0"),
        ("--mpp", "0.0001", "--mpp"),
        ("--mpp", "nan", "--mpp"),
        ("--device", "bogus", "'bogus' is not a device"),
        ("--shard", "3/2", "--shard"),
    ],
)
def test_bad_numbers_and_devices_are_refused_up_front(
    slide_dir: Path, hostile_run: Path, tmp_path: Path, option: str, value: str, needle: str
) -> None:
    out = tmp_path / "never"
    before = snapshot(slide_dir, hostile_run)
    r = cli("predict", slide_dir / f"{SID}.tif", "--run", hostile_run, "--out", out, option, value)
    assert_clean_error(r, needle)
    before.assert_unchanged()
    assert not out.exists()


def test_cuda_without_a_gpu_is_a_clear_error(slide_dir: Path, hostile_run: Path) -> None:
    import torch

    if torch.cuda.is_available():
        r = cli("predict", slide_dir / f"{SID}.tif", "--run", hostile_run, "--device", "cuda:99")
        assert_clean_error(r, "cuda:99", "numbered")
    else:
        r = cli("predict", slide_dir / f"{SID}.tif", "--run", hostile_run, "--device", "cuda")
        assert_clean_error(r, "no CUDA GPU", "--device cpu")


def test_not_a_run_folder(slide_dir: Path, tmp_path: Path) -> None:
    r = cli("predict", slide_dir / f"{SID}.tif", "--run", tmp_path, "--out", tmp_path / "o")
    assert_clean_error(r, "no checkpoints/best.pt", str(tmp_path))


def test_summary_keeps_earlier_rows_and_integer_tile_counts(
    slide_dir: Path, hostile_run: Path, tmp_path: Path
) -> None:
    """Issue 14.12: a second predict into --out dropped the earlier rows; n_tiles became "6.0"
    when a slide of the batch failed."""
    out = tmp_path / "pred"
    broken = slide_dir / "BROKEN.tif"
    broken.write_bytes(b"II*\x00 not a tiff at all")
    r1 = _predict(slide_dir, hostile_run, "--out", out)
    assert r1.exit_code == 0, r1
    r2 = cli("predict", broken, "--run", hostile_run, "--device", "cpu", "--force", "--out", out)
    assert_clean_error(r2, "BROKEN.tif", code=1)
    text = (out / "summary.csv").read_text()
    s = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert list(s["slide_id"]) == [SID, "BROKEN"]
    assert list(s["status"]) == ["ok", "failed"]
    n = s.loc[0, "n_tiles"]
    assert str(n).isdigit() and f",{n}," in text and f",{n}.0," not in text
    # scoring the first slide again replaces its row, it does not duplicate it
    r3 = _predict(slide_dir, hostile_run, "--out", out)
    assert r3.exit_code == 0, r3
    s3 = pd.read_csv(out / "summary.csv", keep_default_na=False)
    assert sorted(s3["slide_id"]) == ["BROKEN", SID]


def test_geojson_tiles_sit_on_the_integer_grid(hostile_run: Path, tmp_path: Path) -> None:
    """Issue 14.12: tiles 512.086 px wide on a 512 grid (read_px × a level downsample of 2.0016)."""
    from her2scope.slide.write import write_pyramidal_tiff

    rng = np.random.default_rng(0)
    img = np.clip(rng.normal((150, 100, 80), 20, size=(1283, 1283, 3)), 0, 255).astype(np.uint8)
    slide = write_pyramidal_tiff(tmp_path / "odd.tif", img, mpp=0.5)
    out = tmp_path / "pred"
    r = cli("predict", slide, "--run", hostile_run, "--device", "cpu", "--force", "--out", out)
    assert r.exit_code == 0, r
    feats = json.loads((out / "odd.her2scope-tiles.geojson").read_text())["features"]
    assert feats
    for f in feats:
        ring = np.asarray(f["geometry"]["coordinates"][0])
        w = ring[:, 0].max() - ring[:, 0].min()
        assert w == 512.0  # 256 px at 1 µm/px on a 0.5 µm/px slide: a 512 level-0 px step
        assert ring[0, 0] % 512 == 0 and ring[0, 1] % 512 == 0


def test_orphan_temp_files_are_cleaned_and_user_files_kept(
    slide_dir: Path, hostile_run: Path, tmp_path: Path
) -> None:
    """Issue 14.11: a kill -9 left `.P04_*.tmp.png` files behind for good."""
    out = tmp_path / "pred"
    out.mkdir()
    orphan = out / f".{SID}.her2scope-heatmap.k3j9_a0z.tmp.png"
    orphan.write_bytes(b"half a png")
    users = [out / ".notes.tmp", out / "draft.tmp.png", out / ".x.tmp"]
    for p in users:
        p.write_text("mine")
    r = _predict(slide_dir, hostile_run, "--out", out)
    assert r.exit_code == 0, r
    assert not orphan.exists()
    assert all(p.read_text() == "mine" for p in users)


def test_checkpoint_from_another_run_is_refused(
    hostile_run: Path, slide_dir: Path, tmp_path: Path
) -> None:
    """Issue 14.6: a checkpoint copied into another run was evaluated on its training patients."""
    run = writable_copy(hostile_run, tmp_path / "other_run")
    splits = pd.read_csv(run / "splits.csv", dtype=str)
    test_mask = splits["split"] == "test"
    (
        splits.loc[test_mask, "split"],
        splits.loc[~test_mask & (splits["split"] == "train"), "split"],
    ) = (
        "train",
        "test",
    )
    splits.to_csv(run / "splits.csv", index=False)
    before = snapshot(run, slide_dir)
    r = cli("evaluate", run)
    assert_clean_error(r, "does not belong", "splits", "best.pt")
    before.assert_unchanged()
    r = _predict(slide_dir, run, "--out", tmp_path / "p")
    assert_clean_error(r, "does not belong")
    before.assert_unchanged()


def test_checkpoint_of_another_label_scheme_is_refused(hostile_run: Path, tmp_path: Path) -> None:
    run = writable_copy(hostile_run, tmp_path / "other_run")
    cfg = (run / "config.yaml").read_text()
    assert "label_scheme: study" in cfg
    (run / "config.yaml").write_text(cfg.replace("label_scheme: study", "label_scheme: full"))
    before = snapshot(run)
    r = cli("evaluate", run)
    assert_clean_error(r, "does not belong", "label scheme 'full'")
    before.assert_unchanged()


class _Evil:
    """Unpickling this runs ``marker.touch()``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (Path.touch, (str(self.marker),))  # type: ignore[return-value]


def test_pickled_checkpoint_is_refused_as_unsafe(hostile_run: Path, tmp_path: Path) -> None:
    """Attack that held (no code ran); the message must not suggest weights_only=False."""
    import torch

    run = writable_copy(hostile_run, tmp_path / "evil_run")
    marker = tmp_path / "PWNED"
    torch.save({"model_state": {}, "payload": _Evil(marker)}, run / "checkpoints" / "best.pt")
    before = snapshot(run)
    r = cli("evaluate", run)
    assert_clean_error(r, "refused as unsafe", "best.pt")
    assert "weights_only" not in r.output
    assert not marker.exists()
    before.assert_unchanged()


def test_truncated_checkpoint_is_named(hostile_run: Path, tmp_path: Path) -> None:
    run = writable_copy(hostile_run, tmp_path / "cut_run")
    best = run / "checkpoints" / "best.pt"
    best.write_bytes(best.read_bytes()[:1000])
    before = snapshot(run)
    r = cli("evaluate", run)
    assert_clean_error(r, "best.pt", "could not be read")
    before.assert_unchanged()


def test_pickled_pretrained_weights_are_refused_as_unsafe(tmp_path: Path) -> None:
    """`train.pretrained=<file>` holding pickled objects: refused as unsafe, no code run, and
    the message never suggests weights_only=False."""
    import torch

    from her2scope.errors import WeightsError
    from her2scope.models import create_model
    from tests.hostile.harness import HOSTILE_MODEL

    marker = tmp_path / "PWNED"
    weights = tmp_path / "weights.pt"
    torch.save({"fc.weight": _Evil(marker)}, weights)
    with pytest.raises(WeightsError) as info:
        create_model(HOSTILE_MODEL, 3, pretrained=str(weights))
    assert "refused as unsafe" in str(info.value) and str(weights) in str(info.value)
    assert "weights_only" not in str(info.value)
    assert not marker.exists()
