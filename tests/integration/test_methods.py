"""Uncertainty methods of issue 4: grammar, TTA, ensembles, temperature scaling, auxiliary network, EPKL,
mL1-ACE, volumes/CRPS, raters, quality prediction; each against an independent computation."""
import math

import numpy as np
import pytest
import torch

from core import metrics as M
from core.io.cohort import discover, labels_to_regions, load_case
from core.inference.modelset import ModelSet, load_model_set
from core.io.architectures import DEMO_MODELS, preprocess
from core.io.checkpoints import load_checkpoint
from core.inference.temperature import fit_temperature, mean_nll
from core.training.segmentation import ml1_ace_loss, train_model
from core.inference.methods import FLIPS, canonical_method, parse_method
from core.inference.uncertainty import _Accumulator, predict, unavailable_reason


@pytest.fixture(scope="module")
def case(tiny_cohort):
    return load_case(discover(tiny_cohort, "test")[0])


def _plain_probs(lm, image, flips=((),)):
    """Sigmoid outputs of a plain forward pass on each flipped input, flipped back: (n, R, X, Y, Z)."""
    x = preprocess(image, lm.card)
    lm.model.eval()
    outs = []
    with torch.no_grad():
        for f in flips:
            xi = torch.flip(x, f) if f else x
            o = torch.sigmoid(lm.model(xi))
            outs.append((torch.flip(o, f) if f else o)[0].numpy())
    return np.stack(outs)


def test_method_grammar():
    assert canonical_method("deterministic+tta") == "tta"
    assert canonical_method("checkpoint_ensemble+tta+ts") == "checkpoint_ensemble+tta+ts"
    assert parse_method("tta+ts") == parse_method("deterministic+tta+ts")
    assert parse_method("mc_dropout+tta").tta and not parse_method("mc_dropout").tta
    for bad in ("bogus", "deterministic+foo", "tta+ts+ts", "auxiliary+ts", ""):
        with pytest.raises(ValueError):
            parse_method(bad)
    assert len(FLIPS) == 8 and len(set(FLIPS)) == 8


def test_epkl_equals_bruteforce_pairwise_kl():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 3, size=(7, 3, 4, 5, 6)).astype(np.float32)
    z[:, 0, 0, 0, 0] = [30, -30, 0, 5, -5, 12, 1]  # saturated and mixed samples
    acc = _Accumulator()
    for zi in z:
        acc.add(torch.from_numpy(zi))
    p, ent, mi, epkl = (t.numpy() for t in acc.result())
    P = 1 / (1 + np.exp(-z.astype(np.float64)))
    lp, lq = -np.logaddexp(0, -z.astype(np.float64)), -np.logaddexp(0, z.astype(np.float64))  # ln p, ln(1-p)
    n = len(z)
    kl = np.zeros_like(P[0])
    for i in range(n):
        for j in range(n):
            if i != j:
                kl += P[i] * (lp[i] - lp[j]) + (1 - P[i]) * (lq[i] - lq[j])
    ref = kl / (n * (n - 1)) / math.log(2)
    assert np.allclose(epkl, ref, rtol=1e-4, atol=1e-5)
    assert np.allclose(p, P.mean(0), atol=1e-6)
    h = lambda q: -(q * np.log(np.clip(q, 1e-300, 1)) + (1 - q) * np.log(np.clip(1 - q, 1e-300, 1))) / math.log(2)
    assert np.allclose(mi, np.clip(h(P.mean(0)) - h(P).mean(0), 0, None), atol=1e-5)
    # identical samples: no disagreement
    acc = _Accumulator()
    for _ in range(3):
        acc.add(torch.from_numpy(z[0]))
    _, _, mi0, epkl0 = acc.result()
    assert float(epkl0.abs().max()) < 1e-6 and float(mi0.max()) < 1e-6


def test_tta_is_mean_of_flipped_passes(tiny_checkpoints, case):
    lm = load_checkpoint(tiny_checkpoints[1])
    pred = predict(lm, case.image, "tta", mc_batch=3)
    ref = _plain_probs(lm, case.image, FLIPS)
    assert pred.n_samples == 8 and pred.epkl is not None and pred.sample_volumes.shape == (8, 3)
    assert np.allclose(pred.prob, ref.mean(0), atol=2e-5)
    # (a 1-epoch model sits near p = 0.5: batched and single passes may round a voxel or two differently)
    assert np.abs(pred.sample_volumes - (ref >= 0.5).reshape(8, 3, -1).sum(-1)).max() <= 3


