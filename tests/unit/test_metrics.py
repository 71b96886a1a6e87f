"""Metrics against hand-computed cases and independent references (MONAI, scikit-learn, torchmetrics).

Tolerances: float64 sums vs float32 references -> 1e-5 absolute; AUROC from the uncertainty bins vs exact -> 0.002.
"""
import math

import numpy as np
import pytest
import torch
from monai.metrics import CalibrationErrorMetric, DiceMetric
from monai.metrics.calibration import calibration_binning
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score
from torchmetrics.functional.classification import binary_calibration_error

from core import metrics as M
from core.metrics import calibration, overlap, uncertainty, validation


def rand_case(seed=0, n=20000, tumour=0.1):
    rng = np.random.default_rng(seed)
    y = rng.random(n) < tumour
    logit = rng.normal(0, 2.5, n) + np.where(y, 2.5, -2.5)
    p = 1 / (1 + np.exp(-logit))
    return p.astype(np.float32), y


# ------------------------------------------------------------------------------------------ dice
@pytest.mark.parametrize("pred, truth, expected", [
    ([0, 0, 0], [0, 0, 0], 1.0),         # both empty (BraTS rule)
    ([1, 0, 0], [0, 0, 0], 0.0),         # only prediction
    ([0, 0, 0], [0, 1, 0], 0.0),         # only truth
    ([1, 1, 0, 0], [0, 1, 1, 0], 0.5),   # 2*1 / (2+2)
    ([1, 1, 1], [1, 1, 1], 1.0),
])
def test_dice_hand(pred, truth, expected):
    assert M.dice(np.array(pred, bool), np.array(truth, bool)) == pytest.approx(expected)


def test_dice_vs_monai():
    rng = np.random.default_rng(1)
    pred = rng.random((3, 20, 20, 20)) < 0.3
    truth = rng.random((3, 20, 20, 20)) < 0.3
    truth[2] = False  # empty truth, non-empty prediction -> 0
    pred[1] = truth[1] = False  # both empty -> 1 with ignore_empty=False
    ref = DiceMetric(include_background=True, reduction="none", ignore_empty=False)(
        torch.from_numpy(pred[None]).float(), torch.from_numpy(truth[None]).float())[0].numpy()
    ours = [M.dice(pred[r], truth[r]) for r in range(3)]
    assert np.allclose(ours, ref, atol=1e-6)


# ----------------------------------------------------------------------------------- calibration
def test_ece_hand():
    # bin 0: p=0.0,0.0 truth 0,1 -> conf 0, acc .5; bin 19: p=1.0, 0.95 truth 1,1 -> conf .975 acc 1
    p = np.array([0.0, 0.0, 1.0, 0.95])
    y = np.array([0, 1, 1, 1], bool)
    n, sp, st = M.calibration_bins(p, y, 20)
    assert n[0] == 2 and n[19] == 2 and n.sum() == 4
    c = M.calibration_from_bins(n, sp, st)
    assert c["ece"] == pytest.approx((2 * 0.5 + 2 * 0.025) / 4)
    assert c["ace"] == pytest.approx((0.5 + 0.025) / 2)
    assert c["mce"] == pytest.approx(0.5)
    assert c["cal_gap"] == pytest.approx((1.95 - 3) / 4)


def test_bin_edges_left_closed():
    n, _, _ = M.calibration_bins(np.array([0.05, 0.0499999, 0.5, 1.0]), np.zeros(4, bool), 20)
    assert n[1] == 1 and n[0] == 1 and n[10] == 1 and n[19] == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_vs_monai(seed):
    p, y = rand_case(seed)
    n, sp, st = M.calibration_bins(p, y)
    pt, yt = torch.from_numpy(p)[None, None], torch.from_numpy(y.astype(np.float32))[None, None]
    mean_p, mean_gt, counts = calibration_binning(pt, yt, num_bins=20, right=True)
    assert np.array_equal(counts[0, 0].numpy(), n)
    ne = n > 0
    assert np.allclose(mean_p[0, 0].numpy()[ne], sp[ne] / n[ne], atol=1e-5)
    assert np.allclose(mean_gt[0, 0].numpy()[ne], st[ne] / n[ne], atol=1e-6)
    c = M.calibration_from_bins(n, sp, st)
    for red, key in (("expected", "ece"), ("average", "ace"), ("maximum", "mce")):
        ref = CalibrationErrorMetric(num_bins=20, calibration_reduction=red, right=True)(pt, yt).item()
        assert c[key] == pytest.approx(ref, abs=1e-5), red


def test_ece_vs_torchmetrics():
    p, y = rand_case(3)
    c = M.calibration_from_bins(*M.calibration_bins(p, y, 15))
    ref = binary_calibration_error(torch.from_numpy(p), torch.from_numpy(y.astype(np.int64)), n_bins=15).item()
    assert c["ece"] == pytest.approx(ref, abs=1e-5)


def test_brier_nll_vs_sklearn():
    p, y = rand_case(4)
    assert M.brier(p, y) == pytest.approx(brier_score_loss(y, p), abs=1e-7)
    assert M.nll(p, y) == pytest.approx(log_loss(y, p.astype(np.float64)), abs=1e-6)


