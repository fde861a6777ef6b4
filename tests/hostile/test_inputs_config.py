"""Hostile inputs, part B: settings checked late or not at all (issue 14, item 9).

`run`, `demo`, `train` and `evaluate` must report every problem of the whole config and of the
manifest at once, exit 2, and do no work: no output folder filled, no cohort rendered, no input
or earlier output changed. SYNTHETIC cohort.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.hostile.harness import assert_clean_error, cli, snapshot, writable_copy

#: (override, what the message must name) — one case per setting named in the issue.
BAD_SETTINGS = [
    ("train.lr=-1", "train.lr=-1.0: must be within (0, 10]"),
    ("train.batch_size=0", "train.batch_size=0: must be within [1, 65536]"),
    ("train.grad_accum=0", "train.grad_accum=0: must be within [1, 4096]"),
    ("train.workers=-3", "train.workers=-3: must be within [0, 256]"),
    ("train.input_px=100000", "train.input_px=100000: must be within [32, 2048]"),
    ("train.epochs=0", "train.epochs=0: must be within [1, 100000]"),
    ("train.models=[alexnet,bogus]", "unknown model 'bogus'"),
    ("cohort.test_centers=[Z]", "cohort.test_centers Z not in the cohort (centres: A, B)"),
    ("cohort.val_fraction=2", "cohort.val_fraction=2.0: must be within (0, 1)"),
    ("evaluate.n_boot=0", "evaluate.n_boot=0: must be within [1, 1000000]"),
    ("evaluate.ci=1.5", "evaluate.ci=1.5: must be within (0, 1)"),
    (
        "evaluate.percent_threshold=200",
        "evaluate.percent_threshold=200.0: must be within [0, 100]",
    ),
]


@pytest.fixture(scope="module")
def cohort(tiny_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return writable_copy(tiny_cohort.parent, tmp_path_factory.mktemp("hostile_cfg") / "cohort")


@pytest.fixture()
def config(cohort: Path, tmp_path: Path) -> Path:
    cfg = tmp_path / "study.yaml"
    cfg.write_text(
        f"out_dir: {tmp_path / 'out'}\n"
        "cohort:\n"
        f"  manifest: {cohort / 'manifest.csv'}\n"
        "  test_centers: [B]\n"
        "train:\n"
        "  pretrained: false\n"
    )
    return cfg


@pytest.mark.parametrize(("override", "needle"), BAD_SETTINGS)
def test_run_refuses_each_bad_setting_before_any_work(
    cohort: Path, config: Path, tmp_path: Path, override: str, needle: str
) -> None:
    snap = snapshot(cohort, config)
    r = cli("run", config, override)
    assert_clean_error(r, needle, "nothing was run")
    assert not (tmp_path / "out").exists()
    snap.assert_unchanged()


def test_run_reports_every_problem_at_once(cohort: Path, config: Path, tmp_path: Path) -> None:
    text_file = tmp_path / "passwd"
    text_file.write_text("root:x:0:0:root:/root:/bin/bash\n")
    snap = snapshot(cohort, config, text_file)
    r = cli("run", config, *(o for o, _ in BAD_SETTINGS), f"train.pretrained={text_file}")
    needles = [n for _, n in BAD_SETTINGS]
    assert_clean_error(r, *needles, "not a PyTorch weights file", "13 problem(s)")
    assert not (tmp_path / "out").exists()
    snap.assert_unchanged()


def test_labels_outside_the_scheme_are_refused_before_tiling(
    cohort: Path, config: Path, tmp_path: Path
) -> None:
    snap = snapshot(cohort, config)
    m = cohort / "manifest_zero.csv"  # P01 scored 0, which the study scheme (1+/2+/3+) lacks
    m.write_text(
        (cohort / "manifest.csv").read_text().replace("P01,A,3+", "P01,A,0", 1), encoding="utf-8"
    )
    try:
        r = cli("run", config, f"cohort.manifest={m}")
        assert_clean_error(
            r, "row 2: label '0' is not a class of scheme 'study'", "cohort.label_scheme"
        )
        assert not (tmp_path / "out").exists()
    finally:
        m.unlink()
    snap.assert_unchanged()


def test_demo_refuses_bad_settings_before_rendering_the_cohort(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = cli("demo", "--out", out, "--patients", "3", "train.grad_accum=0", "evaluate.ci=1.5")
    assert_clean_error(r, "train.grad_accum=0: must be", "evaluate.ci=1.5: must be", "2 problem(s)")
    assert not (out / "cohort").exists()


def test_train_refuses_bad_settings(cohort: Path, config: Path, tmp_path: Path) -> None:
    snap = snapshot(cohort, config)
    r = cli("train", "--config", config, "train.batch_size=0", "train.lr=0")
    assert_clean_error(r, "train.batch_size=0: must be", "train.lr=0.0: must be", "2 problem(s)")
    assert not (tmp_path / "out").exists()
    snap.assert_unchanged()


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [("--n-boot", "0", "--n-boot 0"), ("--percent", "200", "percent")],
)
def test_evaluate_refuses_out_of_range_options_and_leaves_the_run_alone(
    hostile_run: Path, tmp_path: Path, option: str, value: str, needle: str
) -> None:
    run = writable_copy(hostile_run, tmp_path / "run")
    snap = snapshot(run)
    r = cli("evaluate", run, option, value)
    assert_clean_error(r, needle)
    snap.assert_unchanged()


def test_a_typo_in_the_config_file_is_named_with_the_key_meant(
    cohort: Path, config: Path, tmp_path: Path
) -> None:
    config.write_text(config.read_text() + "  epoch: 3\n")  # under `train:`, meant `epochs`
    snap = snapshot(cohort, config)
    r = cli("run", config, "stain.mode=fancy")
    assert_clean_error(
        r,
        f"config file '{config}'",
        "train.epoch: unknown config key; did you mean 'train.epochs'?",
        "stain.mode='fancy': not allowed; choose one of preserve_dab, standard, none",
        "2 problem(s)",
        "nothing was run",
    )
    assert not (tmp_path / "out").exists()
    snap.assert_unchanged()
