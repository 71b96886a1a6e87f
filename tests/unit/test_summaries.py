import numpy as np
import pandas as pd
import pytest

from core.analysis.strata import strata
from core import metrics as M
from core.analysis import summaries


def _bins(seed, n_pat=5):
    rng = np.random.default_rng(seed)
    rows, pooled_p, pooled_y = [], [], []
    for i in range(n_pat):
        y = rng.random(3000) < 0.2
        p = np.clip(np.where(y, 0.7, 0.1) + rng.normal(0, 0.2, y.size), 0, 1)
        n, sp, st = M.calibration_bins(p, y)
        rows += [(f"P{i}", b, n[b], sp[b], st[b]) for b in np.flatnonzero(n)]
        pooled_p.append(p)
        pooled_y.append(y)
    return pd.DataFrame(rows, columns=["patient_id", "bin", "n", "sum_prob", "sum_true"]), np.concatenate(pooled_p), np.concatenate(pooled_y)


def test_reliability_curve_is_pooled_curve():
    bins, p, y = _bins(0)
    curve, band, hist = summaries.reliability(bins)
    n, sp, st = M.calibration_bins(p, y)
    ne = n > 0
    assert np.allclose(curve.conf.to_numpy(), sp[ne] / n[ne]) and np.allclose(curve.acc.to_numpy(), st[ne] / n[ne])
    assert (band.lo <= band.hi).all()
    col_sums = hist.sum(0)
    assert np.allclose(col_sums[col_sums > 0], 1.0)


def test_confidence_shares():
    wide = pd.DataFrame({"model": ["A"] * 4 + ["B"] * 3,
                         "overconfidence": [0.1, 0.0, 0.001, 0.2, 0.0, 0.01, np.nan],
                         "underconfidence": [0.0, 0.1, 0.004, 0.3, 0.0, 0.002, np.nan]})
    t = summaries.confidence_shares(wide)
    assert t.loc["A", "over-confident"] == 0.25 and t.loc["A", "under-confident"] == 0.5
    assert t.loc["A", "within tolerance"] == 0.25
    assert t.loc["B", "within tolerance"] == pytest.approx(0.333) and t.loc["B", "over-confident"] == pytest.approx(0.333)
    assert t.loc["B", "no voxels"] == pytest.approx(0.333)
    assert list(t.columns) == [k for k in summaries.CONFIDENCE_KINDS if k in t.columns]


def test_confidence_kind_of_the_audit_example():
    """Issue 20 item 3: p = 0.1 where the true rate is 0.3 and p = 0.9 where it is 0.7 (ECE 0.2) is over-confident,
    though mean p - mean y is 0; the mirror (0.3 / 0.7 where the rates are 0.1 / 0.9) is under-confident."""
    from core.metrics.calibration import binned_calibration, calibration_bins
    y = np.r_[np.ones(30), np.zeros(70), np.ones(70), np.zeros(30)]
    over = binned_calibration(*calibration_bins(np.r_[np.full(100, 0.1), np.full(100, 0.9)], y))
    assert over["cal_gap"] == pytest.approx(0.0, abs=1e-12) and over["ece"] == pytest.approx(0.2)
    assert over["overconfidence"] == pytest.approx(0.2) and over["underconfidence"] == pytest.approx(0.0, abs=1e-12)
    y2 = np.r_[np.ones(10), np.zeros(90), np.ones(90), np.zeros(10)]
    under = binned_calibration(*calibration_bins(np.r_[np.full(100, 0.3), np.full(100, 0.7)], y2))
    assert under["underconfidence"] == pytest.approx(0.2) and under["overconfidence"] == pytest.approx(0.0, abs=1e-12)
    kinds = summaries.confidence_kind([over["overconfidence"], under["overconfidence"]],
                                      [over["underconfidence"], under["underconfidence"]])
    assert list(kinds) == ["over-confident", "under-confident"]
    # the former rule (sign of cal_gap) called the first "within tolerance"
    assert abs(over["cal_gap"]) < summaries.GAP_TOL


def test_strata_equal_sizes_and_order():
    v = pd.DataFrame({"patient_id": [f"P{i}" for i in range(10)], "value": [5, 1, 1, 1, 9, np.nan, 3, 7, 2, 8]})
    s, labels = strata(v, 3)
    assert len(s) == 9 and labels == ["Q1", "Q2", "Q3"]
    assert s.groupby("stratum").size().tolist() == [3, 3, 3]
    assert s.set_index("patient_id").loc["P4", "stratum"] == "Q3" and s.set_index("patient_id").loc["P1", "stratum"] == "Q1"


def test_budget_table_matches_metrics():
    rng = np.random.default_rng(1)
    err = rng.random(20000) < 0.05
    pred = rng.random(20000) < 0.3
    u = np.clip(rng.beta(0.5, 4, err.size) + 0.3 * err, 0, 1)
    fp, fn, tp, tn = M.uncertainty_bins(u, err, pred & ~(err & ~pred))
    nz = np.flatnonzero(fp + fn + tp + tn)
    df = pd.DataFrame({"model": "A", "method": "m", "region": "WT", "bin": nz, "n_error": (fp + fn)[nz],
                       "n_correct": (tp + tn)[nz], "n_fp": fp[nz], "n_fn": fn[nz], "n_tp": tp[nz]})
    curves, table = summaries.budget_table(df, M.BUDGETS)
    cap, ueo = M.budget_curve(fp + fn, tp + tn)
    assert table.loc[0, "capture AUC 0-5 %"] == pytest.approx(M.budget_auc(cap))
    assert table.loc[0, "AUROC entropy"] == pytest.approx(M.auroc_from_bins(fp + fn, tp + tn))
    assert np.allclose(curves.captured, cap)


