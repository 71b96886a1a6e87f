"""Derived tables (core/store/derived.py): every fast read gives exactly what the long tables give, and stale or
missing derived tables are never used."""
import shutil

import numpy as np
import pandas as pd
import pytest

from core import store
from core.store import derived


@pytest.fixture(scope="module")
def dbs(results_db, tmp_path_factory):
    """(fast, slow): the batch's database (derived tables built at the end of the batch) and a copy whose
    derived state is dropped, so every read there takes the long tables."""
    d = tmp_path_factory.mktemp("derived")
    fast, slow = d / "fast.duckdb", d / "slow.duckdb"
    shutil.copy(results_db, fast)
    shutil.copy(results_db, slow)
    con = store.connect(slow)
    con.execute("DROP TABLE derived_state")
    con.close()
    return fast, slow


def _run(db):
    con = store.connect(db, read_only=True)
    try:
        return con.execute("SELECT run_id FROM runs").fetchall()[0][0]
    finally:
        con.close()


def _both(dbs, fn, *args, **kwargs):
    out = []
    for db in dbs:
        con = store.connect(db, read_only=True)
        try:
            out.append(getattr(store, fn)(con, *args, **kwargs))
        finally:
            con.close()
    return out


def _same_frame(a: pd.DataFrame, b: pd.DataFrame):
    assert list(a.columns) == list(b.columns)
    assert len(a) == len(b)
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    for c in a.columns:
        if a[c].dtype.kind in "fiu":
            np.testing.assert_allclose(a[c].to_numpy(float), b[c].to_numpy(float), rtol=1e-12, atol=1e-9,
                                       equal_nan=True, err_msg=c)
        else:
            assert a[c].astype(str).tolist() == b[c].astype(str).tolist(), c


def test_batch_builds_valid_derived_tables(dbs):
    fast, slow = dbs
    run = _run(fast)
    for db, expect in ((fast, True), (slow, False)):
        con = store.connect(db, read_only=True)
        assert store.valid(con, run) is expect
        con.close()
    con = store.connect(fast, read_only=True)
    n_rows = con.execute("SELECT count(*) FROM patient_summary WHERE run_id = ?", [run]).fetchall()[0][0]
    n_ok = con.execute("SELECT count(*) FROM evaluations WHERE run_id = ? AND status = 'ok'", [run]).fetchall()[0][0]
    con.close()
    assert n_rows == n_ok * 3 * 2  # regions x masks


@pytest.mark.parametrize("mask", ["brain", "roi"])
def test_metric_wide_and_measures_equal_long_tables(dbs, mask):
    run = _run(dbs[0])
    a, b = _both(dbs, "metric_wide", run, store.WIDE_METRICS, mask=mask)
    assert len(a) > 0
    _same_frame(a, b)
    pids = sorted(set(a.patient_id))[:2]
    _same_frame(*_both(dbs, "metric_wide", run, ["dice", "ece", "hd95"], mask=mask, method="mc_dropout",
                       patient_ids=pids))
    _same_frame(*_both(dbs, "metric_wide", run, ["dice"], mask=mask, patient_ids=[]))
    model = a.model.iloc[0]
    for metric, mmask in [("mean_entropy", mask), ("mean_entropy", "pred"), ("mean_mi", "pred"), ("mean_epkl", mask)]:
        _same_frame(*_both(dbs, "patient_measure", run, model, "mc_dropout", metric=metric, region="WT", mask=mmask))
    x, y = _both(dbs, "patient_measure", run, model, "deterministic", metric="mean_mi", region="WT", mask=mask)
    assert x.empty and y.empty  # no samples, no MI: no rows (the sidebar falls back to entropy)


@pytest.mark.parametrize("mask", ["brain", "roi"])
def test_cohort_bin_totals_equal_long_sums(dbs, mask):
    run = _run(dbs[0])
    _same_frame(*_both(dbs, "summed_calibration_bins", run, None, mask))
    for measure in ("entropy", "mi"):
        _same_frame(*_both(dbs, "summed_uncertainty_bins", run, None, mask, measure))


def _canonical(g: dict) -> pd.DataFrame:
    c = g["combos"]
    df = pd.DataFrame({"g": g["g"], "model": c.model.to_numpy()[g["combo"]], "method": c.method.to_numpy()[g["combo"]],
                       "region": c.region.to_numpy()[g["combo"]], "bin": g["bin"]})
    for j, col in enumerate(g["columns"]):
        df[col] = g["counts"][:, j]
    return df.sort_values(["g", "model", "method", "region", "bin"]).reset_index(drop=True)


@pytest.mark.parametrize("kind", ["calibration", "uncertainty"])
def test_grouped_bins_from_lists_equal_long_tables(dbs, kind):
    run = _run(dbs[0])
    con = store.connect(dbs[0], read_only=True)
    pids = [r[0] for r in con.execute("SELECT DISTINCT patient_id FROM evaluations WHERE run_id = ? ORDER BY 1",
                                      [run]).fetchall()]
    con.close()
    groups = [i % 3 * 33 - (i == 0) for i in range(len(pids))]  # three groups and one -1 (NaN-measure patient)
    for methods in (None, ["mc_dropout"]):
        a, b = _both(dbs, "grouped_bins", run, kind, pids[:-1], groups[:-1], mask="roi", methods=methods)
        assert len(a["g"]) > 0 and a["columns"] == b["columns"]
        _same_frame(_canonical(a), _canonical(b))


