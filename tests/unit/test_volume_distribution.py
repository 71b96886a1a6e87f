"""Issue 20 item 5: the volume prediction interval reaches its nominal coverage for the method's N, and the fair
CRPS does not depend on N (simulation with a perfectly calibrated sampler: truth and samples i.i.d.)."""
import itertools

import numpy as np
import pytest

from core import metrics as M


@pytest.mark.parametrize("n", [3, 8, 10, 19, 30])
def test_interval_reaches_nominal_coverage(n):
    rng = np.random.default_rng(n)
    trials = 6000
    samples = rng.normal(40.0, 6.0, (trials, n))
    truth = rng.normal(40.0, 6.0, trials)
    hits = np.array([M.volume_distribution(s, gt_ml=float(t))["vol_in_pi"] for s, t in zip(samples, truth)])
    nominal = M.prediction_interval_ranks(n)[2]
    se = np.sqrt(nominal * (1 - nominal) / trials)
    assert abs(hits.mean() - nominal) < 4 * se, (hits.mean(), nominal)
    if n >= 19:
        assert nominal >= 0.9
    # the former [q05, q95] interval: far below 90 % for small N (0.46 at N = 3, 0.76 at N = 10)
    lo, hi = np.quantile(samples, [0.05, 0.95], axis=1)
    if n <= 10:
        assert ((lo <= truth) & (truth <= hi)).mean() < 0.8


def test_nominal_coverage_values():
    assert M.prediction_interval_ranks(3)[2] == pytest.approx(0.5)
    assert M.prediction_interval_ranks(10)[2] == pytest.approx(9 / 11)
    assert M.prediction_interval_ranks(19) == (1, 19, pytest.approx(0.9))
    assert M.prediction_interval_ranks(39) == (2, 38, pytest.approx(0.9))
    assert M.prediction_interval_ranks(30) == (1, 30, pytest.approx(29 / 31))
    assert M.prediction_interval_ranks(1) == (1, 1, 0.0)


def test_fair_crps_brute_force_and_edge_cases():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7):
        x, y = rng.normal(0, 1, n), 0.3
        pairs = sum(abs(a - b) for a, b in itertools.permutations(x, 2))
        ref = np.mean(np.abs(x - y)) - pairs / (2 * n * (n - 1))
        assert M.crps_fair(x, y) == pytest.approx(ref, abs=1e-12)
    assert np.isnan(M.crps_fair(np.array([1.0]), 0.0)) and np.isnan(M.crps_fair(np.array([1.0, 2.0]), np.nan))
    assert M.crps_fair(np.array([5.0, 5.0, 5.0]), 5.0) == 0.0  # all samples on the truth
    d = M.volume_distribution(np.array([1.0]), gt_ml=2.0)
    assert np.isnan(d["vol_fcrps_ml"]) and d["vol_crps_ml"] == 1.0


def test_fair_crps_does_not_depend_on_n():
    """E[fair CRPS] is the same for N = 3 and N = 30 samples of one forecast; the plain CRPS is not."""
    rng = np.random.default_rng(1)
    trials = 6000
    out = {}
    for n in (3, 30):
        s, t = rng.normal(0, 1, (trials, n)), rng.normal(0, 1, trials)
        out[n] = (np.mean([M.crps_fair(a, b) for a, b in zip(s, t)]),
                  np.mean([M.crps_ensemble(a, b) for a, b in zip(s, t)]))
    assert abs(out[3][0] - out[30][0]) < 0.02  # sd of the mean about 0.006
    expected_gap = (2 / np.sqrt(np.pi)) / 2 * (1 / 3 - 1 / 30)  # E|X - X'| / 2N for N(0, 1)
    assert out[3][1] - out[30][1] == pytest.approx(expected_gap, abs=0.02)
