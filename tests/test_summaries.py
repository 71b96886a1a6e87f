import numpy as np
import pandas as pd
import pytest

from core import metrics as M
from core import summaries


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
    wide = pd.DataFrame({"model": ["A"] * 4 + ["B"] * 2, "cal_gap": [0.1, -0.1, 0.001, 0.2, 0.0, -0.3]})
    t = summaries.confidence_shares(wide)
    assert t.loc["A", "over-confident"] == 0.5 and t.loc["A", "under-confident"] == 0.25
    assert t.loc["B", "within tolerance"] == 0.5


def test_strata_equal_sizes_and_order():
    v = pd.DataFrame({"patient_id": [f"P{i}" for i in range(10)], "value": [5, 1, 1, 1, 9, np.nan, 3, 7, 2, 8]})
    s, labels = summaries.strata(v, 3)
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
