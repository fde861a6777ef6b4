"""The typed configuration: what pydantic checks, in the project's words, and how options overlay it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace
from typing import Any, get_args

import pytest
import yaml
from typer.testing import CliRunner

from her2scope.config import (
    RunConfig,
    apply_overrides,
    dump_config,
    from_dict,
    load_config,
    reference_markdown,
    to_dict,
)
from her2scope.errors import ConfigError
from her2scope.tiling.config import TilingConfig

#: A config.yaml as `her2scope train` wrote it before the configuration was typed (commit 88e1242,
#: `dump_config` of a RunConfig with a few settings changed). Run folders and checkpoints hold
#: this; it must keep loading, and dump back byte for byte.
OLD_DUMP = """\
out_dir: runs/her2scope
seed: 0
synthetic: false
cohort:
  manifest: manifest.csv
  label_scheme: study
  allow_absolute_paths: false
  split_mode: external
  test_centers:
  - B
  val_fraction: 0.2
  n_folds: 5
  fold: 0
  splits_csv: null
  split_seed: 0
tiling:
  tile_px: 512
  target_mpp: null
  max_white: 0.6
  white_level: 220
  roi_rule: centre
  min_roi_cover: 0.5
  roi_classes:
  - Tumor
  reader: auto
stain:
  mode: standard
  reference: null
  fit_tiles: 64
train:
  models:
  - alexnet
  - resnet34
  pretrained: auto
  input_px: 512
  epochs: 10
  batch_size: 16
  lr: 0.0001
  weight_decay: 0.0001
  optimizer: adamw
  warmup_epochs: 1
  label_smoothing: 0.0
  balance: none
  grad_accum: 1
  precision: auto
  channels_last: true
  early_stop_patience: 5
  workers: 2
  deterministic: false
  augment: true
  max_tiles_per_slide: 50
  objective: softmax
  assay_dab_range: []
  zoom_range:
  - 0.8
  - 1.25
  dab_order_weight: 0.0
  dab_order_range:
  - 1.25
  - 4.0
evaluate:
  split: test
  aggregate: mean
  percent_threshold: 10.0
  n_boot: 1000
  ci: 0.95
  seed: 0
  ece_bins: 10
  batch_size: 64
  plots: true
  reflex_uncertainty: 0.5
explain:
  n_tiles: 16
  heatmap_max_px: 1024
cells:
  enabled: false
  target_mpp: 0.5
  finest_mpp: 0.25
  region_um: 1024.0
  halo_um: 24.0
  stain_scope: slide
  nucleus_h_od: 0.08
  nucleus_smooth_um: 0.6
  nucleus_min_area_um2: 12.0
  nucleus_max_area_um2: 200.0
  nucleus_max_elongation: 3.0
  split_min_distance_um: 3.0
  cell_expand_um: 5.0
  band_um: 1.5
  membrane_smooth_um: 0.2
  n_sectors: 16
  complete_rel: 0.4
  od_faint: 0.05
  od_weak: 0.17
  od_strong: 0.39
  complete_min: 0.65
  dab_scale: 1.0
  calibration_reference: null
  dab_noise_od: 0.03
  center_noise_od: null
  positive_fraction: 0.1
  ultralow_min_fraction: 0.01
  borderline_margin: 0.02
qc:
  max_h_angle_deg: 25.0
  max_dab_angle_deg: 25.0
  min_eosin_margin_deg: 10.0
  max_off_plane_share: 0.05
  max_background_chroma: 60.0
  max_mpp_rel_diff: 0.1
  min_tiles: 8
  max_passthrough_frac: 0.5
