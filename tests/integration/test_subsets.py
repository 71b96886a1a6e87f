"""The app's subset engine: quantile groups reproduce the quantile filter exactly, and the per-group bin sums
and cached per-patient tables give the same cohort numbers as querying the filtered patients directly."""
import numpy as np
import pandas as pd
import pytest

from core import store
from core.analysis.strata import filter_by_quantile, groups_kept, quantile_groups
from dashboard.selection import Selection, in_filter
from dashboard.subsets import patient_table, subset_bins, subset_summary


def _direct_filter(values: pd.DataFrame, lo: int, hi: int) -> list[str]:
    """The definition: lo-th and hi-th percentiles (linear interpolation), both ends inclusive."""
    v = values.value.to_numpy(float)
    if (lo, hi) == (0, 100):
        return values.patient_id.tolist()
    f = np.isfinite(v)
    if not f.any():
        return []
    a, b = np.quantile(v[f], [lo / 100, hi / 100])
    return values.patient_id[f & (v >= a) & (v <= b)].tolist()


@pytest.mark.parametrize("n,ties", [(7, False), (40, True), (1000, False), (1, False)])
def test_quantile_groups_reproduce_every_slider_position(n, ties):
    rng = np.random.default_rng(n)
    v = rng.gamma(2.0, 0.01, n)
    if ties:
        v = np.round(v, 2)  # many equal values, some exactly on a quantile
    v[::9] = np.nan
    values = pd.DataFrame({"patient_id": [f"P{i:04d}" for i in range(n)], "value": v})
    groups = quantile_groups(values)
    for lo in range(0, 101, 5):
        for hi in range(lo, 101, 5):
            kept = values.patient_id[groups_kept(groups, (lo, hi))].tolist()
            assert kept == _direct_filter(values, lo, hi), (lo, hi)
            assert filter_by_quantile(values, (lo, hi)) == kept


def _selection(db, q_range):
    con = store.connect(db, read_only=True)
    run = store.list_runs(con).run_id[0]
    models = store.run_models(con, run).model.tolist()
    values = store.patient_measure(con, run, models[0], "mc_dropout")
    con.close()
    gids = quantile_groups(values)
    keep = groups_kept(gids, q_range)
    return Selection(db, run, models, models, "mc_dropout", ["deterministic", "mc_dropout"], "brain", models[0],
                           "mean entropy (WT, brain)", q_range, values.patient_id[keep].tolist(),
                           values.patient_id.tolist(), values, tuple(values.patient_id), tuple(int(g) for g in gids))


@pytest.mark.parametrize("q_range", [(0, 100), (50, 100), (0, 25), (30, 70)])
def test_subset_engine_equals_direct_queries(results_db, q_range):
    sel = _selection(results_db, q_range)
    con = store.connect(results_db, read_only=True)
    for mask in ("brain", "roi"):
        direct = store.summed_uncertainty_bins(con, sel.run_id, sel.patients, mask, "entropy")
        via = subset_bins(sel, "uncertainty", mask, "entropy")
        pd.testing.assert_frame_equal(direct.reset_index(drop=True), via.reset_index(drop=True), check_dtype=False)
        for region in ("WT", "ET"):  # one region's rows only (the budget page): the same rows of that region
            one = subset_bins(sel, "uncertainty", mask, "entropy", region=region)
            pd.testing.assert_frame_equal(direct[direct.region == region].reset_index(drop=True),
                                          one.reset_index(drop=True), check_dtype=False)
        direct = store.summed_calibration_bins(con, sel.run_id, sel.patients, mask)
        via = subset_bins(sel, "calibration", mask)
        pd.testing.assert_frame_equal(direct.reset_index(drop=True), via.reset_index(drop=True), check_dtype=False)
        a = store.cohort_summary(con, sel.run_id, sel.patients, mask).sort_values(["model", "method", "region"])
        b = subset_summary(sel, mask).sort_values(["model", "method", "region"])
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b[a.columns].reset_index(drop=True), check_dtype=False)
        assert (b.n_patients == len(sel.patients)).all()
    con.close()


def test_leaderboard_from_coded_arrays_equals_dataframe_path(results_db):
    from core.analysis import stats

    con = store.connect(results_db, read_only=True)
    run = store.list_runs(con).run_id[0]
    pids = sorted(store.cohort_patients(con, run).patient_id)[1:]  # a subset
    wide = store.metric_wide(con, run, list(stats.MEAN_METRICS), mask="roi", patient_ids=pids)
    frame = store.calibration_bins_subset(con, run, pids, mask="roi")
    keys = ["model", "method", "region"]
    combos = wide[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    arrays = store.calibration_bin_arrays(con, run, "roi", combos, sorted(set(wide.patient_id)))
    con.close()
    a = stats.leaderboard(wide, frame, B=300)
    b = stats.leaderboard(wide, arrays, B=300)
    pd.testing.assert_frame_equal(a, b)
    assert a.ece_dataset.notna().all() and (a.n_patients == len(pids)).all()


@pytest.mark.parametrize("q_range", [(0, 100), (50, 100), (20, 60)])
def test_leaderboard_of_the_filter_equals_bootstrapping_its_patients(results_db, q_range):
    """The page's leaderboard (stored for the whole cohort, else summed per quantile group) = a fresh
    bootstrap of exactly the patients inside the filter."""
    from core.analysis import stats
    from dashboard import tables

    sel = _selection(results_db, q_range)
    methods = ["deterministic", "mc_dropout"]
    got = tables.leaderboard(sel, methods)
    con = store.connect(results_db, read_only=True)
    wide = store.metric_wide(con, sel.run_id, list(stats.MEAN_METRICS), mask=sel.mask)
    wide = wide[wide.method.isin(methods) & wide.patient_id.isin(sel.patients)]
    ref = stats.leaderboard(wide, store.calibration_bins_subset(con, sel.run_id, sel.patients, mask=sel.mask))
    con.close()
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref[stats.LEADERBOARD_COLUMNS], check_dtype=False,
                                  rtol=1e-6)
    assert (got.n_patients == len(sel.patients)).all() and got.dice_lo.le(got.dice).all()


@pytest.mark.parametrize("q_range", [(0, 100), (50, 100), (0, 25), (30, 70), (100, 100)])
def test_in_filter_and_row_masks_equal_the_patient_list(results_db, q_range):
    """The cached group look-ups (in_filter, the per-row groups of a cached table) keep exactly the
    sidebar's patient list, unknown ids included (kept only by the whole range)."""
    sel = _selection(results_db, q_range)
    ids = list(sel.all_patients) + ["not-a-patient"]
    assert in_filter(sel, ids).tolist() == [p in set(sel.patients) for p in ids[:-1]] + [q_range == (0, 100)]
    table = patient_table(sel, ["dice", "ece"], method="mc_dropout")
    full = patient_table(sel, ["dice", "ece"], method="mc_dropout", subset=False)
    pd.testing.assert_frame_equal(table, full[full.patient_id.isin(sel.patients)])
