"""Every problem of every config section and of the manifest, at once, before any work."""

from __future__ import annotations

from pathlib import Path

import pytest

from her2scope.config import RunConfig, apply_overrides, config_problems, load_config, validate_all
from her2scope.errors import ConfigError

HEADER = "slide_id,patient_id,center,label,slide_path\n"


def _cohort(tmp_path: Path, rows: str = "s1,p1,A,1+,a.tif\ns2,p2,B,3+,a.tif\n") -> Path:
    (tmp_path / "a.tif").write_bytes(b"x")
    m = tmp_path / "manifest.csv"
    m.write_text(HEADER + rows)
    return m


def _cfg(manifest: Path, *overrides: str) -> RunConfig:
    return apply_overrides(
        RunConfig(),
        [f"cohort.manifest={manifest}", "cohort.test_centers=[B]", *overrides],
    )


def _lines(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    text = str(exc.value)
    assert "nothing was run" in text
    return [line[4:] for line in text.splitlines() if line.startswith("  - ")]


def _problems(cfg: RunConfig, check_manifest: bool = True) -> list[str]:
    """The problems validate_all finds in a (valid) config."""
    with pytest.raises(ConfigError) as exc:
        validate_all(cfg, check_manifest=check_manifest)
    return _lines(exc)


def _load_problems(manifest: Path, *overrides: str, check_manifest: bool = True) -> list[str]:
    """Every problem of a config file with overrides, as `her2scope run` reports them."""
    config = manifest.parent / "study.yaml"
    config.write_text(f"cohort:\n  manifest: {manifest}\n  test_centers: [B]\n")
    with pytest.raises(ConfigError) as exc:
        load_config(config, list(overrides), validate=True, check_manifest=check_manifest)
    assert f"config file '{config}'" in str(exc.value)  # the file is named
    return _lines(exc)


def test_a_valid_config_and_manifest_pass(tmp_path: Path) -> None:
    assert validate_all(_cfg(_cohort(tmp_path))) is None
    assert config_problems(RunConfig()) == [
        "cohort.test_centers is empty; the external split needs the held-out centre(s), "
        "e.g. cohort.test_centers=[B]"
    ]


def test_every_problem_of_the_issue_is_reported_at_once(tmp_path: Path) -> None:
    weights_dir = tmp_path / "w"
    weights_dir.mkdir()
    passwd = weights_dir / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    problems = _load_problems(
        _cohort(tmp_path),
        "train.lr=-1",
        "train.batch_size=0",
        "train.grad_accum=0",
        "train.workers=-3",
        "train.input_px=100000",
        "train.epochs=0",
        "train.models=[alexnet,bogus]",
        "cohort.val_fraction=2",
        f"train.pretrained={passwd}",
        "evaluate.n_boot=0",
        "evaluate.ci=1.5",
        "evaluate.percent_threshold=200",
        "cohort.test_centers=[Z]",
    )
    expected_starts = [
        "cohort.val_fraction=2.0: must be within (0, 1)",
        "train.models: unknown model 'bogus'; choose from alexnet, vgg16",
        f"train.pretrained='{passwd}': not a PyTorch weights file",
        "train.input_px=100000: must be within [32, 2048]",
        "train.epochs=0: must be within [1, 100000]",
        "train.batch_size=0: must be within [1, 65536]",
        "train.lr=-1.0: must be within (0, 10]",
        "train.grad_accum=0: must be within [1, 4096]",
        "train.workers=-3: must be within [0, 256]",
        "evaluate.percent_threshold=200.0: must be within [0, 100]",
        "evaluate.n_boot=0: must be within [1, 1000000]",
        "evaluate.ci=1.5: must be within (0, 1)",
        f"splits of manifest '{tmp_path / 'manifest.csv'}': cohort.test_centers Z not in the "
        "cohort (centres: A, B)",
    ]
    assert len(problems) == len(expected_starts), problems
    for got, want in zip(problems, expected_starts, strict=True):
        assert got.startswith(want), (got, want)


def test_manifest_problems_join_the_config_problems(tmp_path: Path) -> None:
    m = _cohort(tmp_path, "s1,p1,A,4+,a.tif\ns2,p2,B,3+,missing.tif\n")
    problems = _load_problems(m, "explain.n_tiles=0")
    assert (
        problems[0]
        == "explain.n_tiles=0: must be within [1, 1000] (tiles per class in the gallery)"
    )
    assert problems[1].startswith(f"manifest '{m}': row 2: label '4+' is not a class")
    assert problems[2].startswith(f"manifest '{m}': row 3: slide_path 'missing.tif' not found")
    # the label scheme is checked against the manifest's labels
    ok = _cohort(tmp_path, "s1,p1,A,0,a.tif\ns2,p2,B,3+,a.tif\n")
    assert _problems(_cfg(ok))[0].endswith("fix the label or choose another cohort.label_scheme")
    assert validate_all(_cfg(ok, "cohort.label_scheme=full")) is None


def test_config_only_check_skips_the_manifest(tmp_path: Path) -> None:
    missing = tmp_path / "not_yet.csv"
    assert _load_problems(missing, "evaluate.ci=1", check_manifest=False) == [
        "evaluate.ci=1.0: must be within (0, 1) (confidence level of the intervals, e.g. 0.95)"
    ]
    assert validate_all(_cfg(missing), check_manifest=False) is None
    assert _problems(_cfg(missing))[0].startswith(f"cohort.manifest '{missing}' not found")


def test_pretrained_accepts_switches_and_real_weight_files(tmp_path: Path) -> None:
    m = _cohort(tmp_path)
    for value in ("true", "false", "auto"):
        assert validate_all(_cfg(m, f"train.pretrained={value}")) is None
    zipped = tmp_path / "alexnet.pth"
    zipped.write_bytes(b"PK\x03\x04" + b"\x00" * 60)  # torch.save's zip format
    legacy = tmp_path / "old.pt"
    legacy.write_bytes(b"\x80\x02" + b"\x00" * 60)  # torch.save's legacy pickle format
    for path in (zipped, legacy):
        assert validate_all(_cfg(m, f"train.pretrained={path}")) is None
    missing = _problems(_cfg(m, f"train.pretrained={tmp_path / 'nope.pth'}"))
    assert missing == [
        f"train.pretrained='{tmp_path / 'nope.pth'}': no such weights file; give true, false, "
        "auto or the path of a .pth file"
    ]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("tiling.tile_px=4", "tiling.tile_px=4: must be within [8, 8192]"),
        ("tiling.max_white=1.5", "tiling.max_white=1.5: must be within [0, 1]"),
        ("tiling.min_roi_cover=0", "tiling.min_roi_cover=0.0: must be within (0, 1]"),
        ("tiling.target_mpp=0.0001", "tiling.target_mpp=0.0001: must be within [0.05, 1000]"),
        ("stain.fit_tiles=0", "stain.fit_tiles=0: must be within [1, 100000]"),
        ("stain.reference=/nope.json", "stain.reference='/nope.json': file not found"),
        ("train.label_smoothing=1", "train.label_smoothing=1.0: must be within [0, 1)"),
        ("train.early_stop_patience=0", "train.early_stop_patience=0: must be >= 1"),
        ("train.max_tiles_per_slide=0", "train.max_tiles_per_slide=0: must be >= 1"),
        ("train.assay_dab_range=[1.5,0.3]", "train.assay_dab_range=[1.5, 0.3]: give two"),
        ("train.zoom_range=[0,2]", "train.zoom_range=[0.0, 2.0]: give two positive factors"),
        ("train.zoom_range=[1]", "train.zoom_range=[1.0]: give two positive factors"),
        ("train.models=[]", "train.models is empty"),
        ("train.models=['timm:']", "train.models: 'timm:' needs a timm model name"),
        (
            "evaluate.split=testing",
            "evaluate.split='testing': not allowed; choose one of train, val, test",
        ),
        ("evaluate.ece_bins=0", "evaluate.ece_bins=0: must be within [1, 1000]"),
        ("evaluate.reflex_uncertainty=2", "evaluate.reflex_uncertainty=2.0: must be within"),
        ("explain.heatmap_max_px=10", "explain.heatmap_max_px=10: must be within [64, 16384]"),
        ("cohort.split_mode=file", "cohort.split_mode='file' needs cohort.splits_csv"),
        ("seed=-1", "seed=-1: must be within [0, 4294967295]"),
        ("out_dir=''", "out_dir is empty"),
    ],
)
def test_each_section_checks_its_own_ranges(tmp_path: Path, override: str, message: str) -> None:
    problems = _load_problems(tmp_path / "m.csv", override, check_manifest=False)
    assert len(problems) == 1 and problems[0].startswith(message), problems


