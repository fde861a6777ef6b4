"""Training end to end on tiny inputs: run dir, predict parity, resume equivalence, DDP, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from her2scope.config import RunConfig, apply_overrides, load_config
from her2scope.engine.checkpoint import load_checkpoint, load_run_model
from her2scope.engine.predict import predict_tiles
from her2scope.engine.train import tile_macro_auc, train_model

MODEL = "timm:test_resnet"  # a tiny real network: keeps these tests fast


def toy_config(tiles: Path, *extra: str) -> RunConfig:
    return apply_overrides(
        RunConfig(seed=7),
        [
            f"cohort.manifest={tiles / 'manifest.csv'}",
            "cohort.test_centers=[B]",
            "cohort.val_fraction=0.5",
            "stain.mode=none",
            "train.pretrained=false",
            "train.input_px=64",
            "train.epochs=2",
            "train.batch_size=4",
            "train.workers=0",
            "train.lr=0.003",
            *extra,
        ],
    )


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _val_loss_from_checkpoint(run: Path, which: str = "last") -> float:
    model, meta = load_run_model(run, which)
    splits = pd.read_csv(run / "splits.csv")
    tiles = pd.read_parquet(Path(meta.tiles_dir) / "tiles.parquet")
    val = tiles[tiles.slide_id.isin(splits.loc[splits.split == "val", "slide_id"])]
    probs = predict_tiles(model, meta, val.reset_index(drop=True), {}, batch_size=5)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    y = val["label"].map({c: i for i, c in enumerate(meta.classes)}).to_numpy()
    return float(-np.mean(np.log(probs[np.arange(len(y)), y])))


def test_train_writes_the_run_dir(toy_tiles: Path, tmp_path: Path) -> None:
    cfg = toy_config(toy_tiles)
    run = train_model(cfg, MODEL, toy_tiles, tmp_path / "run")
    assert sorted(p.name for p in run.iterdir()) == [
        "calibration.json",
        "checkpoints",
        "config.yaml",
        "metrics.jsonl",
        "provenance.json",
        "splits.csv",
    ]
    prov = json.loads((run / "provenance.json").read_text())
    assert prov["weights"] == {
        "pretrained_loaded": False,
        "source": "random init (train.pretrained=false)",
        "sha256": None,
    }
    assert prov["train_tile_mpp"] == pytest.approx(0.5)
    cal = json.loads((run / "calibration.json").read_text())
    assert cal["n_val_tiles"] == 12 and 0.05 <= cal["temperature"] <= 20.0
    assert 0.0 <= cal["policy"]["threshold"] <= 1.0
    assert cal["policy"]["validation"]["n_slides"] == 3
    assert load_config(run / "config.yaml") == cfg
    splits = pd.read_csv(run / "splits.csv")
    assert list(splits.columns) == ["slide_id", "patient_id", "center", "label", "split"]
    assert set(splits.loc[splits.split == "test", "patient_id"]) == {"B0", "B1", "B2"}
    assert splits.loc[splits.split == "val"].groupby("label").size().to_dict() == {
        "1+": 1,
        "2+": 1,
        "3+": 1,
    }
    rows = _metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) == {
        "epoch", "train_loss", "val_loss", "val_macro_auc", "val_classes_missing", "lr",
        "images_per_s", "train_images", "val_images",
    }  # fmt: skip
    assert rows[0]["train_images"] == 12 and rows[0]["val_images"] == 12
    assert rows[0]["val_classes_missing"] == []
    assert 0.0 <= rows[0]["val_macro_auc"] <= 1.0
    assert rows[1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine schedule ends at zero
    ckpt = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ckpt["classes"] == ["1+", "2+", "3+"] and ckpt["epoch"] == 2 and ckpt["input_px"] == 64
    assert ckpt["optimizer_state"] is not None
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    assert best["optimizer_state"] is None  # best.pt is for inference
    # prediction reuses the training preprocessing: it reproduces the logged validation loss
    assert _val_loss_from_checkpoint(run) == pytest.approx(rows[-1]["val_loss"], rel=1e-5)


@pytest.fixture(scope="module")
def separable_tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 slides of 36 tiles (32 px) whose class is the tile's colour: separable by design."""
    from tests.integration.tiny_pipeline import TOY_PATIENTS, make_toy_tiles

    out = tmp_path_factory.mktemp("separable")
    return make_toy_tiles(out, TOY_PATIENTS, slide_px=192, tile_px=32, seed=1)


