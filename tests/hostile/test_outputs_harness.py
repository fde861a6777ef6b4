"""The harness itself: its checks must be able to fail (a check that cannot fail is a defect)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from her2scope._io import write_text
from tests.hostile.harness import (
    CliResult,
    assert_clean_error,
    cli,
    fail_writes,
    snapshot,
)


def test_snapshot_sees_a_changed_a_vanished_and_a_new_file(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    snap = snapshot(tmp_path)
    snap.assert_unchanged()
    (tmp_path / "a.txt").write_text("A")
    (tmp_path / "b.txt").unlink()
    (tmp_path / "c.txt").write_text("c")
    assert sorted(d.split(":")[0] for d in snap.changes()) == ["appeared", "changed", "vanished"]
    assert sorted(d.split(":")[0] for d in snap.changes(allow_new=True)) == [
        "changed",
        "vanished",
    ]


def test_assert_clean_error_catches_a_traceback_and_a_wrong_code() -> None:
    tb = CliResult(("x",), 2, "", "Traceback (most recent call last):\n  IndexError: 4\n")
    with pytest.raises(AssertionError, match="raw Python reason"):
        assert_clean_error(tb)
    with pytest.raises(AssertionError, match="expected exit 2"):
        assert_clean_error(CliResult(("x",), 0, "fine", ""))
    with pytest.raises(AssertionError, match="does not name"):
        assert_clean_error(CliResult(("x",), 2, "error: something", ""), "manifest")


def test_cli_reports_an_unknown_option_with_exit_2() -> None:
    r = cli("tile", "--no-such-option")
    assert_clean_error(r, "no-such-option")


def test_fail_writes_makes_atomic_writes_fail_and_leaves_no_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fail_writes(monkeypatch, errno.ENOSPC)
    with pytest.raises(OSError) as info:
        write_text(tmp_path / "x.txt", "hello")
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