def _pandas_summary(sub: pd.DataFrame) -> pd.DataFrame:
    """The definition, as a pandas groupby of the kept rows (what cohort_summary computed before the parts)."""
    g = sub.groupby(summaries.KEYS, sort=True)
    return pd.DataFrame({
        "n_patients": g.patient_id.nunique(), "dice_mean": g.dice.mean(), "dice_median": g.dice.median(),
        "dice_nan": g.dice.size() - g.dice.count(), "ece_mean": g.ece.mean(),
        "auroc_entropy_mean": g.auroc_entropy.mean(), "auroc_nan": g.auroc_entropy.size() - g.auroc_entropy.count(),
        "mean_entropy": g.mean_entropy.mean()}).reset_index()


def test_summary_from_parts_equals_groupby_of_any_subset():
    """Numpy bincounts over a cached table's rows = pandas groupby of the kept rows: means and medians over finite
    values (even and odd counts, ties, exact 0 and 1), NaN counted, combos left out when nobody is kept."""
    rng = np.random.default_rng(0)
    rows = [dict(model=m, method=me, region=r, patient_id=f"P{p}",
                 dice=rng.choice([np.nan, rng.random(), 0.5, 1.0, 0.0]), ece=rng.random(),
                 auroc_entropy=rng.choice([np.nan, rng.random()]), mean_entropy=rng.random())
            for m in "ab" for me in ("x", "y") for r in ("WT", "TC", "ET") for p in range(7)]
    wide = pd.DataFrame(rows)
    parts = summaries.summary_parts(wide)
    for t in range(300):
        keep = rng.random(len(wide)) < rng.random() * (t % 5 != 0)
        want, got = _pandas_summary(wide[keep]), summaries.summary_from_parts(parts, keep)
        if want.empty:
            assert got.empty
            continue
        pd.testing.assert_frame_equal(want.reset_index(drop=True), got, check_dtype=False, check_column_type=False)
    everyone = summaries.summary_from_parts(parts)
    assert len(everyone) == 12 and (everyone.n_patients == 7).all()
    nan_dice = wide.assign(dice=np.nan)
    got = summaries.summary_from_parts(summaries.summary_parts(nan_dice))
    assert got.dice_mean.isna().all() and got.dice_median.isna().all() and (got.dice_nan == 7).all()


def test_binned_summary_equals_per_combo_definitions():
    """The vectorised dataset-level numbers = core.metrics' definitions applied combo by combo, rows in any
    order; empty voxel sets, a combo with no error voxel, and combos present in one table only give NaN."""
    rng = np.random.default_rng(3)
    cal_rows, unc_rows = [], []
    for m in ("A", "B"):
        for r in ("WT", "TC", "ET"):
            for b in range(M.N_CAL_BINS):
                n = int(rng.integers(0, 50)) * (r != "ET" or m != "B")  # B/ET: an empty voxel set
                sp = n * (b + rng.random()) / M.N_CAL_BINS
                cal_rows.append((m, "x", r, b, n, sp, min(n, sp * rng.uniform(0.5, 1.5))))
            for b in sorted(rng.choice(M.N_UNC_BINS, 40, replace=False)):
                ne = 0 if (m, r) == ("A", "TC") else int(rng.integers(0, 30))  # A/TC: no error voxel
                unc_rows.append((m, "x", r, int(b), ne, int(rng.integers(0, 300))))
    unc_rows.append(("C", "x", "WT", 5, 3, 7))  # in the uncertainty table only
    cal = pd.DataFrame(cal_rows, columns=["model", "method", "region", "bin", "n", "sum_prob", "sum_true"])
    unc = pd.DataFrame(unc_rows, columns=["model", "method", "region", "bin", "n_error", "n_correct"])
    got = summaries.binned_summary(cal.sample(frac=1, random_state=0), unc.sample(frac=1, random_state=1))
    got = got.set_index(summaries.KEYS)
    for key, c in cal.groupby(summaries.KEYS):
        want = M.calibration_from_bins(c.n, c.sum_prob, c.sum_true)
        for k in ("ece", "ace", "mce"):
            assert got.loc[key, f"{k}_dataset"] == pytest.approx(want[k], nan_ok=True, rel=1e-12), (key, k)
    for key, u in unc.groupby(summaries.KEYS):
        ne, nc = np.zeros(M.N_UNC_BINS), np.zeros(M.N_UNC_BINS)
        ne[u.bin], nc[u.bin] = u.n_error, u.n_correct
        assert got.loc[key, "auroc_entropy_dataset"] == pytest.approx(M.auroc_from_bins(ne, nc), nan_ok=True,
                                                                      rel=1e-12), key
    assert np.isnan(got.loc[("B", "x", "ET"), "ece_dataset"]) and np.isnan(got.loc[("A", "x", "TC"),
                                                                                 "auroc_entropy_dataset"])
    assert np.isnan(got.loc[("C", "x", "WT"), "ece_dataset"]) and np.isfinite(got.loc[("C", "x", "WT"),
                                                                                      "auroc_entropy_dataset"])
    empty = summaries.binned_summary(cal.iloc[:0], unc.iloc[:0])
    assert empty.empty and "auroc_entropy_dataset" in empty
