"""core.stats: patient bootstrap intervals, dataset ECE from resampled bins, Holm, paired Wilcoxon test."""
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sst

from core import metrics as M
from core.analysis import stats as S
from core.metrics.calibration import binned_calibration


def test_bootstrap_counts_are_resamples():
    W = S.bootstrap_counts(7, B=500, seed=3)
    assert W.shape == (500, 7) and (W.sum(1) == 7).all() and (W >= 0).all()
    assert np.array_equal(W, S.bootstrap_counts(7, B=500, seed=3))  # seeded: same numbers on every rerun
    assert abs(W.mean() - 1.0) < 1e-12 and 0.7 < W.var() < 1.0  # multinomial(n, 1/n): var = 1 - 1/n = 0.857


def test_mean_ci_matches_scipy_percentile_bootstrap():
    x = np.random.default_rng(0).gamma(2.0, 0.1, size=60)
    ours = S.mean_ci(x, B=20000, seed=1)
    ref = sst.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                        random_state=2).confidence_interval
    width = ref.high - ref.low
    assert ours["estimate"] == pytest.approx(x.mean())
    assert abs(ours["lo"] - ref.low) < 0.05 * width and abs(ours["hi"] - ref.high) < 0.05 * width
    assert ours["n"] == 60 and ours["n_nan"] == 0


def test_mean_ci_coverage_near_nominal():
    rng = np.random.default_rng(5)
    covered = 0
    for i in range(300):
        x = rng.normal(0.7, 0.1, size=40)
        r = S.mean_ci(x, B=400, seed=i)
        covered += r["lo"] <= 0.7 <= r["hi"]
    assert 0.89 <= covered / 300 <= 0.985  # percentile bootstrap slightly under-covers at n = 40


def test_mean_ci_nan_and_degenerate():
    r = S.mean_ci([0.5, np.nan, 0.7, np.nan])
    assert r["n"] == 2 and r["n_nan"] == 2 and r["estimate"] == pytest.approx(0.6)
    assert 0.5 <= r["lo"] <= r["hi"] <= 0.7
    r = S.mean_ci([np.nan, np.nan])
    assert r["n"] == 0 and r["n_nan"] == 2 and math.isnan(r["estimate"]) and math.isnan(r["lo"])
    r = S.mean_ci([0.9, 0.9, 0.9])
    assert r["lo"] == r["hi"] == pytest.approx(0.9)
    assert math.isnan(S.mean_ci([])["estimate"])


def test_ece_batch_equals_metrics_definition():
    rng = np.random.default_rng(1)
    n = rng.integers(0, 50, size=(30, 20)).astype(float)
    n[:, 3] = 0  # an empty bin in every row
    n[0] = 0  # an empty voxel set
    sp = n * rng.uniform(0, 1, size=n.shape)
    st = np.minimum(n, np.round(sp + rng.normal(0, 2, size=n.shape)).clip(0))
    got = binned_calibration(n, sp, st)["ece"]
    assert math.isnan(got[0])
    for i in range(1, 30):
        assert got[i] == pytest.approx(M.calibration_from_bins(n[i], sp[i], st[i])["ece"], abs=1e-12)


def _patients(rng, P=12, V=3000):
    probs, truths = [], []
    for _ in range(P):
        y = rng.random(V) < rng.uniform(0.05, 0.4)
        p = np.clip(np.where(y, rng.beta(5, 2, V), rng.beta(1, 6, V)), 0, 1)
        p[:5] = 0.0
        p[5:10] = 1.0  # saturated probabilities
        probs.append(p)
        truths.append(y)
    return probs, truths