def test_ensembles_average_their_members(unet_set, case):
    ms = load_model_set(unet_set)
    for method, members in (("ensemble", [ms.primary] + ms.ensemble), ("checkpoint_ensemble", ms.snapshots + [ms.primary])):
        pred = predict(ms, case.image, method)
        ref = np.stack([_plain_probs(m, case.image)[0] for m in members])
        assert pred.n_samples == len(members)
        assert np.allclose(pred.prob, ref.mean(0), atol=2e-5), method
    bare = ModelSet(ms.primary)
    for method in ("ensemble", "checkpoint_ensemble", "auxiliary"):
        assert unavailable_reason(method, bare)
        with pytest.raises(ValueError, match="unavailable"):
            predict(bare, case.image, method)
    assert unavailable_reason("ensemble+tta+ts", ms) is None


def test_members_must_fit_the_primary(unet_set, tmp_path):
    from core.io.checkpoints import save_checkpoint

    lm = load_checkpoint(unet_set["checkpoint"])
    other = save_checkpoint(tmp_path / "other.pt", lm.model, {**lm.card, "spacing_mm": [1.0, 1.0, 1.0]})
    with pytest.raises(ValueError, match="does not fit.*spacing_mm"):
        load_model_set({"checkpoint": unet_set["checkpoint"], "ensemble": [str(other)]})
    with pytest.raises(ValueError, match="not an auxiliary"):
        load_model_set({"checkpoint": unet_set["checkpoint"], "auxiliary": unet_set["ensemble"][0]})
    with pytest.raises(ValueError, match="unknown model keys"):
        load_model_set({"checkpoint": unet_set["checkpoint"], "members": []})


def test_cache_shares_deterministic_passes(unet_set, case):
    ms = load_model_set(unet_set)
    cache = {}
    a = predict(ms, case.image, "deterministic", cache=cache)
    n_cached = len(cache)
    b = predict(ms, case.image, "ensemble", cache=cache)
    assert len(cache) == n_cached + 2  # only the two extra members ran
    fresh = predict(ms, case.image, "ensemble")
    assert np.allclose(b.prob, fresh.prob, atol=1e-6)
    assert np.allclose(a.prob, predict(ms, case.image, "deterministic").prob, atol=1e-6)


def test_temperature_fit_recovers_known_temperature():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 4, 200_000)
    y = rng.random(z.size) < 1 / (1 + np.exp(-z / 2.5))  # true temperature 2.5
    f = fit_temperature(z, y)
    assert abs(f["temperature"] - 2.5) < 0.05
    assert f["nll_after"] <= f["nll_before"]
    # the fitted NLL is a minimum: nearby temperatures are worse
    for t in (f["temperature"] * 0.9, f["temperature"] * 1.1):
        assert mean_nll(z, y.astype(float), t) > f["nll_after"]
    # same minimiser as a 1-parameter logistic regression without intercept (scikit-learn)
    from sklearn.linear_model import LogisticRegression

    lr = LogisticRegression(fit_intercept=False, C=1e6, tol=1e-10).fit(z[:, None], y)
    assert abs(1 / lr.coef_[0, 0] - f["temperature"]) < 1e-3
    one_class = fit_temperature(z[:10], np.zeros(10))
    assert math.isnan(one_class["temperature"])


def test_ts_keeps_the_segmentation_and_changes_probabilities(unet_set, case):
    ms = load_model_set(unet_set)
    ms.temperature = np.array([0.5, 2.0, 1.3], np.float32)
    det = predict(ms, case.image, "deterministic")
    ts = predict(ms, case.image, "deterministic+ts")
    assert np.array_equal(det.prob >= 0.5, ts.prob >= 0.5)
    assert not np.allclose(det.prob, ts.prob)
    z = np.log(det.prob.astype(np.float64)) - np.log1p(-det.prob.astype(np.float64))
    ok = np.abs(z) < 10
    ref = 1 / (1 + np.exp(-z / ms.temperature[:, None, None, None]))
    assert np.allclose(ts.prob[ok], ref[ok], atol=1e-4)
    ms.temperature = None
    with pytest.raises(ValueError, match="temperatures"):
        predict(ms, case.image, "deterministic+ts")