def test_train_model_learns_a_separable_problem(separable_tiles: Path, tmp_path: Path) -> None:
    """train_model itself must learn: held-out tiles (another centre) are classified well above
    chance (1/3) by best.pt, and the training loss falls. Catches a trainer whose labels no
    longer belong to their tiles, whose loss no longer drives the weights, or whose best.pt is
    not a trained model."""
    cfg = toy_config(
        separable_tiles, "train.input_px=32", "train.batch_size=8", "train.epochs=4",
        "train.augment=false",
    )  # fmt: skip
    run = train_model(cfg, MODEL, separable_tiles, tmp_path / "run")
    model, meta = load_run_model(run, "best")
    tiles = pd.read_parquet(separable_tiles / "tiles.parquet")
    test = tiles[tiles.center == "B"].reset_index(drop=True)  # never seen in training
    probs = predict_tiles(model, meta, test, {}, batch_size=36)
    y = test["label"].map({c: i for i, c in enumerate(meta.classes)}).to_numpy()
    assert len(y) == 108 and sorted(set(y)) == [0, 1, 2]
    accuracy = float((probs.argmax(1) == y).mean())
    assert accuracy >= 0.9, f"held-out accuracy {accuracy:.3f} (chance 0.33)"
    assert tile_macro_auc(y, probs) >= 0.95
    rows = _metrics(run)
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"], [r["train_loss"] for r in rows]
    assert rows[0]["train_loss"] < 0.9 * np.log(3)  # the first epoch already learns


def test_resume_reaches_the_same_result(
    toy_tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = toy_config(toy_tiles, "train.epochs=3", "train.augment=true")
    full = train_model(cfg, MODEL, toy_tiles, tmp_path / "full")

    import her2scope.engine.checkpoint as ckpt_mod

    real_save = ckpt_mod.save_checkpoint

    def save_then_die(path: Path, **kw: object) -> Path:
        out = real_save(path, **kw)
        if Path(path).name == "last.pt" and kw["epoch"] == 1:
            raise KeyboardInterrupt  # killed right after epoch 1 was saved
        return out

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_model(cfg, MODEL, toy_tiles, tmp_path / "killed")
    monkeypatch.setattr(ckpt_mod, "save_checkpoint", real_save)
    assert len(_metrics(tmp_path / "killed")) == 1
    resumed = train_model(cfg, MODEL, toy_tiles, tmp_path / "killed", resume=True)

    a, b = _metrics(full), _metrics(resumed)
    assert [r["epoch"] for r in b] == [1, 2, 3]
    for key in ("train_loss", "val_loss", "val_macro_auc", "lr"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-6, err_msg=key)
    sa = load_checkpoint(full / "checkpoints" / "last.pt")["model_state"]
    sb = load_checkpoint(resumed / "checkpoints" / "last.pt")["model_state"]
    for key in sa:
        torch.testing.assert_close(sb[key], sa[key], rtol=1e-6, atol=1e-7)


def test_validation_missing_a_class_is_reported(toy_tiles: Path, tmp_path: Path) -> None:
    splits = pd.DataFrame(
        {
            "slide_id": [f"{p}_S1" for p in ("A0", "A1", "A2", "A3", "A4", "A5", "B0", "B1", "B2")],
            "split": ["train", "train", "train", "val", "val", "train", "test", "test", "test"],
        }
    )  # validation: A3 (1+) and A4 (2+) — no 3+
    splits.to_csv(tmp_path / "splits.csv", index=False)
    cfg = toy_config(
        toy_tiles, "cohort.split_mode=file", f"cohort.splits_csv={tmp_path / 'splits.csv'}",
        "train.epochs=1",
    )  # fmt: skip
    run = train_model(cfg, MODEL, toy_tiles, tmp_path / "run")
    (row,) = _metrics(run)
    assert row["val_macro_auc"] is None
    assert row["val_classes_missing"] == ["3+"]
    assert row["val_images"] == 8


def test_macro_auc_needs_every_class() -> None:
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1]])
    assert tile_macro_auc(np.array([0, 1, 2, 0]), probs) == pytest.approx(1.0)
    assert tile_macro_auc(np.array([0, 1, 1, 0]), probs) is None
    # the evaluation's metric (ties count one half), here against scikit-learn
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    y = np.repeat([0, 1, 2], 20)
    p = rng.dirichlet([1, 1, 1], size=60)
    p[:, 0] = np.round(p[:, 0], 1)  # ties
    p /= p.sum(1, keepdims=True)
    want = roc_auc_score(y, p, multi_class="ovr", average="macro")
    assert tile_macro_auc(y, p) == pytest.approx(want, rel=1e-12)


