"""Manifest validation: labels per scheme, every problem reported at once with row numbers."""

from __future__ import annotations

from pathlib import Path

import pytest

from her2scope.cohort import load_manifest
from her2scope.errors import ManifestError


def _write(folder: Path, text: str, files: tuple[str, ...] = ()) -> Path:
    for name in files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    path = folder / "manifest.csv"
    path.write_text(text, encoding="utf-8")
    return path


HEADER = "slide_id,patient_id,center,label,slide_path\n"


def test_valid_manifest_labels_and_paths(tmp_path: Path) -> None:
    m = _write(
        tmp_path,
        HEADER
        + "s1,p1,A,HER2 2+,slides/s1.tif\ns2,p1,A,2,slides/s2.tif\ns3,p2,B, 3+ ,slides/s3.tif\n"
        "s4,p3,B,1+,slides/s4.tif\n",
        ("slides/s1.tif", "slides/s2.tif", "slides/s3.tif", "slides/s4.tif"),
    )
    df = load_manifest(m)
    assert df["label"].tolist() == ["2+", "2+", "3+", "1+"]
    assert df["label_idx"].tolist() == [1, 1, 2, 0]
    assert df["label_raw"].tolist() == ["HER2 2+", "2", "3+", "1+"]
    assert df["slide_path"].tolist() == [
        str((tmp_path / f"slides/s{i}.tif").resolve()) for i in (1, 2, 3, 4)
    ]


def test_label_schemes(tmp_path: Path) -> None:
    m = _write(
        tmp_path,
        HEADER + "s1,p1,A,0,a.tif\ns2,p2,A,1+,a.tif\ns3,p3,A,2+,a.tif\ns4,p4,A,3+,a.tif\n",
        ("a.tif",),
    )
    full = load_manifest(m, scheme="full")
    assert full["label"].tolist() == ["0", "1+", "2+", "3+"]
    assert full["label_idx"].tolist() == [0, 1, 2, 3]
    low = load_manifest(m, scheme="her2low")
    assert low["label"].tolist() == ["0", "low", "low", "positive"]
    assert low["label_idx"].tolist() == [0, 1, 1, 2]
    with pytest.raises(ManifestError) as exc:
        load_manifest(m, scheme="study")  # the study has no HER2 0 class
    assert exc.value.problems == [
        "row 2: label '0' is not a class of scheme 'study' (1+ (1+), 2+ (2+), 3+ (3+)); fix the "
        "label or choose another cohort.label_scheme"
    ]


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    outside = tmp_path.parent / f"{tmp_path.name}_outside.tif"
    outside.write_bytes(b"x")
    folder = tmp_path / "cohort"
    folder.mkdir()
    m = _write(
        folder,
        HEADER
        + "s1,p1,A,2+,ok.tif\n"  # fine
        + "s2,p2,A,4+,ok.tif\n"  # unknown label
        + "s1,p3,A,1+,ok.tif\n"  # duplicate slide id
        + "s4,p4,A,1+,missing.tif\n"  # missing file
        + f"s5,p5,A,1+,../{outside.name}\n"  # escapes the folder
        + f"s6,p6,A,1+,{outside}\n"  # absolute, not allowed
        + "s7,p1,A,3+,ok.tif\n"  # p1 is 2+ on row 2
        + "s8,,A,1+,ok.tif\n",  # empty patient
        ("ok.tif",),
    )
    with pytest.raises(ManifestError) as exc:
        load_manifest(m)
    problems = exc.value.problems
    assert len(problems) == 7, problems
    assert problems[0] == (
        "row 3: label '4+' is not a class of scheme 'study' (1+ (1+), 2+ (2+), 3+ (3+)); fix the "
        "label or choose another cohort.label_scheme"
    )
    assert problems[1] == "row 4: duplicate slide_id 's1' (first on row 2)"
    assert problems[2].startswith("row 5: slide_path 'missing.tif' not found")
    assert problems[3].startswith(
        f"row 6: slide_path '../{outside.name}' leaves the manifest's folder"
    )
    assert problems[4].startswith(f"row 7: slide_path '{outside}' is absolute")
    assert problems[5] == "row 9: empty patient_id"
    assert problems[6].startswith(
        "patient 'p1' has slides with different labels (row 2 's1' = 2+, row 8 's7' = 3+)"
    )
    assert str(m) in str(exc.value)