def test_auxiliary_confidence_follows_paper_002(unet_set, case):
    ms = load_model_set(unet_set)
    det = predict(ms, case.image, "deterministic")
    aux = predict(ms, case.image, "auxiliary")
    y = det.prob >= 0.5
    assert np.array_equal(aux.prob >= 0.5, y), "the auxiliary method keeps the model's segmentation"
    assert (aux.prob[y] >= 0.5).all() and (aux.prob[~y] < 0.5).all()
    q = np.where(y, 2 * (1 - aux.prob), 2 * aux.prob)  # invert p = y(1 - q/2) + (1 - y) q/2
    assert q.min() >= -1e-6 and q.max() <= 1 + 1e-6
    # entropy of the confidence grows with q: same ranking as q itself
    order = np.argsort(q.ravel())
    assert np.all(np.diff(aux.entropy.ravel()[order]) >= -1e-5)
    assert aux.mi is None and aux.epkl is None


def test_ml1_ace_hard_equals_metric_ace():
    rng = np.random.default_rng(2)
    logits = torch.from_numpy(rng.normal(0, 2, (2, 3, 8, 8, 8)).astype(np.float32))
    target = torch.from_numpy((rng.random((2, 3, 8, 8, 8)) < 0.3).astype(np.float32))
    loss = ml1_ace_loss(logits, target, soft=False)
    p = torch.sigmoid(logits).numpy()
    ref = np.mean([M.calibration_from_bins(*M.calibration_bins(p[b, r].ravel(), target[b, r].numpy().ravel() > 0))["ace"]
                   for b in range(2) for r in range(3)])
    assert abs(float(loss) - ref) < 1e-5
    # both variants are differentiable; soft binning is smooth: close to hard on well-spread data
    for soft in (False, True):
        lg = logits.clone().requires_grad_(True)
        ml1_ace_loss(lg, target, soft=soft).backward()
        assert torch.isfinite(lg.grad).all() and lg.grad.abs().sum() > 0
    # perfectly calibrated constant prediction: p = 0.5 and half the voxels positive in one bin -> 0
    t = torch.zeros(1, 1, 4, 4, 4)
    t.view(-1)[:32] = 1
    assert float(ml1_ace_loss(torch.zeros(1, 1, 4, 4, 4), t)) < 1e-7


def test_ml1_ace_soft_equals_dense_triangular_kernel():
    """The O(N) two-bin soft binning equals the dense definition, value and gradient: w_ib = max(0, 1 - n |p_i -
    c_b|) between the first and last bin centres, the whole weight in the edge bin outside them (the reference
    implementation's edge rule), bins non-empty at total weight >= 0.01, empty-target regions count 0."""
    rng = np.random.default_rng(6)
    logits = torch.from_numpy(rng.normal(0, 3, (2, 3, 10, 10, 10)))
    logits[0, 0, 0, 0, :4] = torch.tensor([-50.0, 50.0, 0.0, 1e-9])  # p = 0, 1, 0.5 (a bin edge), ~0.5
    target = torch.from_numpy((rng.random((2, 3, 10, 10, 10)) < 0.2).astype(np.float32))
    target[1, 2] = 0  # an empty region: its ACE is 0 but it still counts in the mean

    def dense(lg, n_bins=20):
        p, y = torch.sigmoid(lg.float()).flatten(2), target.flatten(2)
        c = (torch.arange(n_bins) + 0.5) / n_bins
        w = (1 - (p.unsqueeze(-1) - c).abs() * n_bins).clamp(min=0)
        below, above = (p < c[0]).unsqueeze(-1), (p > c[-1]).unsqueeze(-1)
        edge0 = torch.zeros(n_bins, dtype=torch.bool)
        edge0[0] = True
        w = torch.where(below, edge0.to(w.dtype), w)
        w = torch.where(above, edge0.flip(0).to(w.dtype), w)
        cnt, sp, sy = w.sum(2), (w * p.unsqueeze(-1)).sum(2), (w * y.unsqueeze(-1)).sum(2)
        ne = cnt >= 0.01
        ace = ((sp - sy).abs() / cnt.clamp(min=1e-6) * ne).sum(-1) / ne.sum(-1).clamp(min=1)
        return (ace * (y.sum(-1) > 0)).mean()

    a, b = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    la, lb = ml1_ace_loss(a, target, soft=True), dense(b)
    la.backward()
    lb.backward()
    assert abs(float(la.detach()) - float(lb.detach())) < 1e-6
    assert torch.allclose(a.grad, b.grad, atol=1e-6)
    assert float(a.grad[1, 2].abs().sum()) == 0.0  # the empty region teaches nothing