def test_per_patient_calibration_reads_equal_long_tables(dbs):
    run = _run(dbs[0])
    a, _ = _both(dbs, "metric_wide", run, ["dice"], mask="brain")
    model = a.model.iloc[0]
    _same_frame(*_both(dbs, "patient_calibration_bins", run, model, "deterministic", "TC", mask="roi"))
    keys = ["model", "method", "region"]
    combos = a[keys].drop_duplicates().sort_values(keys).reset_index(drop=True).iloc[::2].reset_index(drop=True)
    pids = sorted(set(a.patient_id))
    x, y = _both(dbs, "calibration_bin_arrays", run, "brain", combos, pids[1:])
    fx = pd.DataFrame(x).sort_values(["patient", "combo", "bin"]).reset_index(drop=True)
    fy = pd.DataFrame(y).sort_values(["patient", "combo", "bin"]).reset_index(drop=True)
    _same_frame(fx.astype({"n": float}), fy.astype({"n": float}))


def test_stale_derived_tables_are_not_used(dbs, tmp_path):
    """A later write (a new or rerun evaluation) makes the derived tables stale: reads fall back to the long
    tables and still see the new numbers; rebuilding makes them valid again."""
    db = tmp_path / "stale.duckdb"
    shutil.copy(dbs[0], db)
    run = _run(db)
    con = store.connect(db)
    row = con.execute("SELECT model, method, patient_id FROM evaluations WHERE run_id = ? AND status = 'ok' LIMIT 1",
                      [run]).fetchall()[0]
    con.execute("UPDATE metrics SET value = 0.123 WHERE run_id = ? AND model = ? AND method = ? AND patient_id = ? "
                "AND metric = 'dice' AND region = 'WT'", [run, *row])
    con.execute("UPDATE evaluations SET finished_at = now() WHERE run_id = ? AND model = ? AND method = ? "
                "AND patient_id = ?", [run, *row])
    assert not store.valid(con, run)
    wide = store.metric_wide(con, run, ["dice"], patient_ids=[row[2]], method=row[1])
    assert wide[(wide.model == row[0]) & (wide.region == "WT")].dice.item() == pytest.approx(0.123)
    derived.build(con, run)
    assert store.valid(con, run)
    wide = store.metric_wide(con, run, ["dice"], patient_ids=[row[2]], method=row[1])
    assert wide[(wide.model == row[0]) & (wide.region == "WT")].dice.item() == pytest.approx(0.123)
    con.close()


def test_older_layout_is_rebuilt(dbs, tmp_path):
    """A patient_summary of another column layout (an older version) is dropped and rebuilt."""
    db = tmp_path / "old.duckdb"
    shutil.copy(dbs[0], db)
    run = _run(db)
    con = store.connect(db)
    con.execute("ALTER TABLE patient_summary DROP COLUMN capture_at_5pct")
    out = derived.build(con, run)
    assert out["rows"]["patient_summary"] > 0 and store.valid(con, run)
    cols = [r[0] for r in con.execute("SELECT column_name FROM information_schema.columns "
                                      "WHERE table_name = 'patient_summary'").fetchall()]
    assert "capture_at_5pct" in cols
    con.close()


def test_dense_calibration_and_reliability_equal_long_tables(dbs):
    """The reliability page's one-read dense bins (both paths) give the same curves, bands and histograms as
    the per-model long rows."""
    from core.analysis import summaries

    run = _run(dbs[0])
    fast, slow = _both(dbs, "calibration_dense", run, "mc_dropout", "WT", mask="roi")
    assert sorted(fast) == sorted(slow) and fast
    for model in fast:
        for k in ("n", "sum_prob", "sum_true"):
            np.testing.assert_allclose(fast[model][k], slow[model][k], rtol=1e-12)
        assert list(fast[model]["patient_id"]) == list(slow[model]["patient_id"])
        bins = _both(dbs, "patient_calibration_bins", run, model, "mc_dropout", "WT", mask="roi")[1]
        ref = summaries.reliability(bins)
        got = summaries.reliability_arrays(fast[model]["n"], fast[model]["sum_prob"], fast[model]["sum_true"])
        _same_frame(got[0], ref[0])
        _same_frame(got[1], ref[1])
        np.testing.assert_allclose(got[2], ref[2])


@pytest.mark.parametrize("mask", ["brain", "roi"])
def test_cohort_leaderboard_equals_bootstrapping_the_long_tables(dbs, mask):
    """The batch's leaderboard = core.stats.leaderboard over every patient read from the long tables."""
    from core.analysis import stats

    fast, slow = dbs
    run = _run(fast)
    con = store.connect(slow, read_only=True)
    methods = store.run_methods(con, run)
    models = store.run_models(con, run).model.tolist()
    wide = store.metric_wide(con, run, list(stats.MEAN_METRICS), mask=mask)
    ref = stats.leaderboard(wide, store.calibration_bins_subset(con, run, None, mask=mask))
    assert store.cohort_leaderboard(con, run, mask, methods, models) is None  # stale derived tables: not used
    con.close()
    con = store.connect(fast, read_only=True)
    got = store.cohort_leaderboard(con, run, mask, methods, models)
    one = store.cohort_leaderboard(con, run, mask, methods[:1], models[-1:])
    con.close()
    assert list(got.columns) == stats.LEADERBOARD_COLUMNS and len(got) == len(ref) == len(methods) * len(models) * 3
    pd.testing.assert_frame_equal(got, ref[stats.LEADERBOARD_COLUMNS], check_dtype=False, rtol=1e-6)
    assert set(one.method) == set(methods[:1]) and set(one.model) == set(models[-1:]) and len(one) == 3