def test_kfold_and_inception_rules(tmp_path: Path) -> None:
    m = tmp_path / "m.csv"
    assert _load_problems(
        m, "cohort.split_mode=kfold", "cohort.n_folds=1", "cohort.fold=-1", check_manifest=False
    ) == [
        "cohort.n_folds=1: must be >= 2 (kfold split: at least two folds)",
        "cohort.fold=-1: must be >= 0 (kfold split: the test fold, from 0)",
    ]
    assert _load_problems(
        m, "cohort.split_mode=kfold", "cohort.n_folds=3", "cohort.fold=3", check_manifest=False
    ) == ["cohort.fold must be in 0..2 (one of cohort.n_folds=3 folds); got cohort.fold=3"]
    cfg = _cfg(m, "train.models=[inception_v3]", "train.input_px=64")
    assert config_problems(cfg) == ["train.input_px=64: model 'inception_v3' needs at least 75"]


def test_nan_and_infinity_are_out_of_range(tmp_path: Path) -> None:
    problems = _load_problems(
        tmp_path / "m.csv", "tiling.max_white=.nan", "train.lr=.inf", check_manifest=False
    )
    assert problems == [
        "tiling.max_white=nan: must be within [0, 1] (drop a tile whose white fraction is above "
        "this)",
        "train.lr=inf: must be within (0, 10] (the learning rate)",
    ]