def _logit(p):
    p = torch.as_tensor(p, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


def test_ml1_ace_matches_the_reference_rules_by_hand():
    """Each point where the authors' reference (cai4cai/Average-Calibration-Losses) and our former loss differed,
    hand-computed: (1) an empty target is ignored (5 FP voxels at p = 0.95 of 1000: 0, not 0.475); (2) a soft
    bin with total weight < 0.01 is empty; (3) voxels outside the outer bin centres put their whole weight in
    the edge bin; (4) hard bins are right-closed, (e_k, e_k+1]."""
    lg = torch.full((1, 1, 10, 10, 10), -60.0)
    lg.view(-1)[:5] = _logit(0.95)
    empty = torch.zeros_like(lg)
    for soft in (False, True):
        assert float(ml1_ace_loss(lg, empty, soft=soft)) == 0.0
    assert float(ml1_ace_loss(lg, empty, soft=False, ignore_empty_classes=False)) == pytest.approx(0.475, abs=1e-6)
    # (2) A (y = 0) puts 0.005 of its weight into bin 4, C (y = 1) 0.004: bin 4 holds 0.009 < 0.01 and is empty
    p_a, p_c = 0.175 + 0.005 / 20, 0.275 - 0.004 / 20
    lg2, t2 = _logit([p_a, p_c]).view(1, 1, 2, 1, 1), torch.tensor([0.0, 1.0]).view(1, 1, 2, 1, 1)
    assert float(ml1_ace_loss(lg2, t2, soft=True)) == pytest.approx((p_a + (1 - p_c)) / 2, abs=1e-5)
    # (3) p = 0.01 (below c_0 = 0.025, y = 1) weighs 1 in bin 0 with p = 0.001 (y = 0): bin 0 gap
    # |0.011 - 1| / 2 -> 0.4945; without the edge rule the weights were 0.7 and 0.52 (gap 0.5676)
    lg3, t3 = _logit([0.01, 0.001]).view(1, 1, 2, 1, 1), torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1)
    assert float(ml1_ace_loss(lg3, t3, soft=True)) == pytest.approx(abs(0.011 - 1) / 2, abs=1e-5)
    # (4) p = 0.5 exactly lies in bin 9 = (0.45, 0.5], not bin 10: with p = 0.49 (y = 0) one bin, gap |0.99 - 1| / 2
    lg4, t4 = _logit([0.5, 0.49]).view(1, 1, 2, 1, 1), torch.tensor([1.0, 0.0]).view(1, 1, 2, 1, 1)
    assert float(ml1_ace_loss(lg4, t4, soft=False)) == pytest.approx(abs(0.99 - 1) / 2, abs=1e-6)


def test_crps_and_volume_distribution_against_properscoring():
    properscoring = pytest.importorskip("properscoring")
    rng = np.random.default_rng(3)
    for n in (1, 2, 10, 25):
        x = rng.normal(50, 8, n)
        for obs in (50.0, 20.0, 80.0):
            assert abs(M.crps_ensemble(x, obs) - float(properscoring.crps_ensemble(obs, x))) < 1e-9
    d = M.volume_distribution(np.array([10.0, 12, 14, 16, 18]), gt_ml=11.0)
    assert d["vol_q05_ml"] == pytest.approx(10.4) and d["vol_q95_ml"] == pytest.approx(17.6)
    assert d["vol_sample_mean_ml"] == 14.0
    assert d["vol_pi_lo_ml"] == 10.0 and d["vol_pi_hi_ml"] == 18.0 and d["vol_pi_nominal"] == pytest.approx(4 / 6)
    assert d["vol_in_pi"] == 1.0
    assert M.volume_distribution(np.array([10.0, 12]), gt_ml=30.0)["vol_in_pi"] == 0.0
    assert "vol_crps_ml" not in M.volume_distribution(np.array([1.0]))