def test_saturated_probabilities():
    p = np.array([0.0, 1.0, 1.0, 0.0])
    y = np.array([0, 1, 0, 1], bool)
    assert M.nll(p, y) == pytest.approx(-np.log(M.NLL_EPS) / 2)  # two wrong, clipped at eps
    assert M.brier(p, y) == 0.5
    c = M.calibration_from_bins(*M.calibration_bins(p, y))
    assert c["ece"] == pytest.approx(0.5)
    assert M.nll(np.array([0.0, 1.0]), np.array([0, 1], bool)) < 1e-6


def test_empty_voxel_set_is_nan():
    c = M.calibration_from_bins(*M.calibration_bins(np.array([]), np.array([], bool)))
    assert all(math.isnan(v) for v in c.values())
    assert math.isnan(M.brier(np.array([]), np.array([]))) and math.isnan(M.nll(np.array([]), np.array([])))


def test_dataset_ece_from_summed_bins_equals_pooled():
    cases = [rand_case(s, n=5000 + 1000 * s, tumour=0.05 * (s + 1)) for s in range(4)]
    bins = [M.calibration_bins(p, y) for p, y in cases]
    summed = [sum(b[i] for b in bins) for i in range(3)]
    pooled = M.calibration_bins(np.concatenate([c[0] for c in cases]), np.concatenate([c[1] for c in cases]))
    for a, b in zip(summed, pooled):
        assert np.allclose(a, b)
    assert M.calibration_from_bins(*summed)["ece"] == pytest.approx(M.calibration_from_bins(*pooled)["ece"], abs=1e-12)


# ------------------------------------------------------------------------------------------ AUROC
@pytest.mark.parametrize("seed", [0, 1])
def test_auroc_bins_vs_sklearn(seed):
    rng = np.random.default_rng(seed)
    err = rng.random(50000) < 0.03
    # entropy-like: most voxels near 0, errors higher; include exact zeros and ones
    u = np.clip(np.exp(rng.normal(-9, 3, err.size) + np.where(err, 5, 0)), 0, 1)
    u[:100] = 0.0
    u[100:110] = 1.0
    exact = roc_auc_score(err, u)
    assert M.auroc_exact(u, err) == pytest.approx(exact, abs=1e-9)
    assert M.auroc_from_bins(*M.uncertainty_bins(u, err)) == pytest.approx(exact, abs=0.002)


def test_auroc_edge_cases():
    u = np.array([0.1, 0.2, 0.3])
    assert math.isnan(M.auroc_from_bins(*M.uncertainty_bins(u, np.zeros(3, bool))))  # all correct
    assert math.isnan(M.auroc_exact(u, np.ones(3, bool)))
    const = np.full(10, 0.3)
    err = np.arange(10) < 3
    assert M.auroc_from_bins(*M.uncertainty_bins(const, err)) == pytest.approx(0.5)  # constant uncertainty
    assert M.auroc_exact(const, err) == pytest.approx(0.5)
    assert M.auroc_from_bins(*M.uncertainty_bins(np.array([0.9, 0.0]), np.array([1, 0], bool))) == 1.0


def test_uncertainty_bin_index_matches_edges():
    u = np.concatenate([[0, 1e-31, 1e-8, 1e-3, 0.5, 1.0, 0.05], np.random.default_rng(0).random(1000) ** 4,
                        10.0 ** np.random.default_rng(1).uniform(-30, 0, 1000)])
    idx = M.uncertainty_bin_index(u)
    ref = np.clip(np.searchsorted(M.UNC_EDGES, u, side="right") - 1, 0, M.N_UNC_BINS - 1)
    # analytic index may differ from the searchsorted one only by float rounding exactly at an edge
    assert np.abs(idx - ref).max() <= 1 and (idx == ref).mean() > 0.99
    assert idx[0] == 0 and idx[1] == 0 and idx[5] == M.N_UNC_BINS - 1
    assert M.UNC_EDGES[idx[6]] == pytest.approx(0.05)  # U-E thresholds are edges


def _searchsorted_bins(u):
    """The definition: bin k holds UNC_EDGES[k] <= u < UNC_EDGES[k + 1], clipped to the first / last bin."""
    return np.clip(np.searchsorted(M.UNC_EDGES, np.asarray(u, np.float64), side="right") - 1, 0, M.N_UNC_BINS - 1)


def _log_formula_bins(u):
    """The documented closed form in float64: bin 0 below 1e-30, 1 + floor(2000 log(u / 1e-30) / log(1e28)) on the
    log part, 2001 + floor((u - 0.01) / 0.001) on the linear part (the last bin holds 1)."""
    u = np.asarray(u, np.float64)
    out = np.zeros(u.shape, np.int64)
    log = (u >= M.UNC_MIN) & (u < M.UNC_LIN_START)
    out[log] = 1 + np.floor(M.N_UNC_LOG * np.log(u[log] / M.UNC_MIN) / math.log(M.UNC_LIN_START / M.UNC_MIN))
    lin = u >= M.UNC_LIN_START
    out[lin] = np.minimum(M.N_UNC_LOG + 1 + np.floor((u[lin] - M.UNC_LIN_START) / M.UNC_LIN_STEP), M.N_UNC_BINS - 1)
    return out


