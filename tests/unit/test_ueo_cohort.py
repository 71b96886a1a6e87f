"""U-E overlap and BnF at one cohort threshold (issue 20, item 7) against a brute-force voxel computation."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from core.analysis import ueo as U
from core.metrics.uncertainty import UEO_THRESHOLDS, ueo_curve, uncertainty_bins


def _dice(a, b):
    s = a.sum() + b.sum()
    return 2 * (a & b).sum() / s if s else 1.0


def _cohort(seed=3, n_patients=7, n=3000):
    """Per patient: entropy u (some exactly on thresholds), prediction, truth; one patient predicts nothing,
    one has no error voxel."""
    rng = np.random.default_rng(seed)
    pts = []
    for i in range(n_patients):
        truth = rng.random(n) < rng.uniform(0.05, 0.3)
        pred = truth ^ (rng.random(n) < rng.uniform(0.02, 0.15))
        err = pred != truth
        u = np.clip(np.where(err, rng.beta(3, 2, n), rng.beta(1, 4 + i, n)), 0, 1)  # float64: t exact
        u[:40] = rng.choice(np.array(UEO_THRESHOLDS), 40)  # ties on the edges: u >= t includes them
        if i == 0:
            pred[:] = False  # nothing predicted: BnF undefined
        if i == 1:
            pred = truth.copy()  # no error: U-E 0 wherever something is uncertain
        pts.append((f"P{i}", u, pred, truth))
    return pts


def _rows(pts):
    rows = []
    for pid, u, pred, truth in pts:
        fp, fn, tp, tn = uncertainty_bins(u, pred != truth, pred)
        nz = np.flatnonzero(fp + fn + tp + tn)
        rows.append(pd.DataFrame({"model": "M", "method": "x", "region": "WT", "patient_id": pid, "bin": nz,
                                  "n_error": (fp + fn)[nz], "n_correct": (tp + tn)[nz], "n_fp": fp[nz],
                                  "n_fn": fn[nz], "n_tp": tp[nz]}))
    return pd.concat(rows, ignore_index=True)


def test_cohort_threshold_equals_brute_force_voxels():
    pts = _cohort()
    T = np.array(UEO_THRESHOLDS)
    ueo = np.full((len(pts), len(T)), np.nan)
    gain = np.full((len(pts), len(T)), np.nan)
    for i, (_, u, pred, truth) in enumerate(pts):
        err = pred != truth
        for k, t in enumerate(T):
            unc = u >= t
            if unc.sum() + err.sum():
                ueo[i, k] = _dice(unc, err)
            if pred.any():  # BnF by definition: does removing the uncertain predicted voxels raise Dice?
                gain[i, k] = float(_dice(pred & ~unc, truth) > _dice(pred, truth))
    mean = np.nanmean(ueo, axis=0)
    k = int(np.argmax(mean))
    bnf = np.nanmean(gain, axis=0)
    kb = int(np.argmax(bnf))

    summary, patients = U.cohort_threshold_table(_rows(pts))
    s = summary.iloc[0]
    assert s.t_ueo == pytest.approx(T[k]) and s.ueo_mean_at_t == pytest.approx(mean[k], abs=1e-12)
    np.testing.assert_allclose(patients.ueo_at_t, ueo[:, k], atol=1e-12)
    np.testing.assert_allclose(patients.ueo_oracle, np.nanmax(ueo, axis=1), atol=1e-12)
    assert s.ueo_oracle_mean == pytest.approx(np.nanmax(ueo, axis=1).mean(), abs=1e-12)
    assert s.ueo_oracle_mean > s.ueo_mean_at_t  # the per-patient oracle is optimistic
    pooled = [(2 * ((u >= T[k]) & (p != y)).sum(), (u >= T[k]).sum() + (p != y).sum())
              for _, u, p, y in pts]
    assert s.ueo_pooled_at_t == pytest.approx(sum(a for a, _ in pooled) / sum(b for _, b in pooled), abs=1e-12)
    assert s.t_bnf == pytest.approx(T[kb]) and s.bnf_at_t == pytest.approx(bnf[kb], abs=1e-12)
    assert s.n_bnf == len(pts) - 1 and s.n_patients == len(pts)  # P0 predicts nothing
    # the per-patient curve is the metric engine's (the stored ueo_best / ueo_t50 come from it)
    fp, fn, tp, tn = uncertainty_bins(pts[2][1], pts[2][2] != pts[2][3], pts[2][2])
    np.testing.assert_allclose(ueo[2], ueo_curve(fp + fn, tp + tn), atol=1e-12)
    print(f"cohort U-E: t = {T[k]:.2f}, mean {mean[k]:.4f} (per-patient oracle {np.nanmax(ueo, 1).mean():.4f}); "
          f"BnF t = {T[kb]:.2f}: {bnf[kb]:.3f}")


def test_grouped_rows_and_undefined_cohorts():
    """Rows already summed per threshold group give the same; a combo without any value gives NaN thresholds."""
    rows = _rows(_cohort(seed=5, n_patients=4))
    rows["group"] = U.threshold_groups(rows.bin.to_numpy())
    grouped = rows.groupby(["model", "method", "region", "patient_id", "group"], as_index=False)[list(U.COUNTS)].sum()
    a, pa = U.cohort_threshold_table(rows.drop(columns="group"))
    b, pb = U.cohort_threshold_table(grouped)
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(pa, pb)
    assert list(U.threshold_groups([0, U.threshold_bins()[0] - 1, U.threshold_bins()[0], U.threshold_bins()[-1]])) \
        == [0, 0, 1, len(UEO_THRESHOLDS)]
    empty = U.cohort_threshold(np.zeros((2, len(UEO_THRESHOLDS) + 1, 5)))
    assert math.isnan(empty["t_ueo"]) and math.isnan(empty["t_bnf"]) and empty["n_ueo"] == 0
    s, p = U.cohort_threshold_table(rows.iloc[:0])
    assert s.empty and p.empty and "t_ueo" in s
