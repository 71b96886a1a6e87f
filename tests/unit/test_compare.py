"""Row-for-row database comparison: equal databases are equal whatever their folder and run ids; a changed
number, a missing row or a missing table is found."""
import numpy as np

from core import store
from core.metrics.suite import evaluate_patient

PATIENT = {"cohort": "c", "source": "/c/p", "shape": (8, 8, 8), "spacing": (1, 1, 1), "label_scheme": "brats2021",
           "split": "test", "has_gt": True}


def _db(folder, run_id, scale=1.0, drop_last=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    truth = np.zeros((3, 8, 8, 8), bool)
    truth[:, 2:6, 2:6, 2:6] = True
    prob = (np.clip(truth + rng.normal(0, 0.3, truth.shape), 0, 1) * scale).astype(np.float32)
    ev = evaluate_patient(prob, prob, None, truth, np.ones((8, 8, 8), bool))
    if drop_last:
        ev.metrics = ev.metrics[:-1]
    db = folder / "r.duckdb"
    con = store.connect(db)
    store.upsert_run(con, run_id, str(folder / "cohort"), {"cohort": str(folder / "cohort")}, "x", "cpu")
    store.write_patient(con, run_id, "P1", [{"model": "A", "method": "det", "status": "ok", "seconds": 1.0,
                                             "evaluation": ev, "maps": [("prob", str(folder / "maps" / "p.nii.gz"))]}],
                        PATIENT)
    con.close()
    return db


def test_same_numbers_in_other_folders_with_other_run_ids(tmp_path):
    diffs = store.compare_databases(_db(tmp_path / "a", "run_a"), _db(tmp_path / "b", "run_b"))
    assert diffs and all(d.same for d in diffs), [d for d in diffs if not d.same]
    assert {d.table for d in diffs} >= {"metrics", "calibration_bins", "uncertainty_bins", "maps", "runs"}


def test_a_changed_number_and_a_missing_row_are_found(tmp_path):
    a = _db(tmp_path / "a", "run_a")
    changed = {d.table: d for d in store.compare_databases(a, _db(tmp_path / "b", "run_a", scale=0.999))}
    assert not changed["metrics"].same and changed["metrics"].max_rel_diff > 1e-6
    missing = {d.table: d for d in store.compare_databases(a, _db(tmp_path / "c", "run_a", drop_last=True))}
    assert missing["metrics"].rows_a == missing["metrics"].rows_b + 1 and not missing["metrics"].same
    assert missing["calibration_bins"].same