"""


def _error(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ConfigError) as exc:
        fn(*args, **kwargs)
    return str(exc.value)


def test_a_config_dumped_before_typing_loads_and_dumps_back_unchanged(tmp_path: Path) -> None:
    old = tmp_path / "config.yaml"
    old.write_text(OLD_DUMP)
    cfg = load_config(old)
    assert cfg.cohort.test_centers == ("B",)
    assert cfg.train.models == ("alexnet", "resnet34") and cfg.train.zoom_range == (0.8, 1.25)
    assert cfg.tiling.roi_classes == ("Tumor",) and cfg.stain.mode == "standard"
    assert cfg.train.max_tiles_per_slide == 50
    # checkpoints store the same mapping; from_dict reads it
    assert from_dict(RunConfig, yaml.safe_load(OLD_DUMP)) == cfg
    again = tmp_path / "again.yaml"
    dump_config(cfg, again)
    assert again.read_text() == OLD_DUMP


def test_unknown_keys_are_refused_naming_file_key_and_the_nearest_key(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("seeed: 3\ntrain:\n  epoch: 3\n  xyzzy: 1\n")
    text = _error(load_config, path)
    assert f"3 problem(s) in config file '{path}'" in text
    assert "  - seeed: unknown config key; did you mean 'seed'? allowed under 'top level': " in text
    assert (
        "  - train.epoch: unknown config key; did you mean 'train.epochs'? allowed under " in text
    )
    # no near key: no guess, but the allowed keys
    assert (
        "  - train.xyzzy: unknown config key; allowed under 'train': assay_dab_range, augment,"
        in text
    )


def test_out_of_range_values_are_refused_with_the_allowed_range() -> None:
    text = _error(apply_overrides, RunConfig(), ["tiling.tile_px=4", "evaluate.ci=0"])
    assert text.splitlines()[1:] == [
        "  - tiling.tile_px=4: must be within [8, 8192] (output pixels per side)",
        "  - evaluate.ci=0.0: must be within (0, 1) (confidence level of the intervals, e.g. 0.95)",
    ]


def test_a_choice_outside_the_literal_is_refused_listing_the_choices() -> None:
    text = _error(apply_overrides, RunConfig(), ["stain.mode=fancy"])
    assert "stain.mode='fancy': not allowed; choose one of preserve_dab, standard, none" in text


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=3.5", "train.epochs=3.5: must be an integer"),
        ("train.epochs=many", "train.epochs='many': must be an integer"),
        ("train.augment=maybe", "train.augment='maybe': must be true or false"),
        ("train.lr=fast", "train.lr='fast': must be a number"),
        ("train.models=[[1]]", "train.models[0]=[1]: must be a string"),
        ("train=3", "train=3: must be a mapping of settings"),
    ],
)
def test_dotted_overrides_are_validated(override: str, message: str) -> None:
    assert message in _error(apply_overrides, RunConfig(), [override])


def test_dotted_override_values_are_yaml_scalars_and_lists() -> None:
    cfg = apply_overrides(
        RunConfig(),
        ["train.epochs=3", "train.lr=1e-3", "cohort.test_centers=B,C", "train.zoom_range=[1, 2]"],
    )
    assert cfg.train.epochs == 3 and type(cfg.train.epochs) is int
    assert cfg.train.lr == 0.001
    assert cfg.cohort.test_centers == ("B", "C")  # a comma list from a command line
    # centres named by numbers: YAML reads integers, the manifest (text) has "1", "2"
    assert apply_overrides(cfg, ["cohort.test_centers=[1, 2]"]).cohort.test_centers == ("1", "2")
    assert cfg.train.zoom_range == (1.0, 2.0) and all(
        type(v) is float for v in cfg.train.zoom_range
    )


def test_every_problem_is_listed_at_once_in_the_configs_order(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(
        "qc:\n  min_tiles: 0\n"
        "train:\n  batch_size: 0\n  optimizer: adam\n"
        "cells:\n  od_faint: 0.3\n  od_weak: 0.2\n"
        "seed: -1\n"
    )
    text = _error(load_config, path, ["tiling.max_white=2"])
    assert text.splitlines() == [
        f"6 problem(s) in config file '{path}' and its overrides; nothing was run. Fix them (in "
        "the config file or as KEY=VALUE overrides) and run again:",
        "  - seed=-1: must be within [0, 4294967295] (seed of training)",
        "  - tiling.max_white=2.0: must be within [0, 1] (drop a tile whose white fraction is "
        "above this)",
        "  - train.batch_size=0: must be within [1, 65536] (tiles per training step)",
        "  - train.optimizer='adam': not allowed; choose one of adamw, sgd",
        "  - cells OD thresholds must rise: 0 < od_faint (0.3) < od_weak (0.2) < od_strong (0.42)",
        "  - qc.min_tiles=0: must be >= 1 (at least this many tumour tiles)",
    ]


def test_sections_are_frozen_and_replace_revalidates() -> None:
    cfg = RunConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.epochs = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]
    assert dataclasses.replace(cfg.tiling, tile_px=256).tile_px == 256
    with pytest.raises(ConfigError, match=r"tiling.tile_px=4: must be within \[8, 8192\]"):
        dataclasses.replace(cfg.tiling, tile_px=4)
    with pytest.raises(ConfigError, match="tiling.bogus: unknown config key"):
        TilingConfig(bogus=1)  # type: ignore[call-arg]


def _capture_tiling(monkeypatch: pytest.MonkeyPatch) -> list[TilingConfig]:
    """Replace the tiling work by a recorder of the TilingConfig the command built."""
    import her2scope.tiling.extract as extract

    seen: list[TilingConfig] = []

    def fake(entries: Any, out: Path, cfg: TilingConfig, **kwargs: Any) -> SimpleNamespace:
        seen.append(cfg)
        return SimpleNamespace(n_tiles=0, tiles_path=out / "tiles.parquet", slides=[], failures=[])

    monkeypatch.setattr(extract, "tile_entries", fake)
    return seen


def test_tile_options_not_given_keep_the_config_file_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from her2scope.cli import app

    seen = _capture_tiling(monkeypatch)
    config = tmp_path / "study.yaml"
    config.write_text("tiling:\n  tile_px: 256\n  max_white: 0.4\n  roi_classes: [Tumor]\n")
    slide = tmp_path / "s1.png"
    slide.write_bytes(b"")  # never read: the tiling itself is replaced
    base = ["tile", str(slide), "--out", str(tmp_path / "out"), "--config", str(config)]
    res = CliRunner().invoke(app, base)
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, [*base, "--tile-px", "128", "--roi-classes", "Tumor,Stroma"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["tile", str(slide), "--out", str(tmp_path / "out2")])
    assert res.exit_code == 0, res.output
    from_yaml, overridden, defaults = seen
    assert (from_yaml.tile_px, from_yaml.max_white, from_yaml.roi_classes) == (256, 0.4, ("Tumor",))
    assert (overridden.tile_px, overridden.max_white) == (128, 0.4)
    assert overridden.roi_classes == ("Tumor", "Stroma")
    assert defaults == TilingConfig()  # no config, no option: the section's own defaults


def test_a_bad_option_is_named_as_typed_and_a_bad_file_value_by_its_key(tmp_path: Path) -> None:
    from her2scope.cli._options import overlay

    base = TilingConfig(tile_px=256)
    options = {"tile_px": "--tile-px", "max_white": "--max-white"}
    text = _error(overlay, base, {"tile_px": 4, "max_white": None}, options)
    assert text == "--tile-px 4: must be within [8, 8192] (output pixels per side)"
    assert overlay(base, {"tile_px": None, "max_white": 0.3}, options) == TilingConfig(
        tile_px=256, max_white=0.3
    )


def test_help_defaults_come_from_the_sections() -> None:
    """Each tile option that sets a tiling setting shows that setting's default, read lazily."""
    import typer.models

    from her2scope._configbase import show
    from her2scope.cli import tile as tile_cli
    from her2scope.config import to_dict

    defaults = to_dict(TilingConfig())
    import inspect

    params = inspect.signature(tile_cli.tile).parameters
    for field, option in tile_cli._OPTIONS.items():
        info = params[field].default
        assert isinstance(info, typer.models.OptionInfo) and info.default is None, option
        assert f"{info.show_default}" == show(defaults[field]), option
    res = CliRunner().invoke(tile_cli_app(), ["tile", "--help"], env={"COLUMNS": "200"})
    assert "Side of a tile in output pixels (tiling.tile_px). [default: (512)]" in res.output


