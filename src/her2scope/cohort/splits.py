"""Patient-level splits (train / val / test), the leakage check and the per-split table.

Modes (``CohortConfig.split_mode``):

- ``external`` (the study's design): test = every slide of the held-out centre(s)
  ``test_centers``; the other centres' patients are split into train and validation, stratified by
  label (``val_fraction`` of each class's patients, at least one when the class has two or more;
  when no class has two patients, ``val_fraction`` of all patients, unstratified).
- ``kfold``: stratified k-fold over patients; fold ``fold`` is the test set, and validation is
  drawn from the remaining patients as above.
- ``file``: the splits of a given ``splits.csv`` (columns ``slide_id, split``; other columns
  ignored), checked against the manifest.

Every mode assigns whole patients, and the result passes :func:`check_no_leakage`.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from her2scope._io import atomic_path
from her2scope.cohort.config import CohortConfig
from her2scope.errors import ConfigError, LeakageError, ManifestError

LOCO_MODE: Final = "leave_one_center_out"

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPLIT_COLUMNS: tuple[str, ...] = ("slide_id", "patient_id", "center", "label", "split")


def make_splits(manifest_df: pd.DataFrame, cfg: CohortConfig) -> pd.DataFrame:
    """Assign each slide to train/val/test by patient; columns :data:`SPLIT_COLUMNS`.

    Raises ``ConfigError`` when the configuration cannot be met (unknown test centre, too few
    patients, a fold out of range) and ``LeakageError`` if a given splits file mixes a patient.
    """
    missing = [c for c in ("slide_id", "patient_id", "center", "label") if c not in manifest_df]
    if missing:
        raise ConfigError(f"cannot split: slide table lacks column(s) {', '.join(missing)}")
    slides = manifest_df[["slide_id", "patient_id", "center", "label"]].copy()
    slides = slides.astype({"slide_id": str, "patient_id": str, "center": str, "label": str})
    if cfg.split_mode == "file":
        out = _from_file(slides, cfg)
    else:
        patients = _patient_table(slides)
        if cfg.split_mode == "external":
            split_of = _external(patients, cfg)
        elif cfg.split_mode == LOCO_MODE:
            split_of = loco_split_of(patients, cfg)
        elif cfg.split_mode == "kfold":
            split_of = _kfold(patients, cfg)
        else:
            raise ConfigError(
                f"cohort.split_mode '{cfg.split_mode}' is not one of external, kfold, file, leave_one_center_out"
            )
        out = slides.assign(split=slides["patient_id"].map(split_of))
    out = out[list(SPLIT_COLUMNS)].sort_values(["split", "patient_id", "slide_id"], kind="stable")
    out = out.reset_index(drop=True)
    check_no_leakage(out)
    return out


def _patient_table(slides: pd.DataFrame) -> pd.DataFrame:
    """One row per patient: patient_id, label, center (its first centre, sorted)."""
    g = slides.sort_values("patient_id").groupby("patient_id", sort=True)
    return pd.DataFrame(
        {
            "label": g["label"].first(),
            "center": g["center"].first(),
            "n_centers": g["center"].nunique(),
        }
    ).reset_index()


def _pick_val(patients: pd.DataFrame, fraction: float, seed: int) -> set[str]:
    """Stratified choice of validation patients: per class, round(fraction·n), ≥1 when n ≥ 2."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"cohort.val_fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return set()
    rng = np.random.default_rng(seed)
    chosen: set[str] = set()
    for _, group in patients.groupby("label", sort=True):
        ids = sorted(group["patient_id"])
        n = len(ids)
        k = 0 if n < 2 else min(n - 1, max(1, round(fraction * n)))
        order = rng.permutation(n)
        chosen.update(ids[j] for j in order[:k])
    if not chosen and len(patients) >= 2:
        # no class has two patients (tiny cohorts): validation cannot be stratified; take
        # round(fraction·n) patients (at least one) and let training report the missing classes
        ids = sorted(patients["patient_id"])
        k = min(len(ids) - 1, max(1, round(fraction * len(ids))))
        chosen.update(ids[j] for j in rng.permutation(len(ids))[:k])
    return chosen


