"""Cohort stage: manifest validation, patient-level splits and the leakage check (no torch)."""

from __future__ import annotations

from her2scope.cohort.manifest import load_manifest
from her2scope.cohort.splits import (
    check_no_leakage,
    format_split_table,
    make_splits,
    read_splits,
    split_table,
    write_splits,
)

__all__ = [
    "check_no_leakage",
    "format_split_table",
    "load_manifest",
    "make_splits",
    "read_splits",
    "split_table",
    "write_splits",
]