def test_soft_label_metrics_against_torch_and_hard_labels():
    rng = np.random.default_rng(4)
    p = rng.random(5000)
    p[:5] = [0, 1, 0, 1, 0.5]
    s = rng.choice([0, 1 / 3, 2 / 3, 1], size=p.size)
    got = M.soft_label_metrics(p, s)
    pc = np.clip(p, M.NLL_EPS, 1 - M.NLL_EPS)
    ref_nll = torch.nn.functional.binary_cross_entropy(torch.from_numpy(pc), torch.from_numpy(s)).item()
    assert abs(got["soft_nll"] - ref_nll) < 1e-9
    assert abs(got["soft_brier"] - np.mean((p - s) ** 2)) < 1e-12
    hard = s >= 0.5
    h = M.soft_label_metrics(p, hard.astype(float))
    n, sp, st = M.calibration_bins(p, hard)
    assert h["soft_ece"] == pytest.approx(M.calibration_from_bins(n, sp, st)["ece"], abs=1e-12)
    assert h["soft_nll"] == pytest.approx(M.nll(p, hard), abs=1e-9)


def test_demo_raters_vary_the_boundary_plausibly(tiny_cohort):
    files = discover(tiny_cohort, "test")
    assert all(len(f.raters) == 3 for f in files)
    assert not any(f.raters for f in discover(tiny_cohort, "train"))
    c = load_case(files[0])
    truth = labels_to_regions(c.seg)
    vols = []
    for r in c.raters:
        reg = labels_to_regions(r)
        assert (reg[2] <= reg[1]).all() and (reg[1] <= reg[0]).all()  # nested
        assert M.dice(reg[0], truth[0]) > 0.6
        vols.append(reg[0].sum())
    assert vols[0] < vols[2], "the tight rater draws less than the generous one"
    assert abs(vols[1] - truth[0].sum()) < 0.3 * truth[0].sum()
    assert not np.array_equal(labels_to_regions(c.raters[0]), labels_to_regions(c.raters[1]))


def test_bad_rater_file_names_the_patient(corrupt_copy):
    f = discover(corrupt_copy, "test")[0]
    f.raters[1].write_bytes(b"not a nifti")
    from core.io.cohort import CaseError

    with pytest.raises(CaseError, match=f.patient_id + ".*rater2"):
        load_case(discover(corrupt_copy, "test")[0])


def test_quality_prediction_on_synthetic_cohort():
    import pandas as pd

    from core.analysis.quality import quality_for

    rng = np.random.default_rng(5)
    rows = []
    for i in range(60):
        ent = rng.uniform(0.05, 0.6)
        dice = float(np.clip(0.95 - 1.2 * ent + rng.normal(0, 0.03), 0, 1))
        pid = f"P{i:03d}"
        for reg in ("WT", "TC", "ET"):
            rows += [(pid, reg, "pred", "mean_entropy", ent + rng.normal(0, 0.01)),
                     (pid, reg, "pred", "mean_confidence", 1 - ent / 2 + rng.normal(0, 0.01)),
                     (pid, reg, "brain", "uncertain_fraction", rng.uniform(0, 0.01)),
                     (pid, reg, "brain", "volume_pred_ml", rng.uniform(5, 50)),
                     (pid, reg, "brain", "dice", dice)]
    long = pd.DataFrame(rows, columns=["patient_id", "region", "mask", "metric", "value"])
    per, summ = quality_for(long)
    assert set(summ["region"]) == {"WT", "TC", "ET"} and (summ["n_patients"] == 60).all()
    assert (summ["r2"] > 0.7).all() and (summ["pearson_r"] > 0.85).all()
    assert (summ["score_spearman"] < -0.8).all(), "higher uncertainty score, lower Dice"
    wt = per[per.region == "WT"]
    assert wt["flagged"].sum() >= 15 and wt.loc[wt.flagged, "dice"].mean() < wt.loc[~wt.flagged, "dice"].mean()
    # too few patients: nothing predicted
    assert quality_for(long[long.patient_id < "P005"])[1].empty