def test_dataset_ece_ci_is_pooled_voxel_ece_and_replicates_are_resampled_patients():
    rng = np.random.default_rng(2)
    probs, truths = _patients(rng)
    bins = np.array([M.calibration_bins(p, y) for p, y in zip(probs, truths)])  # (P, 3, 20)
    r = S.dataset_ece_ci(bins[:, 0], bins[:, 1], bins[:, 2], B=300, seed=4)
    pooled = M.calibration_from_bins(*M.calibration_bins(np.concatenate(probs), np.concatenate(truths)))["ece"]
    assert r["estimate"] == pytest.approx(pooled, abs=1e-12) and r["n"] == 12
    assert r["lo"] <= r["estimate"] <= r["hi"] or r["lo"] <= r["hi"]
    # one replicate by hand: concatenate the voxels of the drawn patients and compute ECE from scratch
    W = S.bootstrap_counts(12, B=300, seed=4)
    drawn = np.repeat(np.arange(12), W[0])
    by_hand = M.calibration_from_bins(*M.calibration_bins(np.concatenate([probs[i] for i in drawn]),
                                                          np.concatenate([truths[i] for i in drawn])))["ece"]
    rep = binned_calibration(W[:1].astype(float) @ bins[:, 0], W[:1].astype(float) @ bins[:, 1],
                                W[:1].astype(float) @ bins[:, 2])["ece"][0]
    assert rep == pytest.approx(by_hand, abs=1e-12)
    assert math.isnan(S.dataset_ece_ci(np.zeros((0, 20)), np.zeros((0, 20)), np.zeros((0, 20)))["estimate"])


