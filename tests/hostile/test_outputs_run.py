"""Run safety: two runs into one folder, configs inside the output folder, existing cohorts,
absurd numbers, read-only folders and full disks, tampered intermediates, Ctrl-C, bugs."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.hostile.harness import (
    _quiet_env,
    assert_clean_error,
    assert_no_traceback,
    cli,
    fail_writes,
    read_only,
    snapshot,
    writable_copy,
)


def _one_slide(tiny_cohort: Path) -> Path:
    sid = pd.read_csv(tiny_cohort)["slide_id"].iloc[0]
    return tiny_cohort.parent / "slides" / f"{sid}.tif"


def _tile(tiny_cohort: Path, out: Path, *extra: str | Path) -> object:
    return cli("tile", _one_slide(tiny_cohort), "--out", out, "--target-mpp", "1.0", *extra)


# ---- locks -----------------------------------------------------------------------------------


def _hold_lock(folder: Path) -> subprocess.Popen[str]:
    """Another process that holds ``folder``'s lock until killed (a second her2scope run)."""
    code = (
        "import sys, time\n"
        "from her2scope._lock import output_lock\n"
        f"with output_lock({str(folder)!r}, 'her2scope run other.yaml'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env={**os.environ}
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_into_a_locked_folder_is_refused_and_a_killed_one_recovered(
    tiny_cohort: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14.3: two runs into one folder mixed their outputs silently."""
    out = tmp_path / "out"
    (out / "earlier").mkdir(parents=True)
    (out / "earlier" / "result.json").write_text("{}")
    holder = _hold_lock(out)
    try:
        before = snapshot(out, tiny_cohort.parent)
        r = _tile(tiny_cohort, out)
        assert_clean_error(
            r, "in use by another her2scope run", f"pid {holder.pid}", socket.gethostname()
        )
        assert "her2scope run other.yaml" in r.output
        before.assert_unchanged()
        # a run into a folder inside the locked one is refused too
        r = _tile(tiny_cohort, out / "earlier" / "tiles")
        assert_clean_error(r, "in use by another her2scope run", str(out))
    finally:
        holder.send_signal(signal.SIGKILL)  # kill -9: the lock file stays behind
        holder.wait()
    assert (out / ".her2scope.lock").is_file()
    with caplog.at_level("WARNING", logger="her2scope"):
        r = _tile(tiny_cohort, out)
    assert r.exit_code == 0, r
    assert "stale lock" in caplog.text and str(holder.pid) in caplog.text
    assert not (out / ".her2scope.lock").exists()  # released at the end
    assert (out / "tiles.parquet").is_file()


def test_run_refuses_when_a_model_folder_inside_is_locked(
    tiny_cohort: Path, tmp_path: Path
) -> None:
    out = tmp_path / "study"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"out_dir: {out}\ncohort:\n  manifest: {tiny_cohort}\n  test_centers: [B]\n")
    holder = _hold_lock(out / "runs" / "alexnet")
    try:
        before = snapshot(tmp_path)
        r = cli("run", cfg)
        assert_clean_error(r, "in use by another her2scope run", "runs/alexnet")
        before.assert_unchanged()
    finally:
        holder.kill()
        holder.wait()


# ---- configs and cohorts are never overwritten ------------------------------------------------


def _stop_after_config(monkeypatch: pytest.MonkeyPatch) -> None:
    import her2scope.pipeline as pipeline
    from her2scope.errors import Her2ScopeError

    def stop(*args: object, **kwargs: object) -> None:
        raise Her2ScopeError("stopped by the test before tiling")

    monkeypatch.setattr(pipeline, "_run_tiling", stop)


def test_run_leaves_a_config_inside_out_dir_as_it_is(
    tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14.5: `run` rewrote a config file inside out_dir (comments lost, values changed)."""
    out = tmp_path / "study"
    out.mkdir()
    cfg = out / "config.yaml"
    cfg.write_text(
        "# my study settings -- keep this comment\n"
        f"out_dir: {out}\ncohort:\n  manifest: {tiny_cohort}\n  test_centers: [B]\n"
    )
    _stop_after_config(monkeypatch)
    before = snapshot(cfg, tiny_cohort.parent)
    r = cli("run", cfg, "train.epochs=3")
    assert_clean_error(r, "stopped by the test")
    before.assert_unchanged()
    resolved = (out / "config.resolved.yaml").read_text()
    assert "epochs: 3" in resolved


def test_run_refuses_a_config_that_is_a_run_folders_own(tiny_cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    run_cfg = out / "runs" / "alexnet" / "config.yaml"
    run_cfg.parent.mkdir(parents=True)
    run_cfg.write_text(f"out_dir: {out}\ncohort:\n  manifest: {tiny_cohort}\n  test_centers: [B]\n")
    before = snapshot(out)
    r = cli("run", run_cfg)
    assert_clean_error(r, "run folder's own config.yaml", "copy it outside")
    before.assert_unchanged()


def test_synth_refuses_a_folder_that_holds_a_cohort(tiny_cohort: Path, tmp_path: Path) -> None:
    """Issue 14.5: `synth --out` replaced an existing cohort."""
    cohort = writable_copy(tiny_cohort.parent, tmp_path / "cohort")
    before = snapshot(cohort)
    r = cli("synth", "--out", cohort, "--patients", "3")
    assert_clean_error(r, "already holds a cohort", "manifest.csv", "nothing was changed")
    before.assert_unchanged()


def test_yaml_tags_never_run_code(tmp_path: Path) -> None:
    """Attack that held: a config with a Python object tag."""
    marker = tmp_path / "PWNED"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f'out_dir: !!python/object/apply:os.system ["touch {marker}"]\n')
    r = cli("run", cfg)
    assert r.exit_code == 2, r
    assert_no_traceback(r)
    assert str(cfg) in r.output
    assert not marker.exists()


# ---- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--target-mpp", "0.0001"], "--target-mpp 0.0001"),
        (["--target-mpp", "inf"], "--target-mpp"),
        (["--tile-px", "0"], "--tile-px 0"),
        (["--tile-px", "100000"], "--tile-px 100000"),
        (["--max-white", "1.5"], "--max-white 1.5"),
        (["--white-level", "300"], "--white-level 300"),
        (["--min-roi-cover", "0"], "--min-roi-cover 0"),
        (["--workers", "-3"], "--workers -3"),
        (["--mpp", "-1"], "--mpp -1"),
    ],
)
def test_tile_refuses_absurd_numbers_before_any_work(
    tiny_cohort: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "tiles"
    r = cli("tile", _one_slide(tiny_cohort), "--out", out, *args)
    assert_clean_error(r, needle)
    assert not out.exists()


def test_workers_are_bounded_by_cpus_and_slides(
    tiny_cohort: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 14.4: `--workers 100000` started >1,000 processes."""
    with caplog.at_level("WARNING", logger="her2scope"):
        r = _tile(tiny_cohort, tmp_path / "t", "--workers", "100000")
    assert r.exit_code == 0, r
    from her2scope.cli._options import available_cpus

    # by the CPUs only: tiling splits one slide's positions over the workers
    assert f"--workers 100000 lowered to {available_cpus()}" in caplog.text


@pytest.mark.parametrize(
    "args",
    [
        ["synth", "--patients", "0"],
        ["synth", "--centers", "27"],
        ["synth", "--slide-px", "10"],
        ["synth", "--workers", "-1"],
        ["demo", "--patients", "-5"],
        ["run", "cfg.yaml", "--workers", "-2"],
        ["train", "--device", "bogus"],
        ["train", "--device", "cuda:99"],
    ],
)
def test_other_commands_refuse_absurd_numbers(tmp_path: Path, args: list[str]) -> None:
    before = snapshot(tmp_path)
    r = cli(*args, "--out", tmp_path / "x") if args[0] not in ("run", "train") else cli(*args)
    assert_clean_error(r, args[-2])
    before.assert_unchanged()


def test_evaluate_refuses_absurd_numbers(hostile_run: Path) -> None:
    before = snapshot(hostile_run)
    for args, needle in [
        (["--n-boot", "0"], "--n-boot 0"),
        (["--percent", "200"], "--percent 200"),
        (["--batch-size", "0"], "--batch-size 0"),
    ]:
        assert_clean_error(cli("evaluate", hostile_run, *args), needle)
    before.assert_unchanged()


def test_explain_device_checks(hostile_run: Path) -> None:
    before = snapshot(hostile_run)
    assert_clean_error(cli("explain", hostile_run, "--device", "bogus"), "'bogus' is not a device")
    assert_clean_error(cli("explain", hostile_run, "--n", "0"), "--n 0")
    before.assert_unchanged()


# ---- environment: read-only folder, full disk --------------------------------------------------


def test_tile_into_a_read_only_folder_fails_before_the_work(
    tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import her2scope.tiling.extract as extract

    out = tmp_path / "ro"
    out.mkdir()
    read_only(monkeypatch, out)

    def never(*a: object, **k: object) -> None:
        raise AssertionError("tiling started although the output folder is read-only")

    monkeypatch.setattr(extract, "tile_entries", never)
    r = _tile(tiny_cohort, out)
    assert_clean_error(r, "read-only", str(out))
    assert list(out.iterdir()) == []


def test_tile_on_a_full_disk_names_it(
    tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14.7: tile crashed writing tiles.parquet on a full disk."""
    out = tmp_path / "full"
    fail_writes(monkeypatch, errno.ENOSPC)
    before = snapshot(tiny_cohort.parent)
    r = _tile(tiny_cohort, out)
    assert_clean_error(r, "disk full")
    before.assert_unchanged()
    assert not list(out.rglob("*.tmp*"))


def test_checkpoint_save_on_a_full_disk_names_it(
    tiny_cohort: Path, tiny_tiles: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14.7: `RuntimeError: [enforce fail at inline_container.cc:672]` on a full disk."""
    import torch

    from her2scope.config import apply_overrides, dump_config
    from tests.hostile.harness import HOSTILE_MODEL
    from tests.integration.tiny_pipeline import tiny_run_config

    cfg_path = tmp_path / "cfg.yaml"
    cfg = apply_overrides(tiny_run_config(tiny_cohort), [f"train.models=[{HOSTILE_MODEL!r}]"])
    dump_config(cfg, cfg_path)

    def full_disk(*args: object, **kwargs: object) -> None:
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4054"
        )

    monkeypatch.setattr(torch, "save", full_disk)
    before = snapshot(tiny_tiles)
    r = cli(
        "train", "--config", cfg_path, "--tiles", tiny_tiles, "--out", tmp_path / "runs",
        "--device", "cpu",
    )  # fmt: skip
    assert_clean_error(r, "disk full", "checkpoints")  # names the file being written
    before.assert_unchanged()
    assert not list((tmp_path / "runs").rglob("*.tmp*"))


# ---- tampered intermediates ---------------------------------------------------------------------


def test_corrupt_tiles_parquet_is_named_with_the_fix(tiny_tiles: Path, tmp_path: Path) -> None:
    """Issue 14.11: a tampered tiles.parquet gave a traceback."""
    tiles = writable_copy(tiny_tiles, tmp_path / "tiles")
    data = (tiles / "tiles.parquet").read_bytes()
    (tiles / "tiles.parquet").write_bytes(data[: len(data) // 2])
    before = snapshot(tiles)
    r = cli("stain", "fit", tiles)
    assert_clean_error(r, "tiles.parquet", "not a readable parquet", "re-run")
    before.assert_unchanged()


def test_nan_in_a_stain_sidecar_is_named_with_the_fix(tiny_tiles: Path, tmp_path: Path) -> None:
    tiles = writable_copy(tiny_tiles, tmp_path / "tiles")
    side_path = sorted((tiles / "slides").glob("*.json"))[0]
    side = json.loads(side_path.read_text())
    assert side["stain"]["stain_matrix"] is not None
    side["stain"]["stain_matrix"][0][0] = float("nan")
    side_path.write_text(json.dumps(side))  # json writes NaN, as a hand edit might
    sid = side["slide_id"]
    before = snapshot(tiles)
    r = cli("stain", "show", sid, "--tiles", tiles, "--out", tmp_path / "show.png")
    assert_clean_error(r, str(side_path), "non-finite", "stain fit")
    before.assert_unchanged()


# ---- Ctrl-C and bugs ------------------------------------------------------------------------------


def test_ctrl_c_exits_130_without_a_traceback_or_temp_files(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    # Ctrl-C reaches a foreground command whose SIGINT is at its default; a test run started in
    # the background (`make test &`, some CI runners) passes SIGINT down *ignored*, and Python
    # then starts with it ignored. Start her2scope as a terminal would, whatever ran the tests.
    as_in_a_terminal = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv = ['her2scope', *sys.argv[1:]]; runpy.run_module('her2scope', run_name='__main__')"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", as_in_a_terminal, "synth", "--out", str(out), "--patients", "40"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **_quiet_env()},
    )
    deadline = time.monotonic() + 60
    while not (out / ".her2scope.lock").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    assert not (out / ".her2scope.lock").exists()


def test_a_bug_is_reported_as_one_line_and_shown_with_debug(
    tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import her2scope.tiling.extract as extract

    def bug(*a: object, **k: object) -> None:
        raise IndexError("index 4 is out of bounds for axis 0 with size 4")

    monkeypatch.setattr(extract, "tile_entries", bug)
    r = _tile(tiny_cohort, tmp_path / "t")
    assert r.exit_code == 1, r
    assert "internal error" in r.output and "HER2SCOPE_DEBUG=1" in r.output
    assert_no_traceback(r)
    r = cli("tile", _one_slide(tiny_cohort), "--out", tmp_path / "t", env={"HER2SCOPE_DEBUG": "1"})
    assert "IndexError: index 4 is out of bounds" in r.output  # developers still get it


def test_pipeline_passes_the_current_heatmap_size_to_explain(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Issue 14.12: changing explain.heatmap_max_px re-ran explain with the checkpoint's value."""
    import her2scope.explain.run as explain_run_mod
    import her2scope.pipeline as pipeline
    from her2scope.config import RunConfig, apply_overrides

    seen: dict[str, object] = {}
    monkeypatch.setattr(explain_run_mod, "explain_run", lambda *a, **k: seen.update(k))
    cfg = apply_overrides(RunConfig(), ["explain.heatmap_max_px=777"])
    pipeline._run_explain(tmp_path, cfg)
    assert seen["heatmap_max_px"] == 777


@pytest.mark.parametrize("command", ["synth", "run"])
def test_synth_and_run_into_a_read_only_folder(
    command: str, tiny_cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 14.7: `OSError: [Errno 30]` tracebacks from synth and run."""
    out = tmp_path / "ro"
    out.mkdir()
    read_only(monkeypatch, out)
    if command == "synth":
        r = cli("synth", "--out", out, "--patients", "3")
    else:
        cfg = tmp_path / "cfg.yaml"
        cfg.write_text(f"out_dir: {out}\ncohort:\n  manifest: {tiny_cohort}\n  test_centers: [B]\n")
        r = cli("run", cfg)
    assert_clean_error(r, "read-only", str(out))
    assert list(out.iterdir()) == []


def test_stain_show_never_writes_over_a_slide(tiny_cohort: Path, tiny_tiles: Path) -> None:
    slide = _one_slide(tiny_cohort)
    before = snapshot(tiny_cohort.parent, tiny_tiles)
    r = cli("stain", "show", slide.stem, "--tiles", tiny_tiles, "--out", slide)
    assert_clean_error(r, "--out", ".png")
    before.assert_unchanged()