def _external(patients: pd.DataFrame, cfg: CohortConfig) -> dict[str, str]:
    centres = sorted(patients["center"].unique())
    if not cfg.test_centers:
        raise ConfigError(
            "cohort.test_centers is empty; name the held-out centre(s) for the external split "
            f"(centres in this cohort: {', '.join(centres)}), e.g. cohort.test_centers=[{centres[-1]}]"
        )
    unknown = [c for c in cfg.test_centers if c not in centres]
    if unknown:
        raise ConfigError(
            f"cohort.test_centers {', '.join(unknown)} not in the cohort "
            f"(centres: {', '.join(centres)})"
        )
    multi = patients[patients["n_centers"] > 1]["patient_id"].tolist()
    if multi:
        raise ConfigError(
            f"patient(s) {', '.join(multi[:5])} have slides in more than one centre; "
            "an external-centre split needs each patient in one centre"
        )
    is_test = patients["center"].isin(cfg.test_centers)
    dev = patients[~is_test]
    if dev.empty:
        raise ConfigError("every patient is in a test centre; nothing is left to train on")
    val = _pick_val(dev, cfg.val_fraction, cfg.split_seed)
    split_of = {pid: "test" for pid in patients.loc[is_test, "patient_id"]}
    split_of.update({pid: ("val" if pid in val else "train") for pid in dev["patient_id"]})
    return split_of


def _kfold(patients: pd.DataFrame, cfg: CohortConfig) -> dict[str, str]:
    from sklearn.model_selection import StratifiedKFold

    n = len(patients)
    if cfg.n_folds < 2 or cfg.n_folds > n:
        raise ConfigError(
            f"cohort.n_folds must be between 2 and the {n} patients, got {cfg.n_folds}"
        )
    if not 0 <= cfg.fold < cfg.n_folds:
        raise ConfigError(f"cohort.fold must be in 0..{cfg.n_folds - 1}, got {cfg.fold}")
    y = patients["label"].to_numpy()
    min_class = int(pd.Series(y).value_counts().min())
    if min_class < cfg.n_folds:
        raise ConfigError(
            f"a class has only {min_class} patient(s), fewer than cohort.n_folds={cfg.n_folds}; "
            "lower n_folds"
        )
    skf = StratifiedKFold(n_splits=cfg.n_folds, shuffle=True, random_state=cfg.split_seed)
    folds = list(skf.split(np.zeros(n), y))
    test_idx = folds[cfg.fold][1]
    ids = patients["patient_id"].to_numpy()
    rest = patients.iloc[np.setdiff1d(np.arange(n), test_idx)]
    val = _pick_val(rest, cfg.val_fraction, cfg.split_seed)
    split_of = {pid: "test" for pid in ids[test_idx]}
    split_of.update({pid: ("val" if pid in val else "train") for pid in rest["patient_id"]})
    return split_of


def _from_file(slides: pd.DataFrame, cfg: CohortConfig) -> pd.DataFrame:
    if not cfg.splits_csv:
        raise ConfigError("cohort.split_mode=file needs cohort.splits_csv=<path to splits.csv>")
    given = read_splits(cfg.splits_csv)
    problems = []
    extra = sorted(set(given["slide_id"]) - set(slides["slide_id"]))
    if extra:
        problems.append(f"slide(s) not in the cohort: {', '.join(extra[:10])}")
    absent = sorted(set(slides["slide_id"]) - set(given["slide_id"]))
    if absent:
        problems.append(f"cohort slide(s) without a split: {', '.join(absent[:10])}")
    if problems:
        raise ManifestError(cfg.splits_csv, problems)
    return slides.merge(given[["slide_id", "split"]], on="slide_id", how="left")


def check_no_leakage(splits_df: pd.DataFrame) -> None:
    """Raise ``LeakageError`` naming every patient found in more than one split."""
    per_patient = splits_df.groupby("patient_id")["split"].unique()
    leaks = {pid: sorted(s) for pid, s in per_patient.items() if len(s) > 1}
    if leaks:
        detail = "; ".join(f"'{pid}' in {', '.join(s)}" for pid, s in sorted(leaks.items())[:10])
        raise LeakageError(
            f"{len(leaks)} patient(s) appear in more than one split: {detail}. "
            "All slides of a patient must be in the same split."
        )


