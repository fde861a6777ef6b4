"""``compare`` of leave-one-centre-out folds: disjoint test sets, one row each, no pairing."""

from __future__ import annotations

from pathlib import Path

from her2scope.evaluate.config import EvaluateConfig
from tests.integration.fake_runs import _fake_run, _predictions


def test_compare_lists_disjoint_folds_one_row_each(tmp_path: Path) -> None:
    from her2scope.evaluate.compare import compare_runs

    cfg = EvaluateConfig(n_boot=100, seed=0)
    labels = ["1+", "2+", "3+"] * 2
    runs = []
    for i, centre in enumerate("ABC"):
        pred = _predictions(labels, 2, sharp=2.0, seed=i)
        pred["patient_id"] = centre + pred["patient_id"]  # each fold tests its own patients
        pred["slide_id"] = centre + pred["slide_id"]
        pred["center"] = centre
        runs.append(_fake_run(tmp_path / f"alexnet_heldout_{centre}", pred, "alexnet", cfg))
    table = compare_runs(runs, tmp_path / "cmp")
    assert list(table["model"]) == [f"alexnet_heldout_{c}" for c in "ABC"]
    assert "delta_macro_auc_vs_best" not in table.columns
    assert all("[" in v for v in table["macro_auc"])  # each row keeps its own bootstrap CI
    assert "share no patients" in (tmp_path / "cmp" / "comparison.md").read_text()