def _edge_neighbours(dtype):
    e = M.UNC_EDGES.astype(dtype)
    lo, hi = np.array(-1, dtype), np.array(2, dtype)
    return np.concatenate([e, np.nextafter(e, lo), np.nextafter(e, hi), np.nextafter(np.nextafter(e, lo), lo)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bit_pattern_bins_equal_edges_definition(dtype):
    rng = np.random.default_rng(7)
    tiny = np.finfo(dtype).smallest_subnormal
    special = np.array([0.0, -0.0, tiny, 2 * tiny, np.finfo(dtype).smallest_normal, 1e-31, 1e-30, 0.01, 0.05, 0.15, 0.5,
                        0.7, 0.95, 0.999, 1.0, np.nextafter(dtype(1), dtype(0)), np.nextafter(dtype(1), dtype(2)), 1.5,
                        -1e-9, -1.0, np.inf, -np.inf], dtype)
    random_bits = np.frombuffer(rng.bytes(20000 * np.dtype(dtype).itemsize), dtype)  # every exponent, both signs
    u = np.concatenate([special, _edge_neighbours(dtype), rng.random(20000).astype(dtype) ** 4,
                        (10.0 ** rng.uniform(-40, 0, 20000)).astype(dtype), random_bits[~np.isnan(random_bits)]])
    idx = M.uncertainty_bin_index(u)
    assert idx.dtype == np.int64 and idx.shape == u.shape
    assert np.array_equal(idx, _searchsorted_bins(u))  # exact, edge values and denormals included
    first = dict(zip(special.tolist(), idx[:special.size].tolist()))
    assert first[0.0] == first[tiny] == first[-1.0] == first[-np.inf] == 0  # 0 (and -0.0), denormal, negative
    assert first[1.0] == first[1.5] == first[np.inf] == M.N_UNC_BINS - 1  # 1 and above: the last bin
    # the closed form (log / linear) rounds differently only within a few ulps of an edge
    inside = (u >= 0) & (u <= 1)
    ref = _log_formula_bins(u[inside])
    assert np.abs(idx[inside] - ref).max() <= 1
    e, v = M.UNC_EDGES, u[inside].astype(np.float64)
    j = np.clip(np.searchsorted(e, v), 1, e.size - 1)
    far = np.minimum(v - e[j - 1], e[j] - v) > 1e-6 * v  # relative distance to the nearest edge
    assert far.sum() > 40000 and np.array_equal(idx[inside][far], ref[far])


def test_bit_pattern_bins_thresholds_and_shapes():
    for t in M.UEO_THRESHOLDS:  # u >= t  <=>  bin >= threshold_bin(t), float32 values compared exactly (float32(0.35) < 0.35)
        b = M.threshold_bin(t)
        assert M.UNC_EDGES[b] == t
        for dtype in (np.float32, np.float64):
            v = np.array([t, np.nextafter(dtype(t), dtype(0)), np.nextafter(dtype(t), dtype(1))], dtype)
            assert ((M.uncertainty_bin_index(v) >= b) == (v.astype(np.float64) >= t)).all(), (t, dtype)
    assert M.uncertainty_bin_index(np.float32(0.5)).shape == ()
    grid = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(M.uncertainty_bin_index(grid[:, ::2]), _searchsorted_bins(grid[:, ::2]))
    assert np.array_equal(M.uncertainty_bin_index([0.3, 1e-20]), _searchsorted_bins([0.3, 1e-20]))  # lists, ints -> f64
    assert np.array_equal(M.uncertainty_bin_index(np.array([0, 1], np.int8)), [0, M.N_UNC_BINS - 1])


def test_uncertainty_edges_are_the_documented_ones():
    e = M.UNC_EDGES
    assert e.size == M.N_UNC_BINS + 1 == 2992 and (np.diff(e) > 0).all()
    assert e[0] == 0 and e[1] == 1e-30 and e[2001] == 0.01 and e[-1] == 1.0
    assert np.allclose(np.diff(np.log(e[1:2002])), math.log(1e28) / 2000, rtol=1e-9)  # 3.3 % wide log bins
    assert np.array_equal(e[2001:], np.arange(10, 1001) / 1000)  # correctly rounded k / 1000


# ---------------------------------------------------------------------------------- input checks
def test_nan_and_shape_errors():
    p = np.full((3, 4, 4, 4), 0.5, np.float32)
    t = np.zeros((3, 4, 4, 4), bool)
    brain = np.ones((4, 4, 4), bool)
    bad = p.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(M.MetricInputError, match="NaN"):
        M.evaluate_patient(bad, p, None, t, brain)
    with pytest.raises(M.MetricInputError, match="shape mismatch"):
        M.evaluate_patient(p, p, None, t[:, :3], brain)
    with pytest.raises(M.MetricInputError, match="outside"):
        M.evaluate_patient(p + 0.6, p, None, t, brain)
    inf = p.copy()
    inf[1, 1, 1, 1] = np.inf
    with pytest.raises(M.MetricInputError, match="NaN/Inf"):
        M.evaluate_patient(p, inf, None, t, brain)


def test_large_inputs_nan_inf_and_range_errors():
    # >= 2^20 elements: the checks run on torch views (sums, min / max); same errors as the small-array path
    shape = (3, 80, 80, 64)
    p = np.full(shape, 0.25, np.float32)
    t = np.zeros(shape, bool)
    brain = np.ones(shape[1:], bool)
    for bad_value, which in ((np.nan, "prob"), (np.inf, "prob"), (-np.inf, "entropy"), (np.nan, "mi")):
        arrays = {"prob": p.copy(), "entropy": p.copy(), "mi": p.copy()}
        arrays[which][2, 79, 3, 60] = bad_value
        with pytest.raises(M.MetricInputError, match="NaN/Inf"):
            M.evaluate_patient(arrays["prob"], arrays["entropy"], arrays["mi"], t, brain)
    big = p.copy()
    big[1, 2, 3, 4] = 1.5
    with pytest.raises(M.MetricInputError, match=r"outside \[0, 1\]: min 0.25, max 1.5"):
        M.check_inputs(big)
    huge = np.full(shape, 3e38, np.float32)  # the float32 sum overflows, yet every value is finite: no error
    M.check_inputs(p, t, huge)
    ro = p.copy()
    ro.flags.writeable = False  # read-only arrays take the numpy path
    M.check_inputs(ro, t, ro)
    ro_bad = p.copy()
    ro_bad[0, 0, 0, 0] = np.nan
    ro_bad.flags.writeable = False
    with pytest.raises(M.MetricInputError, match="probabilities contain 1 NaN/Inf"):
        M.check_inputs(ro_bad)


@pytest.mark.parametrize("n", [5, 70000, 300001])
def test_unc_counts_equals_bincount_of_definition(n):
    rng = np.random.default_rng(n)
    u = np.concatenate([M.UNC_EDGES.astype(np.float32), (10.0 ** rng.uniform(-35, 0, n)).astype(np.float32),
                        np.array([0, -0.0, 1, 1e-45], np.float32)])
    ref = np.bincount(_searchsorted_bins(u), minlength=M.N_UNC_BINS)
    assert np.array_equal(uncertainty._unc_counts(u), ref)  # torch path (large float32)
    assert np.array_equal(uncertainty._unc_counts(u.astype(np.float64)), ref)  # numpy path
    ro = u.copy()
    ro.flags.writeable = False
    assert np.array_equal(uncertainty._unc_counts(ro), ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_negative_sums_equal_voxel_sums(dtype, monkeypatch):
    monkeypatch.setattr(validation, "CHUNK", 4096)  # several chunks and a remainder
    rng = np.random.default_rng(3)
    p = np.concatenate([10.0 ** rng.uniform(-20, 0, 9000), rng.random(3000) * 0.01, [0.0, 1.0, 1e-17, 0.05, 0.999, 1 / 256],
                        np.nextafter(1 / 256, 0) * np.ones(3)]).astype(dtype)
    rng.shuffle(p)
    n, sp, ssq, snll = calibration._negative_sums(p)
    rn, rsp, rst = M.calibration_bins(p, np.zeros(p.size, bool))
    assert np.array_equal(n, rn) and np.allclose(sp, rsp, rtol=1e-13, atol=0) and not rst.any()
    p64 = p.astype(np.float64)
    assert ssq == pytest.approx(float(np.sum(p64 ** 2)), rel=1e-13)
    assert snll / p.size == pytest.approx(M.nll(p, np.zeros(p.size, bool)), rel=1e-10, abs=1e-15)
    assert snll / p.size == pytest.approx(log_loss(np.zeros(p.size), p64, labels=[0, 1]), rel=1e-9)
    for n_bins in (10, 300):  # another bin count: the series threshold follows 0.5 / n_bins
        n, sp, _, _ = calibration._negative_sums(p, n_bins)
        rn, rsp, _ = M.calibration_bins(p, np.zeros(p.size, bool), n_bins)
        assert np.array_equal(n, rn) and np.allclose(sp, rsp, rtol=1e-13, atol=1e-300)


def _direct_suite(prob, ent, mi, truth, brain, epkl=None, threshold=0.5):
    """The suite's voxel-set numbers computed the direct way: gather every voxel of each set, bin it, sum it."""
    pred = prob >= threshold
    roi = M.roi_mask(pred, truth, brain)
    out, cal, unc = {}, {}, {}
    for r, name in enumerate(("WT", "TC", "ET")):
        for mname, m in (("brain", brain), ("roi", roi)):
            p, t, d, e = prob[r][m], truth[r][m], pred[r][m], ent[r][m]
            out[(name, mname, "mean_entropy")] = validation._mean(e)
            out[(name, mname, "uncertain_fraction")] = validation._mean(e >= M.UNCERTAIN_T)
            n, sp, st = M.calibration_bins(p, t)
            c = M.calibration_from_bins(n, sp, st)
            for k in ("ece", "ace", "mce", "cal_gap", "overconfidence", "underconfidence"):
                out[(name, mname, k)] = c[k]
            out[(name, mname, "brier")] = M.brier(p, t)
            out[(name, mname, "nll")] = M.nll(p, t)
            cal[(name, mname)] = (n, sp, st)
            err = d != t
            measures = {"entropy": e, "mi": mi[r][m]}
            if epkl is not None:
                measures["epkl"] = M.epkl_to_unit(epkl[r][m])
            for measure, u in measures.items():
                fp, fn, tp, tn = M.uncertainty_bins(u, err, d)
                unc[(name, mname, measure)] = (fp, fn, tp, tn)
                out[(name, mname, f"auroc_{measure}")] = M.auroc_from_bins(fp + fn, tp + tn)
            fp, fn, tp, tn = unc[(name, mname, "entropy")]
            out[(name, mname, "auroc_fp_tp")] = M.auroc_from_bins(fp, tp)
            out[(name, mname, "bnf_t50")] = M.fp_removal_benefit(fp, fn, tp, 0.5)
            cap, _ = M.budget_curve(fp + fn, tp + tn)
            out[(name, mname, "budget_capture_auc")] = M.budget_auc(cap)
    return out, cal, unc


@pytest.mark.parametrize("chunk", [1 << 17, 3000])
def test_evaluate_patient_brain_level_equals_direct_voxel_sums(chunk, monkeypatch):
    # the brain-level bins are computed as "all brain voxels negative" + a correction at the ROI's voxels;
    # they must equal the bins and numbers of the voxel-by-voxel computation (brain > 2^16 voxels: torch path)
    monkeypatch.setattr(validation, "CHUNK", chunk)
    rng = np.random.default_rng(21)
    shape = (64, 60, 48)
    g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    d = np.sqrt(((g - np.array([30, 26, 20])[:, None, None, None]) ** 2).sum(0))
    truth = np.stack([d < 11, d < 6, (d < 6) & (d > 3)])
    truth[0, 5:8, 5:8, 5:8] = True  # a missed lesion far away
    logits = np.stack([(11.5 - d), (5.5 - d), np.minimum(5.5 - d, d - 3.5)]) * 1.3 + rng.normal(0, 1.0, truth.shape)
    prob = (1 / (1 + np.exp(-logits))).astype(np.float32)
    prob[0, 58:, 55:, 44:] = 0.7  # a false positive at the volume corner
    brain = (((g - np.array([32, 30, 24])[:, None, None, None]) / np.array([31, 29, 23])[:, None, None, None]) ** 2).sum(0) < 1
    brain |= prob.max(0) >= 0.5
    ent = -(prob * np.log2(np.maximum(prob, 1e-30)) + (1 - prob) * np.log2(np.maximum(1 - prob, 1e-30)))
    ent = np.clip(ent, 0, 1).astype(np.float32)
    mi = (ent * rng.uniform(0.05, 0.5, ent.shape)).astype(np.float32)
    epkl = (mi * 4).astype(np.float32)
    assert brain.sum() > 1 << 16
    res = M.evaluate_patient(prob, ent, mi, truth, brain, epkl=epkl)
    got = {(r, m, k): v for r, m, k, v in res.metrics}
    ref, cal, unc = _direct_suite(prob, ent, mi, truth, brain, epkl)
    for key, v in ref.items():
        if math.isnan(v):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(v, rel=1e-10, abs=1e-15), key
    for (name, mname), (n, sp, st) in cal.items():
        rows = {b: (nn, s, t) for r, m, b, nn, s, t in res.calibration_bins if (r, m) == (name, mname)}
        assert sorted(rows) == np.flatnonzero(n).tolist()
        for b, (nn, s, t) in rows.items():
            assert nn == n[b] and s == pytest.approx(sp[b], rel=1e-12) and t == st[b]
    for (name, mname, measure), (fp, fn, tp, tn) in unc.items():
        rows = [row[3:] for row in res.uncertainty_bins if row[:3] == (name, mname, measure)]
        dense = np.zeros((5, M.N_UNC_BINS), np.int64)
        for b, ne, nc, nfp, nfn, ntp in rows:
            dense[:, b] = ne, nc, nfp, nfn, ntp
        assert np.array_equal(dense, np.stack([fp + fn, tp + tn, fp, fn, tp])), (name, mname, measure)


def _suite(prob, truth, brain, mi=None):
    ent = -(np.where(prob > 0, prob * np.log(np.maximum(prob, 1e-30)), 0) +
            np.where(prob < 1, (1 - prob) * np.log(np.maximum(1 - prob, 1e-30)), 0)) / np.log(2)
    out = M.evaluate_patient(prob, ent.astype(np.float32), mi, truth, brain)
    return {(r, m, k): v for r, m, k, v in out.metrics}, out


def test_evaluate_patient_all_correct_and_empty_region():
    truth = np.zeros((3, 10, 10, 10), bool)
    truth[0, 3:7, 3:7, 3:7] = True
    truth[1, 4:6, 4:6, 4:6] = True  # ET empty
    prob = truth.astype(np.float32)  # saturated, all correct
    brain = np.ones((10, 10, 10), bool)
    m, out = _suite(prob, truth, brain)
    assert m[("WT", "brain", "dice")] == 1.0 and m[("ET", "brain", "dice")] == 1.0
    assert m[("WT", "brain", "ece")] == 0.0 and m[("WT", "brain", "brier")] == 0.0
    assert math.isnan(m[("WT", "brain", "auroc_entropy")])  # no error voxel
    assert m[("ET", "brain", "volume_gt_ml")] == 0.0
    assert m[("WT", "brain", "volume_gt_ml")] == pytest.approx(64 / 1000)
    assert m[("WT", "brain", "mean_entropy")] == 0.0


def test_evaluate_patient_matches_references_on_demo_like_arrays():
    rng = np.random.default_rng(5)
    truth = np.zeros((3, 24, 24, 24), bool)
    truth[0, 6:18, 6:18, 6:18] = True
    truth[1, 9:15, 9:15, 9:15] = True
    truth[2, 10:14, 10:14, 10:14] = True
    logits = np.where(truth, 2.0, -3.0) + rng.normal(0, 1.5, truth.shape)
    prob = (1 / (1 + np.exp(-logits))).astype(np.float32)
    brain = np.ones((24, 24, 24), bool)
    brain[:2] = False
    m, out = _suite(prob, truth, brain)
    for r, name in enumerate(["WT", "TC", "ET"]):
        p, t = prob[r][brain], truth[r][brain]
        # overlap metrics are those of the exported label map: the nested regions (ET inside TC inside WT)
        assert m[(name, "brain", "dice")] == pytest.approx(M.dice(M.nest_regions(prob >= 0.5)[r], truth[r]))
        assert m[(name, "brain", "brier")] == pytest.approx(brier_score_loss(t, p), abs=1e-7)
        err = (p >= 0.5) != t
        u = -(p * np.log(p) + (1 - p) * np.log1p(-p)) / np.log(2)
        assert m[(name, "brain", "auroc_entropy")] == pytest.approx(roc_auc_score(err, u), abs=0.002)
        ece = CalibrationErrorMetric(num_bins=20, right=True)(torch.from_numpy(p)[None, None], torch.from_numpy(t.astype(np.float32))[None, None]).item()
        assert m[(name, "brain", "ece")] == pytest.approx(ece, abs=1e-5)
    # roi is a subset of the brain, contains the ground truth
    roi = M.roi_mask(prob >= 0.5, truth, brain)
    assert roi.sum() < brain.sum() and (truth.any(0) & brain <= roi).all()
    assert {r[1] for r in out.calibration_bins} == {"brain", "roi"}


# ------------------------------------------------------------------------- issue-3 metrics vs references
def _blob(shape, centre, r, rng, noise=0.3):
    g = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"))
    d = np.sqrt(sum((g[i] - centre[i]) ** 2 for i in range(3)))
    return d < r * (1 + noise * rng.standard_normal(shape) * 0.2)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hd95_vs_monai(seed):
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(seed)
    shape = (40, 44, 36)
    a = _blob(shape, (20, 22, 18), 8, rng)
    b = _blob(shape, (22, 20, 18), 7, rng)
    spacing = (1.0, 1.5, 2.0)
    ref = compute_hausdorff_distance(torch.from_numpy(a)[None, None].float(), torch.from_numpy(b)[None, None].float(),
                                     percentile=95, spacing=spacing).item()
    assert M.hd95(a, b, spacing) == pytest.approx(ref, abs=1e-4)


def test_hd95_empty_rules():
    z = np.zeros((5, 5, 5), bool)
    one = z.copy()
    one[2, 2, 2] = True
    assert M.hd95(z, z) == 0.0
    assert math.isnan(M.hd95(one, z)) and math.isnan(M.hd95(z, one))
    assert M.hd95(one, one) == 0.0


def _ball(radius):
    r = np.arange(-radius, radius + 1)
    return (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius ** 2


@pytest.mark.parametrize("shape", [(9, 11, 7), (2, 8, 8), (6, 1, 5), (12, 12, 3)])
def test_shift_morphology_equals_scipy(shape):
    from scipy import ndimage

    rng = np.random.default_rng(sum(shape))
    for density in (0.02, 0.3, 0.9, 1.0):
        m = rng.random(shape) < density
        assert np.array_equal(overlap._erode_cross(m), ndimage.binary_erosion(m)), density
        assert np.array_equal(overlap._edges(m), m ^ ndimage.binary_erosion(m))
        for radius in (0, 1, 2, 3, 4):
            ref = ndimage.binary_dilation(m, structure=_ball(radius)) if radius else m
            assert np.array_equal(overlap._dilate_ball(m, radius), ref), (density, radius)
    assert np.array_equal(overlap._erode_cross(np.ones((4, 5), bool)), ndimage.binary_erosion(np.ones((4, 5), bool)))  # 2-D


def test_roi_mask_equals_full_volume_dilation():
    from scipy import ndimage

    rng = np.random.default_rng(3)
    pred = np.zeros((3, 30, 26, 20), bool)
    truth = np.zeros_like(pred)
    pred[0, 10:15, 8:12, 5:9] = True
    truth[1, 0:3, 20:26, 17:20] = True  # touches the volume border
    pred[2, 25, 2, 10] = True
    brain = rng.random((30, 26, 20)) < 0.8
    for radius in (0, 2, 3):
        u = pred.any(0) | truth.any(0)
        ref = (ndimage.binary_dilation(u, structure=_ball(radius)) if radius else u) & brain
        assert np.array_equal(M.roi_mask(pred, truth, brain, radius), ref), radius
    assert not M.roi_mask(np.zeros_like(pred), None, brain).any()


def test_hd95_border_and_single_voxels_vs_monai():
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(11)
    shape = (16, 18, 12)
    cases = []
    a = np.zeros(shape, bool)
    a[0:5, 0:6, 0:4] = True  # touches three volume faces
    b = np.zeros(shape, bool)
    b[1:7, 0:5, 0:5] = True
    cases.append((a, b))
    one, two = np.zeros(shape, bool), np.zeros(shape, bool)
    one[3, 4, 5] = True
    two[12, 15, 2] = True
    cases.append((one, two))
    cases.append((rng.random(shape) < 0.1, rng.random(shape) < 0.2))  # scattered voxels
    for spacing in ((1.0, 1.0, 1.0), (0.8, 1.2, 3.0)):
        for p, t in cases:
            ref = compute_hausdorff_distance(torch.from_numpy(p)[None, None].float(), torch.from_numpy(t)[None, None].float(),
                                             percentile=95, spacing=spacing).item()
            assert M.hd95(p, t, spacing) == pytest.approx(ref, abs=1e-4)


def _outcomes(seed=0, n=40000):
    rng = np.random.default_rng(seed)
    truth = rng.random(n) < 0.2
    pred = np.where(rng.random(n) < 0.9, truth, ~truth)
    err = pred != truth
    u = np.clip(rng.beta(0.3, 3, n) + np.where(err, rng.uniform(0, 0.5, n), 0), 0, 1)
    u[:200] = 0.0
    return u, pred, truth, err


def test_fp_tp_fn_tn_auroc_vs_sklearn():
    u, pred, truth, err = _outcomes(1)
    fp, fn, tp, tn = M.uncertainty_bins(u, err, pred)
    assert (fp + fn).sum() == err.sum() and (tp + tn).sum() == (~err).sum() and (fp + tp).sum() == pred.sum()
    pp = pred
    assert M.auroc_from_bins(fp, tp) == pytest.approx(roc_auc_score(err[pp], u[pp]), abs=0.002)
    assert M.auroc_from_bins(fn, tn) == pytest.approx(roc_auc_score(err[~pp], u[~pp]), abs=0.002)


def test_ueo_and_bnf_vs_direct():
    u, pred, truth, err = _outcomes(2)
    fp, fn, tp, tn = M.uncertainty_bins(u, err, pred)
    curve = M.ueo_curve(fp + fn, tp + tn)
    for t, v in zip(M.UEO_THRESHOLDS, curve):
        unc = u >= t
        assert v == pytest.approx(2 * (unc & err).sum() / (unc.sum() + err.sum()), abs=1e-9), t
    for t in (0.05, 0.5, 0.9):
        keep = pred & ~(u >= t)  # remove uncertain predicted voxels
        gain = M.dice(keep, truth) > M.dice(pred, truth)
        assert M.fp_removal_benefit(fp, fn, tp, t) == float(gain), t


def test_budget_curve_vs_sorting():
    u, pred, truth, err = _outcomes(3)
    u = u + np.random.default_rng(0).uniform(0, 1e-6, u.size)  # no exact ties
    u = np.clip(u, 0, 1)
    ne, nc = M.uncertainty_bins(u, err)
    cap, ueo = M.budget_curve(ne, nc)
    order = np.argsort(-u, kind="stable")
    cum_err = np.cumsum(err[order])
    for i, b in enumerate(M.BUDGETS):
        k = int(round(b * u.size))
        exact_cap = cum_err[k - 1] / err.sum()
        exact_ueo = 2 * cum_err[k - 1] / (k + err.sum())
        assert cap[i] == pytest.approx(exact_cap, abs=0.01)
        assert ueo[i] == pytest.approx(exact_ueo, abs=0.01)
    assert 0 <= M.budget_auc(cap) <= 1
    # monotone: more budget never captures fewer errors
    assert (np.diff(cap) >= -1e-12).all()


def test_budget_perfect_ranking():
    err = np.zeros(10000, bool)
    err[:100] = True  # 1 % errors, ranked first
    u = np.where(err, 0.9, 0.001)
    cap, ueo = M.budget_curve(*M.uncertainty_bins(u, err))
    assert cap[M.BUDGETS.index(0.01)] == pytest.approx(1.0) and ueo[M.BUDGETS.index(0.01)] == pytest.approx(1.0)
    assert cap[M.BUDGETS.index(0.005)] == pytest.approx(0.5)


def test_integer_truth_masks_equal_bool():
    rng = np.random.default_rng(8)
    truth = rng.random((3, 14, 12, 10)) < 0.2
    prob = np.clip(truth * 0.6 + rng.random(truth.shape) * 0.5, 0, 1).astype(np.float32)
    brain = np.ones((14, 12, 10), bool)
    a = M.evaluate_patient(prob, prob, None, truth, brain)
    b = M.evaluate_patient(prob, prob, None, truth.astype(np.uint8), brain)
    assert repr(a) == repr(b)  # (repr: NaN == NaN)


def test_positions_in_brain_equal_searchsorted():
    rng = np.random.default_rng(4)
    brain = rng.random((13, 11, 9)) < 0.6
    idx = np.flatnonzero(brain)
    for box in ((slice(2, 9), slice(0, 11), slice(3, 8)), (slice(0, 13), slice(0, 11), slice(0, 9)), (slice(5, 6),) * 3):
        sub = brain[box] & (rng.random(brain[box].shape) < 0.5)
        full = np.zeros_like(brain)
        full[box] = sub
        assert np.array_equal(overlap._positions_in_brain(brain, idx, box, sub), np.searchsorted(idx, np.flatnonzero(full)))


def test_bbox_slices_definition():
    rng = np.random.default_rng(6)
    for _ in range(100):
        shape = tuple(rng.integers(1, 9, rng.integers(1, 4)))
        m = rng.random(shape) < rng.uniform(0, 0.1)
        ref = None
        if m.any():
            ref = tuple(slice(max(int(nz[0]) - 2, 0), min(int(nz[-1]) + 3, n)) for nz, n in
                        ((np.flatnonzero(m.any(axis=tuple(a for a in range(m.ndim) if a != ax))), m.shape[ax])
                         for ax in range(m.ndim)))
        assert M.bbox_slices(m, 2) == ref


def test_bnf_empty_truth_edge_cases():
    """Issue 20.9: TP = FN = 0 with 10 uncertain FP voxels: removing them leaves prediction and truth empty,
    Dice 0 -> 1 under the BraTS empty rule, so BnF counts a gain; checked against Dice on the masks."""
    from core.metrics.uncertainty import removal_raises_dice

    def bins(u, err, pred):
        return M.uncertainty_bins(np.asarray(u, np.float32), np.asarray(err, bool), np.asarray(pred, bool))

    n = 100
    truth = np.zeros(n, bool)
    pred = np.zeros(n, bool)
    pred[:10] = True
    for u_fp, t, want in ((0.9, 0.5, 1.0), (0.3, 0.5, 0.0)):  # all FP uncertain / all FP certain
        u = np.where(pred, u_fp, 0.01)
        fp, fn, tp, tn = bins(u, pred != truth, pred)
        assert M.fp_removal_benefit(fp, fn, tp, t) == want
        keep = pred & ~(u >= t)
        assert float(M.dice(keep, truth) > M.dice(pred, truth)) == want
    u = np.where(np.arange(n) < 5, 0.9, 0.3)  # half of the FP uncertain: Dice stays 0
    fp, fn, tp, tn = bins(u, pred != truth, pred)
    assert M.fp_removal_benefit(fp, fn, tp, 0.5) == 0.0
    # nothing predicted: NaN; all correct (TP only, all certain): no gain; vectorised form equals the scalar one
    assert math.isnan(M.fp_removal_benefit(*bins(np.zeros(n), truth, truth)[:3], 0.5))
    assert removal_raises_dice(0, 10, 0, 0, 10) == 1.0 and removal_raises_dice(5, 0, 0, 0, 0) == 0.0
    rng = np.random.default_rng(0)
    tp, fp, fn = rng.integers(0, 50, (3, 500))
    tpu, fpu = rng.integers(0, tp + 1), rng.integers(0, fp + 1)
    got = removal_raises_dice(tp, fp, fn, tpu, fpu)
    ref = np.where(tp + fp > 0, (fpu * tp > tpu * (tp + fp + fn)).astype(float), np.nan)
    nonempty = (tp + fn) > 0  # with truth present the paper's inequality holds exactly
    assert np.array_equal(got[nonempty], ref[nonempty], equal_nan=True)


@pytest.mark.parametrize("seed", range(5))
def test_over_and_under_confidence_brute_force(seed):
    """Over- / under-confidence from the bins equal a per-voxel computation in the predicted label's space:
    confidence max(p, 1 - p), correct = (p >= 0.5) == y, per equal-width bin of p; they sum to the ECE.
    Includes p = 0, 0.5 and 1 exactly."""
    from core.metrics.calibration import N_CAL_BINS, binned_calibration, calibration_bins
    rng = np.random.default_rng(seed)
    p = np.r_[rng.beta(0.4, 0.4, 5000), [0.0, 1.0, 0.5, 0.5]]
    y = (rng.random(p.size) < np.clip(p + rng.normal(0, 0.2, p.size), 0, 1)).astype(np.float64)
    c = binned_calibration(*calibration_bins(p, y))
    k = np.minimum((p * N_CAL_BINS).astype(int), N_CAL_BINS - 1)
    conf = np.maximum(p, 1 - p)
    correct = ((p >= 0.5) == (y > 0.5)).astype(np.float64)
    over = under = 0.0
    for b in np.unique(k):
        m = k == b
        d = conf[m].mean() - correct[m].mean()
        over += m.sum() / p.size * max(d, 0.0)
        under += m.sum() / p.size * max(-d, 0.0)
    assert c["overconfidence"] == pytest.approx(over, abs=1e-12)
    assert c["underconfidence"] == pytest.approx(under, abs=1e-12)
    assert c["overconfidence"] + c["underconfidence"] == pytest.approx(c["ece"], abs=1e-12)


def test_over_and_under_confidence_edge_cases():
    from core.metrics.calibration import binned_calibration, calibration_bins
    empty = binned_calibration(*calibration_bins(np.zeros(0), np.zeros(0)))
    assert np.isnan(empty["overconfidence"]) and np.isnan(empty["underconfidence"])
    right = binned_calibration(*calibration_bins(np.r_[0.0, 1.0, 1.0], np.r_[0.0, 1.0, 1.0]))  # saturated, all correct
    assert right["overconfidence"] == 0.0 and right["underconfidence"] == 0.0
    wrong = binned_calibration(*calibration_bins(np.r_[0.0, 1.0], np.r_[1.0, 0.0]))  # saturated, all wrong
    assert wrong["overconfidence"] == 1.0 and wrong["underconfidence"] == 0.0
