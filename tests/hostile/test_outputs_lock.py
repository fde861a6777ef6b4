"""The output-folder lock's rules for locks it did not write itself (issue 14.3)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from her2scope._lock import LOCK_NAME, _proc_start, output_lock
from her2scope.errors import OutputError


def _lock(folder: Path, **fields: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    info = {
        "pid": os.getppid(),
        "host": socket.gethostname(),
        "started_utc": "2026-01-01T00:00:00+00:00",
        "command": "her2scope run other.yaml",
        "pid_start": _proc_start(os.getppid()),
        **fields,
    }
    p = folder / LOCK_NAME
    p.write_text(json.dumps(info))
    return p


def test_a_live_process_holds_the_folder(tmp_path: Path) -> None:
    lock = _lock(tmp_path)
    with pytest.raises(OutputError, match=rf"pid {os.getppid()} on host"), output_lock(tmp_path):
        pass
    assert lock.is_file()  # somebody else's lock is never removed


def test_a_reused_pid_is_not_a_live_run(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The pid is alive but belongs to a process started after the lock was written."""
    if _proc_start(os.getppid()) is None:
        pytest.skip("no /proc here: process start times unknown")
    _lock(tmp_path, pid_start="1")
    with caplog.at_level("WARNING", logger="her2scope"), output_lock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_lock_from_another_host_is_never_presumed_stale(tmp_path: Path) -> None:
    _lock(tmp_path, host="some-other-node", pid=999_999_999)
    with pytest.raises(OutputError, match="some-other-node.*delete"), output_lock(tmp_path):
        pass


def test_an_unreadable_lock_is_not_overridden(tmp_path: Path) -> None:
    (tmp_path / LOCK_NAME).write_text("{not json")
    with pytest.raises(OutputError, match="unreadable lock file"), output_lock(tmp_path):
        pass


def test_re_entrant_in_one_process_and_released_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), output_lock(tmp_path):
        with output_lock(tmp_path), output_lock(tmp_path / "runs" / "alexnet"):
            assert (tmp_path / LOCK_NAME).is_file()
            assert (tmp_path / "runs" / "alexnet" / LOCK_NAME).is_file()
        assert (tmp_path / LOCK_NAME).is_file()  # the outer hold is still there
        raise RuntimeError("boom")
    assert not list(tmp_path.rglob(LOCK_NAME))


def test_a_file_in_the_way_of_the_folder(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("a file, not a folder")
    with pytest.raises(OutputError, match="not a folder|is a file"), output_lock(tmp_path / "out"):
        pass


def test_orphans_cleaned_down_to_the_pipelines_depth_and_only_ours(tmp_path: Path) -> None:
    """Issue 14.11: a 432 MB `.last.*.tmp.pt` stayed behind after kill -9."""
    ckpt = tmp_path / "runs" / "alexnet" / "checkpoints"
    ckpt.mkdir(parents=True)
    orphan = ckpt / ".last.x7_k2mq9.tmp.pt"
    orphan.write_bytes(b"half a checkpoint")
    deep = tmp_path / "a" / "b" / "c" / "d" / "e"
    deep.mkdir(parents=True)
    (deep / ".x.abcdefgh.tmp.png").write_bytes(b"")
    mine = [ckpt / "last.tmp.pt", ckpt / ".last.tmp.pt", ckpt / ".last.ABCDEFGH.tmp.pt"]
    for p in mine:
        p.write_text("user file")
    with output_lock(tmp_path):
        pass
    assert not orphan.exists()
    assert (deep / ".x.abcdefgh.tmp.png").exists()  # below the depth the pipeline writes
    assert all(p.read_text() == "user file" for p in mine)
    with output_lock(tmp_path / "a", clean_depth=0):
        pass
    assert (deep / ".x.abcdefgh.tmp.png").exists()
