"""Labels, config round-trips, atomic writes, the basic slide reader contract, the version and
the checkpoint format gate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from her2scope._io import write_json
from her2scope.config import RunConfig, apply_overrides, from_dict, load_config, to_dict
from her2scope.errors import ConfigError, SlideError
from her2scope.labels import get_scheme, parse_score
from her2scope.slide import open_slide
from her2scope.slide.reader import composite_over_white
from her2scope.slide.write import write_pyramidal_tiff


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("2+", "2+"),
        ("HER2 2+", "2+"),
        ("2", "2+"),
        (2, "2+"),
        ("0", "0"),
        ("0+", "0"),
        (" 3+ ", "3+"),
        ("score 1", "1+"),
        ("her2-3+", "3+"),
        ("4+", None),
        ("2++", None),
        ("positive", None),
        (None, None),
        (2.5, None),
        (float("nan"), None),
    ],
)
def test_parse_score(raw: object, expected: str | None) -> None:
    assert parse_score(raw) == expected


def test_schemes_map_scores_to_classes() -> None:
    study = get_scheme("study")
    assert study.classes == ("1+", "2+", "3+")
    assert study.index_of("HER2 3+") == 2
    assert study.class_of("0") is None  # score 0 is not in the study's scheme
    low = get_scheme("her2low")
    assert [low.class_of(s) for s in ("0", "1+", "2+", "3+")] == ["0", "low", "low", "positive"]
    with pytest.raises(ConfigError, match="unknown label scheme 'nope'"):
        get_scheme("nope")


def test_config_round_trip_and_overrides(tmp_path: Path) -> None:
    cfg = apply_overrides(
        RunConfig(), ["train.epochs=3", "stain.mode=standard", "tiling.tile_px=256"]
    )
    assert (cfg.train.epochs, cfg.stain.mode, cfg.tiling.tile_px) == (3, "standard", 256)
    assert from_dict(RunConfig, to_dict(cfg)) == cfg
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: 2\ncohort:\n  test_centers: [B]\n")
    loaded = load_config(path)
    assert loaded.train.epochs == 2 and loaded.cohort.test_centers == ("B",)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epoch=3", "unknown config key"),
        ("stain.mode=fancy", "not allowed"),
        ("train.epochs=many", "must be an integer"),
    ],
)
def test_config_errors_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        apply_overrides(RunConfig(), [override])


def test_write_json_is_atomic_and_refuses_nan(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json(path, {"a": np.float32(1.5)})
    assert json.loads(path.read_text()) == {"a": 1.5}
    with pytest.raises(ValueError):
        write_json(path, {"a": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1.5}  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_composite_over_white() -> None:
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], np.uint8)
    out = composite_over_white(rgba)
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 2], [127, 127, 127])


def test_generated_pyramid_opens_with_declared_geometry(tmp_path: Path) -> None:
    img = np.full((1100, 900, 3), 235, np.uint8)
    img[100:400, 200:600] = (150, 90, 60)
    path = write_pyramidal_tiff(tmp_path / "s.tif", img, mpp=0.5)
    for reader in ("openslide", "tiffslide"):
        with open_slide(path, reader=reader) as slide:
            assert slide.dimensions == (900, 1100)
            assert slide.level_downsamples == (1.0, 2.0, 4.0)  # down to < 512 px
            assert slide.mpp == (0.5, 0.5)
            region = slide.read_region((250, 150), 0, (20, 10))
            assert region.shape == (10, 20, 3) and region.dtype == np.uint8
            assert np.abs(region.astype(int) - [150, 90, 60]).max() <= 6  # JPEG
            assert slide.thumbnail(110).shape == (110, 90, 3)


def test_missing_mpp_is_an_error_unless_given(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "patch.png"
    Image.fromarray(np.full((64, 48, 3), 200, np.uint8)).save(path)
    with pytest.raises(SlideError, match="no µm/px in the file; add an 'mpp' column"):
        open_slide(path)
    with open_slide(path, mpp=0.25) as slide:
        assert slide.mpp == (0.25, 0.25) and slide.info.mpp_source == "given"
        assert slide.read_region((40, 60), 0, (16, 16))[-1, -1].tolist() == [255, 255, 255]


def test_not_a_slide_is_a_slide_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.svs"
    path.write_bytes(b"this is not a slide" * 10)
    with pytest.raises(SlideError, match="fake.svs"):
        open_slide(path)
    with pytest.raises(SlideError, match="file not found"):
        open_slide(tmp_path / "absent.svs")


def test_errors_survive_pickling_across_processes() -> None:
    import pickle

    from her2scope.errors import ManifestError, RoiError

    for exc in (
        SlideError("a.svs", "truncated"),
        RoiError("r.xml", "bad"),
        ManifestError("m.csv", ["row 2: x"]),
    ):
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and str(back) == str(exc)


def test_atomic_outputs_get_normal_permissions(tmp_path: Path) -> None:
    import os

    path = tmp_path / "r.json"
    write_json(path, {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_version_has_one_source() -> None:
    """`her2scope --version`, the installed metadata and the built package all read
    ``her2scope.__version__``; pyproject holds no second literal."""
    from importlib.metadata import version

    from setuptools.config.pyprojecttoml import read_configuration
    from typer.testing import CliRunner

    import her2scope
    from her2scope.cli import app

    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"her2scope {her2scope.__version__}\n"
    assert version("her2scope") == her2scope.__version__  # differs: reinstall (pip install -e .)
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    project = read_configuration(pyproject)["project"]
    assert project["dynamic"] == ["version"]
    assert project["version"] == her2scope.__version__


def test_checkpoint_of_a_newer_format_is_refused_by_name(tmp_path: Path) -> None:
    import torch

    from her2scope.engine.checkpoint import FORMAT_VERSION, load_checkpoint, state_hash
    from her2scope.errors import Her2ScopeError

    state = {"w": torch.arange(4.0)}
    ckpt = {"model_state": state, "model_hash": state_hash(state)}
    current, newer = tmp_path / "current.pt", tmp_path / "newer.pt"
    torch.save({**ckpt, "format_version": FORMAT_VERSION}, current)
    torch.save({**ckpt, "format_version": FORMAT_VERSION + 1}, newer)
    assert load_checkpoint(current)["format_version"] == FORMAT_VERSION
    with pytest.raises(Her2ScopeError, match=r"checkpoint '.*newer\.pt' has format version") as e:
        load_checkpoint(newer)
    assert "upgrade her2scope" in str(e.value)