def test_holm_hand_computed():
    assert np.allclose(S.holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    out = S.holm([0.5, np.nan, 0.001])
    assert np.isnan(out[1]) and np.allclose(out[[0, 2]], [0.5, 0.002])
    assert np.allclose(S.holm([0.6, 0.7]), [1.0, 1.0])  # capped at 1


def test_paired_test_exact_and_edge_cases():
    a = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    b = a - np.array([0.01, 0.02, 0.03, 0.04, 0.05])
    r = S.paired_test(a, b, seed=0)
    # all five differences positive: W- = 0, exact two-sided p = 2 / 2^5
    assert r["statistic"] == 0 and r["p_value"] == pytest.approx(2 / 32)
    assert r["n"] == 5 and r["n_zero"] == 0 and r["mean_diff"] == pytest.approx(0.03)
    assert r["median_diff"] == pytest.approx(0.03) and r["diff_lo"] > 0
    ref = sst.wilcoxon(a - b)
    assert r["p_value"] == pytest.approx(ref.pvalue)
    r = S.paired_test([1.0, 1.0, np.nan, 0.5, 0.2], [1.0, 0.9, 0.3, 0.6, 0.1])
    assert r["n"] == 4 and r["n_nan"] == 1 and r["n_zero"] == 1  # both-empty ET: Dice 1 vs 1
    r = S.paired_test([1.0, 1.0], [1.0, 1.0])
    assert math.isnan(r["p_value"]) and r["mean_diff"] == 0
    with pytest.raises(ValueError, match="same patients"):
        S.paired_test([1, 2], [1, 2, 3])


def test_leaderboard_counts_nans_and_intervals():
    rng = np.random.default_rng(3)
    probs, truths = _patients(rng, P=6, V=500)
    rows, bins = [], []
    for i, (p, y) in enumerate(zip(probs, truths)):
        for model, shift in (("A", 0.0), ("B", 0.1)):
            rows.append({"model": model, "method": "mc", "region": "WT", "patient_id": f"P{i}",
                         "dice": 0.8 - shift + 0.01 * i, "auroc_entropy": np.nan if i == 0 else 0.9})
            n, sp, st = M.calibration_bins(np.clip(p + shift, 0, 1), y)
            bins += [{"model": model, "method": "mc", "region": "WT", "patient_id": f"P{i}", "bin": k, "n": n[k],
                      "sum_prob": sp[k], "sum_true": st[k]} for k in range(20) if n[k] > 0]
    lb = S.leaderboard(pd.DataFrame(rows), pd.DataFrame(bins), B=200)
    assert list(lb.model) == ["A", "B"] and (lb.n_patients == 6).all()
    assert (lb.auroc_entropy_nan == 1).all() and (lb.auroc_entropy_n == 5).all()
    a = lb.set_index("model").loc["A"]
    assert a.dice == pytest.approx(0.8 + 0.025) and a.dice_lo <= a.dice <= a.dice_hi
    pooled = M.calibration_from_bins(*M.calibration_bins(np.concatenate(probs), np.concatenate(truths)))["ece"]
    assert a.ece_dataset == pytest.approx(pooled, abs=1e-12) and a.ece_dataset_lo <= a.ece_dataset_hi


def test_poisson_weights_follow_the_patient_not_the_subset():
    ids = [f"P{i:03d}" for i in range(50)]
    W = S.poisson_weights(ids, B=4000, seed=0)
    assert W.shape == (4000, 50) and W.dtype == np.float32 and (W >= 0).all() and (W == np.round(W)).all()
    assert abs(W.mean() - 1.0) < 0.02 and abs(W.var() - 1.0) < 0.03  # Poisson(1)
    sub = S.poisson_weights(["P007", "P031", "P002"], B=4000, seed=0)
    assert np.array_equal(sub, W[:, [7, 31, 2]])  # a patient's counts do not depend on who else is drawn
    assert not np.array_equal(S.poisson_weights(ids, B=4000, seed=1), W)
    # independent columns: correlation between patients ~ 0
    assert abs(np.corrcoef(W[:, 0], W[:, 1])[0, 1]) < 0.06


def _cohort(rng, P=60, models=("A", "B"), regions=("WT", "ET")):
    rows, bins = [], []
    for i in range(P):
        for mi, model in enumerate(models):
            for region in regions:
                dice = np.nan if (region == "ET" and i % 7 == 0) else float(np.clip(rng.normal(0.8 - 0.1 * mi, 0.1), 0, 1))
                rows.append({"model": model, "method": "mc", "region": region, "patient_id": f"P{i:03d}",
                             "dice": dice, "auroc_entropy": np.nan if i % 5 == 0 else rng.uniform(0.7, 1.0)})
                p = np.clip(rng.beta(0.5, 0.5, size=200) + 0.05 * mi, 0, 1)
                y = (rng.random(200) < p).astype(np.uint8)
                n, sp, st = M.calibration_bins(p, y)
                bins += [{"model": model, "method": "mc", "region": region, "patient_id": f"P{i:03d}", "bin": k,
                          "n": n[k], "sum_prob": sp[k], "sum_true": st[k]} for k in range(20) if n[k] > 0]
    return pd.DataFrame(rows), pd.DataFrame(bins)


def test_leaderboard_of_a_union_of_groups_equals_the_subset_leaderboard():
    rng = np.random.default_rng(11)
    wide, bins = _cohort(rng)
    pids = sorted(wide.patient_id.unique())
    groups = {p: int(rng.integers(0, 5)) for p in pids[:-3]}  # the last three have no group (-2)
    parts = S.leaderboard_parts(wide, bins, groups, B=300)
    assert list(parts["groups"]) == [-2, 0, 1, 2, 3, 4]
    for kept in ([1, 3], [0], [-2, 0, 1, 2, 3, 4]):
        keep = np.isin(parts["groups"], kept)
        got = S.leaderboard_from_parts(parts, keep)
        sub = [p for p in pids if groups.get(p, -2) in kept]
        ref = S.leaderboard(wide[wide.patient_id.isin(sub)], bins[bins.patient_id.isin(sub)], B=300)
        pd.testing.assert_frame_equal(got, ref, check_dtype=False, rtol=1e-5)
        assert (got.n_patients == len(sub)).all()
    # the point estimates are the plain ones: mean of the defined values, ECE of the summed bins
    sub = [p for p in pids if groups.get(p, -2) in (1, 3)]
    got = S.leaderboard_from_parts(parts, np.isin(parts["groups"], [1, 3])).set_index(["model", "region"])
    w = wide[wide.patient_id.isin(sub)]
    assert got.loc[("B", "ET"), "dice"] == pytest.approx(w[(w.model == "B") & (w.region == "ET")].dice.mean(), abs=1e-12)
    assert got.loc[("B", "ET"), "dice_nan"] == w[(w.model == "B") & (w.region == "ET")].dice.isna().sum()
    b = bins[bins.patient_id.isin(sub) & (bins.model == "A") & (bins.region == "WT")].groupby("bin")[["n", "sum_prob", "sum_true"]].sum()
    assert got.loc[("A", "WT"), "ece_dataset"] == pytest.approx(
        M.calibration_from_bins(b.n.to_numpy(), b.sum_prob.to_numpy(), b.sum_true.to_numpy())["ece"], abs=1e-12)


def test_poisson_leaderboard_interval_agrees_with_multinomial_and_normal_theory():
    rng = np.random.default_rng(2)
    P = 1500
    x = rng.gamma(3.0, 0.1, size=P)
    wide = pd.DataFrame({"model": "A", "method": "m", "region": "WT", "patient_id": [f"Q{i}" for i in range(P)],
                         "dice": x})
    lb = S.leaderboard(wide, B=4000).iloc[0]
    multi = S.mean_ci(x, B=4000, seed=0)
    half = 1.959964 * x.std(ddof=1) / math.sqrt(P)
    for lo, hi in ((multi["lo"], multi["hi"]), (x.mean() - half, x.mean() + half)):
        assert abs(lb.dice_lo - lo) < 0.06 * (hi - lo) and abs(lb.dice_hi - hi) < 0.06 * (hi - lo)


def test_leaderboard_parts_edge_cases():
    empty = S.leaderboard(pd.DataFrame(columns=["model", "method", "region", "patient_id", "dice"]))
    assert empty.empty and "n_patients" in empty
    # one patient, all-NaN AUROC: estimate NaN, counted as NaN; Dice interval from the replicates that drew it
    one = pd.DataFrame({"model": ["A"], "method": ["m"], "region": ["WT"], "patient_id": ["P0"], "dice": [1.0],
                        "auroc_entropy": [np.nan]})
    lb = S.leaderboard(one, B=200).iloc[0]
    assert lb.dice == 1.0 and lb.dice_lo == 1.0 and lb.dice_hi == 1.0
    assert math.isnan(lb.auroc_entropy) and math.isnan(lb.auroc_entropy_lo) and lb.auroc_entropy_nan == 1
    parts = S.leaderboard_parts(one, None, {"P0": 3}, B=50)
    none_kept = S.leaderboard_from_parts(parts, [False]).iloc[0]
    assert none_kept.n_patients == 0 and math.isnan(none_kept.dice) and math.isnan(none_kept.dice_lo)


def test_poisson_mean_ci_is_the_weighted_bootstrap_of_the_subset():
    """Replicates = sum W x / sum W over the subset's own columns of the cohort's weights (checked directly);
    NaN skipped and counted; the interval covers the true mean at about the nominal rate."""
    ids = [f"P{i:03d}" for i in range(300)]
    W = S.poisson_weights(ids, B=2000, seed=0)
    rng = np.random.default_rng(1)
    pos = rng.choice(300, 40, replace=False)
    x = rng.normal(0.5, 0.2, 40)
    x[[3, 17]] = np.nan
    r = S.poisson_mean_ci(x, pos, W)
    f = np.isfinite(x)
    Wf = W[:, pos[f]].astype(np.float64)
    reps = (Wf @ x[f]) / Wf.sum(1)
    lo, hi = np.quantile(reps[np.isfinite(reps)], [0.025, 0.975])
    assert r["n"] == 38 and r["n_nan"] == 2 and r["estimate"] == pytest.approx(np.nanmean(x))
    assert (r["lo"], r["hi"]) == (pytest.approx(lo, abs=1e-6), pytest.approx(hi, abs=1e-6))
    assert math.isnan(S.poisson_mean_ci([np.nan], [0], W)["lo"])
    with pytest.raises(ValueError, match="one position per value"):
        S.poisson_mean_ci([1.0, 2.0], [0], W)
    W400 = S.poisson_weights(ids, B=400, seed=0)
    hits = 0
    for i in range(200):
        p = np.random.default_rng(100 + i).choice(300, 30, replace=False)
        hits += (lambda c: c["lo"] <= 1.0 <= c["hi"])(S.poisson_mean_ci(np.random.default_rng(i).exponential(1.0, 30),
                                                                        p, W400))
    assert 0.85 <= hits / 200 <= 0.99


def test_paired_table_with_cohort_weights():
    """With cohort_ids the interval is the cohort's Poisson bootstrap (a patient's weights do not depend on the
    subset); the test, counts and estimates are those of the multinomial path."""
    rng = np.random.default_rng(0)
    ids = [f"P{i:02d}" for i in range(30)]
    rows = [dict(model=m, patient_id=p, region=r, dice=rng.random())
            for m in ("A", "B") for p in ids for r in ("WT", "TC", "ET")]
    wide = pd.DataFrame(rows)
    wide.loc[(wide.model == "A") & (wide.patient_id == "P04") & (wide.region == "ET"), "dice"] = np.nan
    sub = wide[wide.patient_id.isin(ids[::2])]
    plain, d1 = S.paired_table(sub, "dice", "A", "B")
    pois, d2 = S.paired_table(sub, "dice", "A", "B", cohort_ids=ids[::-1])  # any order of the cohort
    pd.testing.assert_frame_equal(d1, d2)
    same = ["region", "n", "n_nan", "n_zero", "mean_diff", "median_diff", "statistic", "p_value", "p_holm"]
    pd.testing.assert_frame_equal(plain[same], pois[same])
    et = pois.set_index("region").loc["ET"]
    assert et.n == 14 and et.n_nan == 1 and et.diff_lo < et.mean_diff < et.diff_hi
    W = S.poisson_weights(tuple(ids[::-1]), B=S.DEFAULT_B, seed=0)
    g = d2[d2.region == "WT"]
    col = pd.Index(ids[::-1]).get_indexer(g.patient_id)
    reps = (W[:, col].astype(np.float64) @ g["diff"].to_numpy()) / W[:, col].sum(1)
    lo, hi = np.quantile(reps[np.isfinite(reps)], [0.025, 0.975])
    wt = pois.set_index("region").loc["WT"]
    assert (wt.diff_lo, wt.diff_hi) == (pytest.approx(lo, abs=1e-6), pytest.approx(hi, abs=1e-6))
    with pytest.raises(ValueError, match="not in cohort_ids"):
        S.paired_table(wide, "dice", "A", "B", cohort_ids=ids[:10])


def test_p_values_that_underflow_show_as_below_1e_300():
    """Issue 20.10: scipy's normal approximation returns exactly 0 for 5000 all-positive differences; the
    tables show "< 1e-300", never "0"; NaN (fewer than 2 non-zero differences) shows "-"."""
    import scipy.stats as sst

    from core.analysis.stats import format_p, format_p_columns

    d = np.arange(1, 5001, dtype=float)
    assert sst.wilcoxon(d).pvalue == 0.0
    assert format_p(0.0) == "< 1e-300" and format_p(5e-324) == "< 1e-300" and format_p(1e-300) == "1e-300"
    assert format_p(0.012345) == "0.0123" and format_p(1.0) == "1" and format_p(float("nan")) == "-"
    df = pd.DataFrame({"region": ["WT", "TC"], "p_value": [0.0, np.nan], "p_holm": [0.0, np.nan]})
    assert format_p_columns(df).p_value.tolist() == ["< 1e-300", "-"]
    assert df.p_value.iloc[0] == 0.0  # a copy: the stored numbers stay numbers
