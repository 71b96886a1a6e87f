"""Issue 20 item 4: the dataset-ECE bootstrap interval covers the population ECE at its nominal level, also where
patients' gaps cancel (population ECE 0), and always contains its own estimate."""
import numpy as np
import pytest

from core.analysis import stats
from core.metrics.calibration import ece_from_gap_sums

K = 20
PROFILE = np.exp(-np.linspace(-3, 3, K) ** 2) + 0.05
PROFILE /= PROFILE.sum()


def _cohort(rng, mu, sigma, P=40):
    """Per-patient bins (n, sum_prob, sum_true) whose gap in bin k is mu_k + patient noise + bin noise; the
    population ECE is sum_k pi_k |mu_k|."""
    n = rng.poisson(2000 * PROFILE, (P, K)).astype(float) * rng.uniform(0.5, 1.5, (P, 1))
    gap = mu + sigma * rng.normal(size=(P, K)) + sigma * rng.normal(size=(P, 1))
    sp = n * ((np.arange(K) + 0.5) / K)
    return n, sp, sp - n * gap


@pytest.mark.parametrize("mu", [np.zeros(K), np.full(K, 0.003), np.linspace(-0.03, 0.03, K), np.full(K, 0.02)],
                         ids=["cancelling", "near-zero", "both-signs", "miscalibrated"])
def test_coverage_in_simulation(mu):
    rng = np.random.default_rng(0)
    true = float((PROFILE * np.abs(mu)).sum())
    hits, old_hits, trials = [], [], 150
    for t in range(trials):
        n, sp, st = _cohort(rng, mu, 0.02)
        ci = stats.dataset_ece_ci(n, sp, st, B=500, seed=t)
        assert ci["lo"] <= ci["estimate"] <= ci["hi"]
        hits.append(ci["lo"] <= true <= ci["hi"])
        W = stats.bootstrap_counts(len(n), 500, t).astype(float)
        reps = ece_from_gap_sums(W @ (sp - st), (W @ n).sum(-1))
        lo, hi = np.quantile(reps, [0.025, 0.975])
        old_hits.append(lo <= true <= hi)
    # nominal 95 %: allow 2.5 binomial standard errors below it
    assert np.mean(hits) >= 0.95 - 2.5 * np.sqrt(0.95 * 0.05 / trials), np.mean(hits)
    if true < 0.01:  # where the former percentile interval failed
        assert np.mean(old_hits) < 0.85


def test_the_audit_case_contains_its_estimate():
    """Gaps that cancel between patients: the estimate is tiny, the interval reaches 0 and contains it."""
    rng = np.random.default_rng(5)
    n, sp, st = _cohort(rng, np.zeros(K), 0.02)
    ci = stats.dataset_ece_ci(n, sp, st)
    assert ci["lo"] == 0.0 and ci["estimate"] <= ci["hi"]


def test_leaderboard_uses_the_same_interval():
    rng = np.random.default_rng(2)
    n, sp, st = _cohort(rng, np.zeros(K), 0.02, P=30)
    pids = [f"P{i:02d}" for i in range(30)]
    rows = [{"model": "A", "method": "m", "region": "WT", "patient_id": p, "bin": k, "n": n[i, k],
             "sum_prob": sp[i, k], "sum_true": st[i, k]} for i, p in enumerate(pids) for k in range(K)]
    import pandas as pd
    cal = pd.DataFrame(rows)
    per = pd.DataFrame({"model": "A", "method": "m", "region": "WT", "patient_id": pids, "dice": 0.9})
    lb = stats.leaderboard(per, cal, B=400)
    assert lb.ece_dataset_lo.iloc[0] == 0.0
    assert lb.ece_dataset_lo.iloc[0] <= lb.ece_dataset.iloc[0] <= lb.ece_dataset_hi.iloc[0]


def test_edge_cases():
    lo, hi = stats.ece_interval(np.zeros((1, K)), np.zeros(1), np.zeros((10, 1, K)), np.zeros((10, 1)))
    assert np.isnan(lo[0]) and np.isnan(hi[0])
    # all-correct saturated predictions: every gap 0, interval [0, 0]
    n = np.full((5, K), 10.0)
    ci = stats.dataset_ece_ci(n, n * 0.5, n * 0.5, B=50)
    assert ci["estimate"] == 0.0 and ci["lo"] == 0.0 and ci["hi"] == 0.0
