import math

import numpy as np
import pytest

from core import metrics as M
from core import store


def _result(model, method, seed):
    rng = np.random.default_rng(seed)
    truth = np.zeros((3, 12, 12, 12), bool)
    truth[:, 3:9, 3:9, 3:9] = True
    prob = np.clip(truth + rng.normal(0, 0.3, truth.shape), 0, 1).astype(np.float32)
    ent = rng.random(truth.shape).astype(np.float32)
    ev = M.evaluate_patient(prob, ent, ent / 2, truth, np.ones((12, 12, 12), bool))
    return {"model": model, "method": method, "status": "ok", "seconds": 1.0, "error": None,
            "maps": [("prob", "/x/prob.nii.gz")], "evaluation": ev}, prob, truth


PATIENT = {"cohort": "c", "source": "/c/p", "shape": (12, 12, 12), "spacing": (1, 1, 1), "label_scheme": "brats2021",
           "split": "test", "has_gt": True}


def test_round_trip_and_replace(tmp_path):
    con = store.connect(tmp_path / "r.duckdb")
    store.upsert_run(con, "run1", "c", {"a": 1}, "abc", "cpu")
    r, _, _ = _result("A", "mc_dropout", 0)
    store.write_patient(con, "run1", "P1", [r], PATIENT)
    n_metrics = con.execute("SELECT count(*) FROM metrics").fetchone()[0]
    assert n_metrics == len(r["evaluation"].metrics)
    store.write_patient(con, "run1", "P1", [r], PATIENT)  # rewrite: replaced, not duplicated
    assert con.execute("SELECT count(*) FROM metrics").fetchone()[0] == n_metrics
    assert con.execute("SELECT count(*) FROM patients").fetchone()[0] == 1
    assert store.done_evaluations(con, "run1") == {("A", "mc_dropout", "P1")}
    # NaN metrics are stored as NULL
    nulls = con.execute("SELECT count(*) FROM metrics WHERE value IS NULL").fetchone()[0]
    assert nulls == sum(1 for x in r["evaluation"].metrics if not math.isfinite(x[3]))


def test_failed_transaction_leaves_nothing(tmp_path):
    con = store.connect(tmp_path / "r.duckdb")
    r, _, _ = _result("A", "det", 0)
    r["evaluation"].calibration_bins = [("WT", "brain", "not-an-int", 1, 0.1, 0.0)]  # breaks the insert
    with pytest.raises(Exception):
        store.write_patient(con, "run1", "P1", [r], PATIENT)
    for t in ("evaluations", "metrics", "calibration_bins", "patients"):
        assert con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] == 0, t


def test_cohort_summary_from_bins_equals_pooled(tmp_path):
    con = store.connect(tmp_path / "r.duckdb")
    store.upsert_run(con, "run1", "c", {}, "abc", "cpu")
    probs, truths = [], []
    for i in range(4):
        r, p, t = _result("A", "det", i)
        store.write_patient(con, "run1", f"P{i}", [r], PATIENT)
        probs.append(p)
        truths.append(t)
    s = store.cohort_summary(con, "run1", ["P0", "P2", "P3"], mask="brain").set_index("region")
    sel = [0, 2, 3]
    for r, name in enumerate(["WT", "TC", "ET"]):
        pooled_p = np.concatenate([probs[i][r].ravel() for i in sel])
        pooled_t = np.concatenate([truths[i][r].ravel() for i in sel])
        ece = M.calibration_from_bins(*M.calibration_bins(pooled_p, pooled_t))["ece"]
        assert s.loc[name, "ece_dataset"] == pytest.approx(ece, abs=1e-12)
        assert s.loc[name, "n_patients"] == 3
        dices = [M.dice(M.nest_regions(probs[i] >= 0.5)[r], truths[i][r]) for i in sel]  # the label map's regions
        assert s.loc[name, "dice_mean"] == pytest.approx(np.mean(dices))


def test_parameters_not_pasted(tmp_path):
    con = store.connect(tmp_path / "r.duckdb")
    store.upsert_run(con, "run1", "c", {}, "abc", "cpu")
    r, _, _ = _result("A'; DROP TABLE metrics; --", "det", 0)
    evil = "P1' OR '1'='1"
    store.write_patient(con, "run1", evil, [r], PATIENT)
    df = store.patient_metrics(con, "run1", [evil], metrics=["dice"])
    assert len(df) == 3 and set(df.patient_id) == {evil}
    assert store.patient_metrics(con, "run1", ["P1"], metrics=["dice"]).empty
    assert con.execute("SELECT count(*) FROM metrics").fetchone()[0] > 0


def test_read_only_connection_requires_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        store.connect(tmp_path / "missing.duckdb", read_only=True)


def test_table_counts_on_a_database_without_the_newer_tables(tmp_path):
    import duckdb

    db = tmp_path / "old.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE runs (run_id VARCHAR)")
    con.execute("CREATE TABLE evaluations (run_id VARCHAR)")
    con.close()
    con = store.connect(db, read_only=True)
    counts = store.table_counts(con)
    con.close()
    assert list(counts.table) == ["runs", "evaluations"] and (counts.rows == 0).all()


def test_evaluation_columns_are_the_tables_columns():
    """The suite's typed result and the schema name the same columns (one layout, two layers)."""
    from core.metrics.suite import PatientEvaluation
    from core.store.schema import COLUMNS

    assert list(PatientEvaluation.METRIC_COLUMNS) == COLUMNS["metrics"]
    assert list(PatientEvaluation.CALIBRATION_COLUMNS) == COLUMNS["calibration_bins"]
    assert list(PatientEvaluation.UNCERTAINTY_COLUMNS) == COLUMNS["uncertainty_bins"]
