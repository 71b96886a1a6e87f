"""The compact bin layouts (``uncertainty_hist`` / ``calibration_hist`` + the ``uncertainty_bins`` /
``calibration_bins`` views): every number the metric suite returns reads back unchanged, a database of the one-row-per-bin layout migrates to the same rows, and a
histogram whose n_error is not n_fp + n_fn is refused (n_error is not stored)."""
import duckdb
import numpy as np
import pytest

from core import metrics as M
from core import store
from core.store.schema import COLUMNS

LEGACY = """CREATE TABLE uncertainty_bins (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR,
    measure VARCHAR, bin INTEGER, n_error BIGINT, n_correct BIGINT, n_fp BIGINT, n_fn BIGINT, n_tp BIGINT)"""
PATIENT = {"cohort": "c", "source": "/c/p", "shape": (14, 14, 14), "spacing": (1, 1, 1), "label_scheme": "brats2021",
           "split": "test", "has_gt": True}
COLS = ["run_id", "model", "method", "patient_id"] + COLUMNS["uncertainty_bins"]
CAL_COLS = ["run_id", "model", "method", "patient_id"] + COLUMNS["calibration_bins"]
LEGACY_CAL = """CREATE TABLE calibration_bins (
    run_id VARCHAR, model VARCHAR, method VARCHAR, patient_id VARCHAR, region VARCHAR, mask VARCHAR,
    bin INTEGER, n BIGINT, sum_prob DOUBLE, sum_true DOUBLE)"""


def _result(model, method, seed, samples=False):
    rng = np.random.default_rng(seed)
    truth = np.zeros((3, 14, 14, 14), bool)
    truth[0, 2:11, 3:11, 2:12] = True
    truth[1, 4:9, 4:9, 4:10] = True
    truth[2, 5:7, 5:8, 5:8] = True
    prob = np.clip(truth + rng.normal(0, 0.35, truth.shape), 0, 1).astype(np.float32)
    prob[0, 0, 0, :4] = [0.0, 1.0, 0.0, 1.0]  # saturated probabilities
    ent = rng.random(truth.shape).astype(np.float32)
    mi = (ent * rng.random(truth.shape)).astype(np.float32) if samples else None
    epkl = (ent * rng.random(truth.shape)).astype(np.float32) if samples else None
    ev = M.evaluate_patient(prob, ent, mi, truth, np.ones((14, 14, 14), bool), epkl=epkl, with_hd95=False)
    return {"model": model, "method": method, "status": "ok", "seconds": 1.0, "error": None, "maps": [],
            "evaluation": ev}


def _expected(results, run_id, patient_id, table="uncertainty_bins"):
    return sorted(tuple([run_id, r["model"], r["method"], patient_id] + [x.item() if hasattr(x, "item") else x
                                                                      for x in row])
                  for r in results for row in getattr(r["evaluation"], table))


def test_every_bin_reads_back_unchanged(tmp_path):
    con = store.connect(tmp_path / "r.duckdb")
    results = [_result("A", "deterministic", 0), _result("A", "mc_dropout", 1, True), _result("B", "tta", 2, True)]
    store.write_patient(con, "run1", "P1", results, PATIENT)
    got = con.execute(f"SELECT {', '.join(COLS)} FROM uncertainty_bins ORDER BY ALL").fetchall()
    want = _expected(results, "run1", "P1")
    assert len(want) > 100 and got == want
    # one stored row per histogram, with its bins in alternating order, and the view's types as before
    n_hist = len({(r["model"], r["method"]) + row[:3] for r in results for row in r["evaluation"].uncertainty_bins})
    assert con.execute("SELECT count(*) FROM uncertainty_hist").fetchone()[0] == n_hist
    orders = con.execute("""SELECT bins[1] < bins[len(bins)] FROM uncertainty_hist WHERE len(bins) > 1
                            ORDER BY run_id, model, method, patient_id, region, mask, measure""").fetchall()
    assert {o for (o,) in orders} == {True, False}
    types = dict(con.execute("SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'uncertainty_bins'").fetchall())
    assert types["bin"] == "INTEGER" and all(types[c] == "BIGINT" for c in ("n_error", "n_correct", "n_fp", "n_fn", "n_tp"))
    # a rewrite replaces, and the table counts count bins, not histograms
    store.write_patient(con, "run1", "P1", results, PATIENT)
    assert con.execute("SELECT count(*) FROM uncertainty_bins").fetchone()[0] == len(want)
    counts = store.table_counts(con).set_index("table")["rows"]
    assert counts["uncertainty_bins"] == len(want)
    # the calibration bins likewise (one stored row per (evaluation, region, mask), bins ascending)
    cal = con.execute(f"SELECT {', '.join(CAL_COLS)} FROM calibration_bins ORDER BY ALL").fetchall()
    assert len(cal) > 20 and cal == _expected(results, "run1", "P1", "calibration_bins")
    assert counts["calibration_bins"] == len(cal)
    assert all(b == sorted(b) for (b,) in con.execute("SELECT bins FROM calibration_hist").fetchall())