def tile_cli_app() -> Any:
    import typer

    from her2scope.cli import tile as tile_cli

    app = typer.Typer()
    tile_cli.register(app)
    app.command(name="noop")(lambda: None)  # two commands: `tile` stays a subcommand
    return app


def test_evaluate_split_choices_are_the_cohort_splits() -> None:
    from her2scope.cohort.splits import SPLITS
    from her2scope.evaluate.config import Split

    assert get_args(Split) == SPLITS


def test_docs_config_reference_is_current() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "config.md").read_text(encoding="utf-8")
    assert reference_markdown() in docs, "regenerate docs/config.md: see its last section"


def test_round_trip_of_every_section() -> None:
    cfg = apply_overrides(RunConfig(), ["train.models=[vgg16]", "cells.enabled=true"])
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


def test_a_section_with_every_key_commented_out_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "study.yaml"
    path.write_text("train:\n  # epochs: 3\ncohort:\n  test_centers: [B]\n")
    cfg = load_config(path)
    assert cfg.train == RunConfig().train and cfg.cohort.test_centers == ("B",)
    path.write_text("train: 3\n")
    assert "train=3: must be a mapping of settings" in _error(load_config, path)


def test_every_option_that_sets_a_setting_defaults_to_not_given() -> None:
    """An option whose help names a setting (``(tiling.tile_px)``) has no default of its own and
    shows the section's in --help: one source, so the two cannot drift apart."""
    import re

    import typer.main

    from her2scope._configbase import field_default, show
    from her2scope.cli import app
    from her2scope.config import SECTIONS

    def commands(group: Any, prefix: str = "") -> Any:
        for name, command in group.commands.items():
            yield f"{prefix}{name}", command
            if hasattr(command, "commands"):  # a command group: `stain fit`, `stain show`
                yield from commands(command, f"{prefix}{name} ")

    checked = []
    for name, command in commands(typer.main.get_command(app)):
        for param in command.params:
            found = re.search(r"\((\w+)\.(\w+)[);]", param.help or "")
            if not found or found.group(1) not in SECTIONS:
                continue
            section, key = found.groups()
            checked.append(f"{name} {param.opts[0]}")
            assert param.default is None, (name, param.opts)
            if isinstance(param.show_default, str):  # evaluate's: the run's own value, not shown
                assert f"{param.show_default}" == show(field_default(SECTIONS[section], key))
    assert len(checked) >= 20, checked  # tile, stain, evaluate and cells options are covered