def test_absolute_paths_allowed_explicitly(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.tif"
    outside.write_bytes(b"x")
    folder = tmp_path / "cohort"
    folder.mkdir()
    m = _write(folder, HEADER + f"s1,p1,A,1+,{outside}\ns2,p2,A,2+,../elsewhere.tif\n")
    df = load_manifest(m, allow_absolute=True)
    assert df["slide_path"].tolist() == [str(outside.resolve())] * 2


def test_missing_columns_and_unreadable(tmp_path: Path) -> None:
    m = _write(tmp_path, "slide_id,label\ns1,1+\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) patient_id, slide_path"):
        load_manifest(m)
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(tmp_path / "nope.csv")
    empty = _write(tmp_path, HEADER)
    with pytest.raises(ManifestError, match="no slides listed"):
        load_manifest(empty)


def test_missing_center_column_defaults(tmp_path: Path) -> None:
    m = _write(tmp_path, "slide_id,patient_id,label,slide_path\ns1,p1,1+,a.tif\n", ("a.tif",))
    assert load_manifest(m)["center"].tolist() == ["all"]


def test_synthetic_cohort_manifest_loads(tiny_cohort: Path) -> None:
    df = load_manifest(tiny_cohort)
    assert len(df) == 7
    assert df["patient_id"].nunique() == 6
    assert sorted(df["center"].unique()) == ["A", "B"]
    assert set(df["label"]) == {"1+", "2+", "3+"}


# ----------------------------------------------------------------------------------------------
# CSV shape as Excel and hand edits produce it
# ----------------------------------------------------------------------------------------------


def _problems(m: Path, **kw: object) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        load_manifest(m, **kw)  # type: ignore[arg-type]
    return exc.value.problems


def test_trailing_comma_on_every_row_is_ignored_with_a_note(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = ("a.tif", "b.tif")
    for header in (HEADER, HEADER.replace("\n", ",\n")):  # with and without one in the header
        m = _write(tmp_path, header + "s1,p1,A,2+,a.tif,\ns2,p2,B,3+,b.tif,\n", files)
        caplog.clear()
        df = load_manifest(m)
        assert df["slide_id"].tolist() == ["s1", "s2"]  # columns not shifted
        assert df["center"].tolist() == ["A", "B"] and df["label"].tolist() == ["2+", "3+"]
        assert list(df.columns[:5]) == ["slide_id", "patient_id", "center", "label", "slide_path"]
        assert "empty trailing field(s) ignored" in caplog.text


def test_extra_and_missing_fields_name_the_row(tmp_path: Path) -> None:
    m = _write(
        tmp_path,
        HEADER + "s1,p1,A,2+,a.tif\ns2,p2,A,2+,a.tif,x,y\ns3,p3,A,2+\n",
        ("a.tif",),
    )
    assert _problems(m) == [
        "row 3: 7 fields but the header has 5 (extra: 'x', 'y'); put double quotes around a "
        "value that contains a comma, or add the column to the header",
        "row 4: 4 fields but the header has 5 (slide_path missing); every row needs one field "
        "per column (leave a field empty with ',,')",
    ]


def test_control_characters_and_path_separators_in_slide_ids(tmp_path: Path) -> None:
    m = _write(
        tmp_path,
        HEADER
        + '"s\n1",p1,A,2+,a.tif\n'  # a quoted newline: one record over two lines
        + "s/2,p2,A,2+,a.tif\n"
        + "s\t3,p3,A,2+,a.tif\n"
        + "..,p4,A,2+,a.tif\n"
        + "S5,p5,A,2+,a.tif\ns5,p6,A,2+,a.tif\n",
        ("a.tif",),
    )
    assert _problems(m) == [
        "row 2: slide_id 's\\n1' contains a newline or another control character; remove it "
        "(a quoted value may not span lines)",
        "row 4: slide_id 's/2' contains /, not allowed in a file name (slide ids name the "
        "output files); use letters, digits, '-', '_' or '.'",
        "row 5: slide_id 's\\t3' contains a newline or another control character; remove it "
        "(a quoted value may not span lines)",
        "row 6: slide_id '..' starts with '.', which would make hidden output files",
        "row 8: slide_id 's5' differs from 'S5' (row 7) only in case; their output files would "
        "collide on macOS and Windows",
    ]


def test_empty_roi_path_is_accepted_with_a_note_naming_the_rows(tmp_path: Path) -> None:
    from her2scope.cohort.manifest import read_manifest

    m = _write(
        tmp_path,
        "slide_id,patient_id,center,label,slide_path,roi_path\n"
        "s1,p1,A,2+,a.tif,r.geojson\ns2,p2,A,3+,a.tif,\n",
        ("a.tif", "r.geojson"),
    )
    man = read_manifest(m)
    assert man.df["roi_path"].tolist() == [str((tmp_path / "r.geojson").resolve()), ""]
    assert man.notes == [
        "row(s) 3 ('s2') have an empty roi_path: these slides are tiled on their whole detected "
        "tissue, not on an ROI"
    ]
    assert man.lines == [2, 3]


def test_unreadable_csv_shapes_are_one_clear_problem(tmp_path: Path) -> None:
    m = tmp_path / "manifest.csv"
    m.write_text("slide_id;patient_id;label;slide_path\ns1;p1;2+;a.tif\n")
    assert _problems(m) == [
        "the header is separated by ';', not by commas; save the file as CSV (comma-separated)"
    ]
    m.write_bytes(HEADER.encode() + "s1,p1,A,2+,caf\xe9.tif\n".encode("latin-1"))
    assert _problems(m)[0].startswith("not UTF-8 text (byte 58); save it as 'CSV UTF-8'")
    m.write_bytes(b"\xef\xbb\xbf" + HEADER.encode() + b"s1,p1,A,2+,a.tif\n")  # BOM is fine
    (tmp_path / "a.tif").write_bytes(b"x")
    assert load_manifest(m)["slide_id"].tolist() == ["s1"]
    m.write_text("slide_id,,label,slide_path\ns1,p1,2+,a.tif\n")
    assert "row 1: column 2 of the header has no name" in _problems(m)
    assert _problems(tmp_path)[0] == "is a folder, not a CSV file"
