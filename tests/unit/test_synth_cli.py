"""``her2scope synth`` on the command line."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from her2scope.cli import main


def test_synth_command_writes_a_cohort(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cohort"
    argv = ["synth", "--out", str(out), "--patients", "4", "--centers", "2", "--seed", "1"]
    argv += ["--slide-px", "1024", "--labels", "0,1+,2+,3+", "--cells", "--masks"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "synthetic" in capsys.readouterr().out
    df = pd.read_csv(out / "manifest.csv", dtype=str)
    assert sorted(df.drop_duplicates("patient_id")["label"]) == ["0", "1+", "2+", "3+"]
    for sid in df["slide_id"]:
        assert (out / "cells" / f"{sid}.parquet").is_file()
        assert (out / "masks" / f"{sid}.png").is_file()


def test_synth_command_reports_bad_labels_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--out", str(tmp_path / "x"), "--labels", "1+,5+"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "label '5+'" in err and "0, 1+, 2+ or 3+" in err
    assert "Traceback" not in err
    assert not (tmp_path / "x").exists()