def write_splits(splits_df: pd.DataFrame, path: str | Path) -> Path:
    """Write the splits table as CSV, atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        splits_df.to_csv(tmp, index=False)
    return path


def read_splits(path: str | Path) -> pd.DataFrame:
    """Read a splits CSV (needs ``slide_id, split``); checks split names and duplicates, then leakage
    when ``patient_id`` is present."""
    path = Path(path)
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise ManifestError(path, ["splits file not found"]) from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ManifestError(path, [f"not a readable CSV file ({exc})"]) from None
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in ("slide_id", "split") if c not in df.columns]
    if missing:
        raise ManifestError(path, [f"missing column(s) {', '.join(missing)}"])
    problems = []
    for i, (sid, split) in enumerate(zip(df["slide_id"], df["split"], strict=True)):
        if split.strip() not in SPLITS:
            problems.append(f"row {i + 2}: split '{split}' for slide '{sid}' is not train/val/test")
    dup = df["slide_id"][df["slide_id"].duplicated()].tolist()
    if dup:
        problems.append(f"slide_id(s) listed twice: {', '.join(dup[:10])}")
    if problems:
        raise ManifestError(path, problems)
    df["split"] = df["split"].str.strip()
    if "patient_id" in df.columns:
        check_no_leakage(df)
    return df


def split_table(
    splits_df: pd.DataFrame, tiles_df: pd.DataFrame | None = None, classes: tuple[str, ...] = ()
) -> pd.DataFrame:
    """Counts of patients, slides (and tiles) per split and class, with an ``all`` class row."""
    classes = classes or tuple(sorted(splits_df["label"].unique()))
    tile_counts = (
        tiles_df.groupby("slide_id").size() if tiles_df is not None else pd.Series(dtype=int)
    )
    rows = []
    for split in SPLITS:
        part = splits_df[splits_df["split"] == split]
        for cls in (*classes, "all"):
            sub = part if cls == "all" else part[part["label"] == cls]
            row = {
                "split": split,
                "class": cls,
                "patients": int(sub["patient_id"].nunique()),
                "slides": len(sub),
            }
            if tiles_df is not None:
                row["tiles"] = int(tile_counts.reindex(sub["slide_id"]).fillna(0).sum())
            rows.append(row)
    return pd.DataFrame(rows)


def format_split_table(table: pd.DataFrame) -> str:
    """Plain-text rendering of :func:`split_table` (one line per split, counts per class)."""
    cols = [c for c in ("patients", "slides", "tiles") if c in table.columns]
    classes = list(dict.fromkeys(table["class"]))
    header = f"{'split':<6}" + "".join(f"{c:>22}" for c in classes)
    lines = [header, f"{'':<6}" + "".join(f"{'/'.join(cols):>22}" for _ in classes)]
    for split in SPLITS:
        part = table[table["split"] == split].set_index("class")
        cells = ["/".join(str(int(part.loc[c, k])) for k in cols) for c in classes]
        lines.append(f"{split:<6}" + "".join(f"{cell:>22}" for cell in cells))
    return "\n".join(lines)


# Leave-one-centre-out (issue 11): the split of one fold; the folds themselves are run by
# her2scope.cohort.loco / engine.loco.
def loco_split_of(patients: pd.DataFrame, cfg: CohortConfig) -> dict[str, str]:
    """``make_splits`` for ``leave_one_center_out``: with one ``test_centers`` entry, that fold (an
    external split); with none, every fold is planned and checked and the first centre's returned
    (what ``validate_all`` needs; the runner trains each fold with :func:`fold_config`)."""
    if len(cfg.test_centers) > 1:
        raise ConfigError(
            f"cohort.split_mode=leave_one_center_out holds out one centre at a time; "
            f"cohort.test_centers={list(cfg.test_centers)} names several (leave it empty)"
        )
    if cfg.test_centers:
        return _external(patients, cfg)
    folds = [_external(patients, fold_config(cfg, c)) for c in centres_of(patients)]
    return folds[0]


def centres_of(slides: pd.DataFrame) -> list[str]:
    """The cohort's centres, sorted; at least two are needed to hold one out."""
    if "center" not in slides:
        raise ConfigError("leave-one-centre-out needs a 'center' column in the slide table")
    centres = sorted(slides["center"].astype(str).unique())
    if len(centres) < 2:
        raise ConfigError(
            f"leave-one-centre-out needs at least two centres; the cohort has {centres or 'none'}"
        )
    return centres


def fold_config(cfg: CohortConfig, centre: str) -> CohortConfig:
    """The cohort settings of the fold that holds out ``centre`` (an external split)."""
    return replace(cfg, split_mode=LOCO_MODE, test_centers=(str(centre),))
