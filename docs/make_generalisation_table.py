"""Measure the issue-11 choices at centres the model never saw (SYNTHETIC cohorts only).

For each trained run given as ``LABEL=RUN_DIR`` (trained with one centre held out, e.g.
``cohort.test_centers=[C]``), prints and writes (JSON) patient-level metrics with patient-bootstrap
CIs from :func:`her2scope.evaluate.run.evaluate_predictions` (no metric re-implemented here):

1. at the run's own held-out centre (its ``test`` split), uncalibrated;
2. at an external *site* cohort (``--site-tiles``, another unseen hard centre), with the site
   calibration of :mod:`her2scope.scoring.site`: none (k = 1), unsupervised by grade mix (the
   default of ``her2scope calibrate --unsupervised``) and by median DAB (``--unsupervised-method
   dab``; both assume a similar grade mix), and supervised with 1, 2 and 4 labelled calibration patients per
   class drawn ``--draws`` times; calibration patients are excluded from the test.

Usage (see docs/generalisation.md for the whole recipe)::

    python docs/make_generalisation_table.py --site-tiles SITE_TILES --centre C \
        --out table.json softmax=RUNS/soft_C/alexnet ordinal+assay=RUNS/ordaug_C/alexnet
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _patient_metrics(pred: pd.DataFrame, classes: list[str], n_boot: int) -> dict[str, Any]:
    from her2scope.evaluate.config import EvaluateConfig
    from her2scope.evaluate.run import evaluate_predictions

    res = evaluate_predictions(pred, classes, EvaluateConfig(n_boot=n_boot))
    lv = res["levels"]["patient"]
    out: dict[str, Any] = {"n_patients": res["n"]["patients"]}
    for name in ("macro_auc", "accuracy", "kappa_quadratic", *(f"auc_{c}" for c in classes)):
        out[name] = {"value": lv[name]["value"], "ci": lv[name].get("ci")}
    return out


def _fmt(m: dict[str, Any]) -> str:
    v, ci = m.get("value"), m.get("ci")
    if v is None:
        return "n/a"
    return f"{v:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v:.3f}"


def _pred_frame(tiles: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    df = tiles[["slide_id", "patient_id", "center", "label"]].copy().reset_index(drop=True)
    df["label"] = df["label"].astype(str)
    for i, c in enumerate(classes):
        df[f"prob_{c}"] = probs[:, i]
    return df


def run_one(
    label: str,
    run_dir: Path,
    site_tiles: Path,
    centre: str,
    draws: int,
    n_boot: int,
    grid_stride: int = 1,
) -> dict[str, Any]:
    from her2scope.engine.checkpoint import load_run_model
    from her2scope.errors import ConfigError
    from her2scope.evaluate.run import evaluate_run
    from her2scope.labels import get_scheme
    from her2scope.scoring import site as S
    from her2scope.stain import load_normalizers

    model, meta = load_run_model(run_dir, "best", device="cpu")
    classes = list(get_scheme(meta.config.cohort.label_scheme).classes)
    out: dict[str, Any] = {"label": label, "run": str(run_dir)}
    own = evaluate_run(run_dir)
    lv = own["levels"]["patient"]
    out["held_out"] = {
        "centre": sorted(
            pd.read_csv(run_dir / "splits.csv").query("split == 'test'")["center"].unique().tolist()
        ),
        "n_patients": own["n"]["patients"],
        **{
            k: {"value": lv[k]["value"], "ci": lv[k].get("ci")}
            for k in ("macro_auc", "accuracy", "kappa_quadratic")
        },
    }

    tiles = pd.read_parquet(site_tiles / "tiles.parquet")
    tiles = tiles[tiles["center"].astype(str) == centre].reset_index(drop=True)
    tiles["label"] = tiles["label"].astype(str)
    norms = (
        dict(load_normalizers(site_tiles, meta.config.stain))
        if meta.config.stain.mode != "none"
        else {}
    )
    x = S.read_tiles_uint8(tiles, meta.input_px, norms)
    grid = list(S.K_GRID)[::grid_stride]
    cache_file = Path(run_dir) / f"site_probs_{centre}_{len(tiles)}_{grid_stride}.npz"
    if cache_file.is_file():  # a re-run of this script reuses the (slow) grid of predictions
        saved = np.load(cache_file)
        cache = {k: saved[f"k{i}"] for i, k in enumerate(grid)}
    else:
        cache = {k: S.tile_probs_at(model, meta, x, k) for k in grid}
        np.savez(cache_file, **{f"k{i}": cache[k] for i, k in enumerate(grid)})

    # unsupervised (all site slides, labels unused)
    slide_ids = sorted(tiles["slide_id"].unique())
    site_stats = [S.slide_dab_statistic(x[(tiles["slide_id"] == s).to_numpy()]) for s in slide_ids]
    train_stats = S._training_dab_stats(meta, Path(run_dir))
    k_uns = S.unsupervised_dab_scale(site_stats, train_stats)
    slide_pos = tiles["slide_id"].map({s: i for i, s in enumerate(slide_ids)}).to_numpy()
    target = S.training_mean_grade(run_dir, classes)
    try:
        k_mix: float | None = S.fit_grade_mix_scale(
            lambda f: cache[f], slide_pos, len(slide_ids), target, grid=grid
        )[0]
    except ConfigError as e:  # a model that does not rank DAB: reported, not fitted
        k_mix, mix_error = None, str(e)
    site: dict[str, Any] = {
        "centre": centre,
        "none": _patient_metrics(
            _pred_frame(
                tiles, cache[1.0] if 1.0 in cache else S.tile_probs_at(model, meta, x, 1.0), classes
            ),
            classes,
            n_boot,
        ),
        "unsupervised_dab": {
            "k": k_uns,
            **_patient_metrics(
                _pred_frame(tiles, S.tile_probs_at(model, meta, x, k_uns), classes), classes, n_boot
            ),
        },
        "unsupervised": (
            {
                "k": k_mix,
                "train_mean_grade": target,
                **_patient_metrics(
                    _pred_frame(tiles, S.tile_probs_at(model, meta, x, k_mix), classes),
                    classes,
                    n_boot,
                ),
            }
            if k_mix is not None
            else {"k": None, "refused": mix_error}
        ),
    }

    # supervised: n calibration patients per class, drawn `draws` times; test on the others
    pat = tiles.drop_duplicates("patient_id")[["patient_id", "label"]]
    rng = np.random.default_rng(0)
    for n in (1, 2, 4):
        if pat.groupby("label").size().min() <= n:
            site[f"supervised_{n}"] = {"skipped": f"fewer than {n + 1} patients in a class"}
            continue
        accs, kappas, aucs, ks = [], [], [], []
        for _ in range(draws):
            cal = set()
            for _, g in pat.groupby("label"):
                cal |= set(rng.choice(g["patient_id"].to_numpy(), n, replace=False))
            is_cal = tiles["patient_id"].isin(cal).to_numpy()
            cal_tiles = tiles[is_cal]
            cal_slides = sorted(cal_tiles["slide_id"].unique())
            idx = cal_tiles["slide_id"].map({s: i for i, s in enumerate(cal_slides)}).to_numpy()
            labels = np.array(
                [
                    classes.index(cal_tiles.loc[cal_tiles["slide_id"] == s, "label"].iloc[0])
                    for s in cal_slides
                ]
            )
            k, _ = S.fit_dab_scale(lambda f, m=is_cal: cache[f][m], idx, labels, grid=grid)
            m = _patient_metrics(
                _pred_frame(tiles[~is_cal], cache[k][~is_cal], classes), classes, 1
            )
            ks.append(k)
            accs.append(m["accuracy"]["value"])
            kappas.append(m["kappa_quadratic"]["value"])
            aucs.append(m["macro_auc"]["value"])

        def _mean(v: list[Any]) -> float | None:
            v = [a for a in v if a is not None and math.isfinite(a)]
            return float(np.mean(v)) if v else None

        site[f"supervised_{n}"] = {
            "draws": draws,
            "k_median": float(np.median(ks)),
            "accuracy_mean": _mean(accs),
            "kappa_mean": _mean(kappas),
            "macro_auc_mean": _mean(aucs),
            "accuracy_range": [float(np.min(accs)), float(np.max(accs))],
        }
    out["site"] = site
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    ap.add_argument("--site-tiles", type=Path, required=True)
    ap.add_argument("--centre", default="C")
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--grid-stride", type=int, default=1, help="use every n-th factor of K_GRID")
    a = ap.parse_args()
    from her2scope._io import write_json

    rows = []
    for spec in a.runs:
        label, _, run = spec.partition("=")
        r = run_one(label, Path(run), a.site_tiles, a.centre, a.draws, a.n_boot, a.grid_stride)
        rows.append(r)
        h, s = r["held_out"], r["site"]
        print(
            f"{label}: held-out {h['centre']} macro-AUC {_fmt(h['macro_auc'])} acc {_fmt(h['accuracy'])} "
            f"κ {_fmt(h['kappa_quadratic'])} | site {a.centre}: none {_fmt(s['none']['macro_auc'])} "
            f"acc {_fmt(s['none']['accuracy'])}",
            flush=True,
        )
        for key in ("unsupervised", "unsupervised_dab"):
            u = s[key]
            if u["k"] is None:
                print(f"   {key}: refused: {u['refused']}", flush=True)
                continue
            print(
                f"   {key}: k={u['k']:.2f} {_fmt(u['macro_auc'])} acc {_fmt(u['accuracy'])} "
                f"κ {_fmt(u['kappa_quadratic'])}",
                flush=True,
            )
        for n in (1, 2, 4):
            print(f"   supervised {n}/class: {s[f'supervised_{n}']}", flush=True)
        write_json(a.out, {"synthetic": True, "rows": rows})


if __name__ == "__main__":
    main()