def test_cli_trains_into_sibling_run_dirs(toy_tiles: Path, tmp_path: Path) -> None:
    from her2scope.cli import main

    cfg_path = tmp_path / "cfg.yaml"
    from her2scope.config import dump_config

    dump_config(toy_config(toy_tiles), cfg_path)
    with pytest.raises(SystemExit) as ok:
        main(["train", "--config", str(cfg_path), "--tiles", str(toy_tiles), "--out",
              str(tmp_path / "runs"), "--models", MODEL, "train.epochs=1"])  # fmt: skip
    assert ok.value.code == 0
    run = tmp_path / "runs" / "timm_test_resnet"
    assert [r["epoch"] for r in _metrics(run)] == [1]
    assert load_config(run / "config.yaml").train.models == (MODEL,)
    # resuming a finished run trains nothing more
    with pytest.raises(SystemExit) as again:
        main(["train", "--resume", str(run)])
    assert again.value.code == 0
    assert [r["epoch"] for r in _metrics(run)] == [1]
    with pytest.raises(SystemExit) as exc:
        main(["train", "--resume", str(tmp_path / "nowhere")])
    assert exc.value.code == 2


@pytest.mark.slow
def test_ddp_gloo_two_processes(toy_tiles: Path, tmp_path: Path) -> None:
    cfg_path = tmp_path / "cfg.yaml"
    from her2scope.config import dump_config

    dump_config(toy_config(toy_tiles, "train.epochs=1"), cfg_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HER2SCOPE_NO_PROGRESS": "1"}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "her2scope", "train", "--config", str(cfg_path), "--tiles", str(toy_tiles),
        "--out", str(tmp_path / "runs"), "--models", MODEL,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)  # torchrun and its workers
        proc.communicate()
        pytest.fail("torchrun did not finish in 180 s")
    assert proc.returncode == 0, err[-3000:]
    run = tmp_path / "runs" / "timm_test_resnet"
    (row,) = _metrics(run)  # written once, by rank 0
    assert row["train_images"] == 12  # both ranks' shares counted
    assert row["val_images"] == 12
    # validation gathered from both ranks equals a single-process evaluation of the same weights
    assert _val_loss_from_checkpoint(run) == pytest.approx(row["val_loss"], rel=1e-5)


def test_tiny_run_fixture(tiny_run: Path, tiny_cohort: Path) -> None:
    model, meta = load_run_model(tiny_run)
    assert (
        meta.model_name == "alexnet" and meta.classes == ("1+", "2+", "3+") and meta.input_px == 64
    )
    assert meta.config.synthetic is True
    splits = pd.read_csv(tiny_run / "splits.csv")
    manifest = pd.read_csv(tiny_cohort)
    assert set(splits.loc[splits.split == "test", "slide_id"]) == set(
        manifest.loc[manifest.center == "B", "slide_id"]
    )
    assert set(splits.loc[splits.split != "test", "center"]) == {"A"}
    assert not model.training
    # prediction with the run's stain normalisers, as evaluation does
    from her2scope.stain import load_normalizers

    tiles = pd.read_parquet(Path(meta.tiles_dir) / "tiles.parquet")
    test = tiles[tiles.center == "B"].reset_index(drop=True)
    probs = predict_tiles(model, meta, test, load_normalizers(meta.tiles_dir, meta.config.stain))
    assert probs.shape == (len(test), 3) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


def test_dab_order_loss_runs_in_every_training_step(
    toy_tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With train.dab_order_weight > 0 each step scores the tiles and their DAB-scaled copies in
    one pass and adds the order loss (finite, for every batch) to the training loss."""
    from her2scope.engine import dab_order

    calls: list[tuple[int, int, float]] = []
    original = dab_order.DabOrderLoss.__call__

    def spy(self, logits, logits_pair, log_factors):  # type: ignore[no-untyped-def]
        out = original(self, logits, logits_pair, log_factors)
        calls.append((len(logits), len(logits_pair), float(out.detach())))
        return out

    monkeypatch.setattr(dab_order.DabOrderLoss, "__call__", spy)
    cfg = toy_config(toy_tiles, "train.objective=ordinal", "train.dab_order_weight=0.5")
    run = train_model(cfg, MODEL, toy_tiles, tmp_path / "run")
    assert len(calls) == 2 * 3  # 2 epochs × 12 train tiles / batch 4
    assert all(n == m == 4 and np.isfinite(v) and v > 0 for n, m, v in calls), calls
    assert load_config(run / "config.yaml").train.dab_order_weight == 0.5
    assert all(np.isfinite(r["train_loss"]) for r in _metrics(run))