def test_stored_lists_do_not_depend_on_what_is_written_with_them(tmp_path):
    a, b = store.connect(tmp_path / "a.duckdb"), store.connect(tmp_path / "b.duckdb")
    r1, r2 = _result("A", "deterministic", 0), _result("A", "mc_dropout", 1, True)
    store.write_patient(a, "run1", "P1", [r1, r2], PATIENT)
    store.write_patient(b, "run1", "P1", [r2], PATIENT)
    store.write_patient(b, "run1", "P1", [r1], PATIENT)
    q = "SELECT * FROM uncertainty_hist ORDER BY run_id, model, method, patient_id, region, mask, measure"
    assert a.execute(q).fetchall() == b.execute(q).fetchall()


def test_legacy_one_row_per_bin_database_migrates_to_the_same_rows(tmp_path):
    path = tmp_path / "old.duckdb"
    results = [_result("A", "deterministic", 3), _result("A", "ensemble", 4, True)]
    rows = _expected(results, "run1", "P1") + _expected(results[:1], "run1", "P2")
    cal_rows = _expected(results, "run1", "P1", "calibration_bins")
    con = duckdb.connect(str(path))
    con.execute(LEGACY)
    con.execute(LEGACY_CAL)
    con.executemany(f"INSERT INTO uncertainty_bins VALUES ({', '.join('?' * len(COLS))})", rows)
    con.executemany(f"INSERT INTO calibration_bins VALUES ({', '.join('?' * len(CAL_COLS))})", cal_rows)
    con.close()
    ro = store.connect(path, read_only=True)  # a reader reads the legacy table as it is
    assert ro.execute("SELECT count(*) FROM uncertainty_bins").fetchone()[0] == len(rows)
    ro.close()
    con = store.connect(path)  # a writer migrates it
    kind = con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'uncertainty_bins'").fetchone()
    assert kind[0] == "VIEW"
    assert con.execute(f"SELECT {', '.join(COLS)} FROM uncertainty_bins ORDER BY ALL").fetchall() == sorted(rows)
    assert con.execute(f"SELECT {', '.join(CAL_COLS)} FROM calibration_bins ORDER BY ALL").fetchall() == sorted(cal_rows)
    con.close()
    con = store.connect(path)  # idempotent
    assert con.execute("SELECT count(*) FROM uncertainty_bins").fetchone()[0] == len(rows)


def test_n_error_that_is_not_fp_plus_fn_is_refused(tmp_path):
    con = store.connect(tmp_path / "r.duckdb")
    r = _result("A", "deterministic", 0)
    row = list(r["evaluation"].uncertainty_bins[0])
    row[4] += 1  # n_error
    r["evaluation"].uncertainty_bins[0] = tuple(row)
    with pytest.raises(ValueError, match="P1.*n_error != n_fp \\+ n_fn"):
        store.write_patient(con, "run1", "P1", [r], PATIENT)
    assert con.execute("SELECT count(*) FROM evaluations").fetchone()[0] == 0
