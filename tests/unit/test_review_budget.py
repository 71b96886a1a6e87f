"""Review-budget ranking (core.analysis.review_budget) against a brute-force ranking of voxels."""
import numpy as np
import pandas as pd
import pytest

from core.analysis.review_budget import budget_cut, rank_patients
from core.metrics.uncertainty import N_UNC_BINS, uncertainty_bin_index


def _cohort(seed=0, n_patients=7):
    rng = np.random.default_rng(seed)
    us, errs = [], []
    for p in range(n_patients):
        n = int(rng.integers(500, 3000))
        u = rng.beta(0.3 + 0.3 * p, 3.0, n).astype(np.float32)
        u[rng.random(n) < 0.3] = 0.0  # many certain voxels (bin 0)
        us.append(u)
        errs.append(rng.random(n) < u)  # errors where uncertain
    return us, errs


def _per_patient(us, errs, cut):
    rows = []
    for i, (u, e) in enumerate(zip(us, errs)):
        b = uncertainty_bin_index(u)
        rows.append({"patient_id": f"P{i}", "n_above": (b > cut).sum(), "e_above": (e & (b > cut)).sum(),
                     "n_cut": (b == cut).sum(), "e_cut": (e & (b == cut)).sum(), "n_total": len(u), "e_total": e.sum()})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("budget", [0.001, 0.01, 0.05, 0.3, 0.9, 1.0])
def test_against_sorted_voxels(budget):
    us, errs = _cohort()
    pooled = np.bincount(np.concatenate([uncertainty_bin_index(u) for u in us]), minlength=N_UNC_BINS)
    cut, frac = budget_cut(pooled, budget)
    N = pooled.sum()
    assert pooled[cut + 1:].sum() + frac * pooled[cut] == pytest.approx(budget * N)
    rank = rank_patients(_per_patient(us, errs, cut), frac, budget * N)
    assert rank.review_voxels.sum() == pytest.approx(budget * N)
    assert rank.review_share.sum() == pytest.approx(1.0)
    assert rank.cumulative_share.iloc[-1] == pytest.approx(1.0)
    assert rank.review_voxels.is_monotonic_decreasing
    # brute force: the top budget x N voxels by bin; each patient's count lies between the whole bins above the cut
    # and those plus its whole cut bin
    allb = np.concatenate([uncertainty_bin_index(u) for u in us])
    owner = np.concatenate([np.full(len(u), i) for i, u in enumerate(us)])
    k = int(round(budget * N))
    top = owner[np.argsort(-allb, kind="stable")[:k]]
    per = _per_patient(us, errs, cut).set_index("patient_id")
    for i in range(len(us)):
        exact = (top == i).sum()
        lo, hi = per.at[f"P{i}", "n_above"], per.at[f"P{i}", "n_above"] + per.at[f"P{i}", "n_cut"]
        assert lo - 1 <= exact <= hi + 1
    if budget == 1.0:
        assert np.allclose(rank.review_voxels, rank.voxels) and np.allclose(rank.capture.dropna(), 1.0)


def test_edges_and_bad_input():
    assert budget_cut(np.zeros(10), 0.1) == (0, 0.0)
    c = np.zeros(10)
    c[9] = 100  # every voxel in the top bin: 10 % of it
    assert budget_cut(c, 0.1) == (9, pytest.approx(0.1))
    c = np.zeros(10)
    c[[0, 5]] = 50  # the top half exactly: bin 5 whole
    cut, frac = budget_cut(c, 0.5)
    assert (cut, frac) == (5, pytest.approx(1.0))
    for bad in (0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            budget_cut(c, bad)
    # no ground truth: error columns NaN -> errors_in_review and capture NaN; a patient without errors: capture NaN
    per = pd.DataFrame({"patient_id": ["a", "b"], "n_above": [3, 1], "e_above": [np.nan, 0], "n_cut": [2, 0],
                        "e_cut": [np.nan, 0], "n_total": [10, 10], "e_total": [np.nan, 0]})
    r = rank_patients(per, 0.5, 5.0)
    assert list(r.patient_id) == ["a", "b"] and list(r.review_voxels) == [4.0, 1.0]
    assert r.capture.isna().all() and np.isnan(r.errors_in_review.iloc[0])
