"""Metric engine: pure functions, arrays in, numbers and bin counts out. Imports nothing of the project.

Shapes and units
----------------
* ``prob``: (R, X, Y, Z) float, region positive-class probabilities in [0, 1] (R = 3: WT, TC, ET)
* ``truth``: (R, X, Y, Z) bool ground-truth region masks
* ``entropy``, ``mi``: (R, X, Y, Z) float in [0, 1] (bits: binary entropy / ln 2; MI in bits)
* ``mask``: (X, Y, Z) bool voxel set (``brain`` = any input channel non-zero; ``roi`` see :func:`roi_mask`)
* ``spacing``: voxel size in mm; volumes are reported in millilitres

Binning conventions (written in the README too)
-----------------------------------------------
* Calibration: ``n_bins`` (default 20) equal-width bins on the region probability p; bin k holds
  ``k/n <= p < (k+1)/n`` and the last bin also holds p = 1 (no extra bin for p = 1).
* Uncertainty: :data:`UNC_EDGES`, 1024 bins: bin 0 = [0, 1e-7), bins 1..1023 log-spaced from 1e-7 to 1
  (the last includes 1). Fine near 0 where most voxels sit, so AUROC from bins matches the exact value.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

N_CAL_BINS = 20
UNC_MIN = 1e-7
N_UNC_BINS = 1024
UNC_EDGES = np.concatenate([[0.0], np.geomspace(UNC_MIN, 1.0, N_UNC_BINS)])  # 1025 edges, 1024 bins
NLL_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] for NLL only
ROI_RADIUS_VOX = 3  # ROI = (ground truth | prediction) dilated by a ball of this radius, within the brain


class MetricInputError(ValueError):
    """Arrays that cannot be evaluated (shape mismatch, NaN/Inf, probabilities outside [0, 1])."""


def check_inputs(prob: np.ndarray, truth: np.ndarray | None = None, *others: np.ndarray | None) -> None:
    if not np.isfinite(prob).all():
        raise MetricInputError(f"probabilities contain {int((~np.isfinite(prob)).sum())} NaN/Inf values")
    if prob.size and (prob.min() < 0 or prob.max() > 1):
        raise MetricInputError(f"probabilities outside [0, 1]: min {prob.min()}, max {prob.max()}")
    for a in (truth, *others):
        if a is None:
            continue
        if a.shape != prob.shape:
            raise MetricInputError(f"shape mismatch: {a.shape} vs probabilities {prob.shape}")
        if a.dtype != bool and not np.isfinite(a).all():
            raise MetricInputError(f"input contains {int((~np.isfinite(a)).sum())} NaN/Inf values")


# ----------------------------------------------------------------------------------------- overlap
def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two bool masks with the BraTS empty rules: 1 when both are empty, 0 when only one is."""
    p, t = pred.astype(bool), truth.astype(bool)
    s = int(p.sum()) + int(t.sum())
    if s == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / s


def roi_mask(pred: np.ndarray, truth: np.ndarray | None, brain: np.ndarray, radius: int = ROI_RADIUS_VOX) -> np.ndarray:
    """(X,Y,Z) bool: union of prediction and ground truth (any region), dilated by a ball of ``radius`` voxels,
    intersected with the brain. ``pred``/``truth`` are (R, X, Y, Z) bool; truth may be None."""
    u = pred.any(0) if pred.ndim == 4 else pred.copy()
    if truth is not None:
        u = u | (truth.any(0) if truth.ndim == 4 else truth)
    if radius > 0 and u.any():
        r = np.arange(-radius, radius + 1)
        ball = (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius**2
        u = ndimage.binary_dilation(u, structure=ball)
    return u & brain


# ------------------------------------------------------------------------------------- calibration
def calibration_bins(prob: np.ndarray, truth: np.ndarray, n_bins: int = N_CAL_BINS):
    """Equal-width reliability bins of one region over a voxel set (1-D arrays of the masked voxels).

    Returns (n, sum_prob, sum_true): int64 counts, float64 sums of p and of the 0/1 label per bin.
    """
    p = np.asarray(prob, dtype=np.float64).ravel()
    idx = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    n = np.bincount(idx, minlength=n_bins)
    sp = np.bincount(idx, weights=p, minlength=n_bins)
    st = np.bincount(idx, weights=np.asarray(truth, dtype=np.float64).ravel(), minlength=n_bins)
    return n, sp, st


def calibration_from_bins(n, sum_prob, sum_true) -> dict:
    """ECE, ACE, MCE and the signed gap from (summed) reliability bins.

    ECE = sum_k n_k/N |acc_k - conf_k|; ACE = mean over non-empty bins of |acc_k - conf_k|;
    MCE = max over non-empty bins; gap = sum_k n_k/N (conf_k - acc_k) = mean p - mean y
    (> 0: probabilities too high for the observed frequency). NaN for an empty voxel set.
    """
    n = np.asarray(n, dtype=np.float64)
    N = n.sum()
    if N == 0:
        return {"ece": math.nan, "ace": math.nan, "mce": math.nan, "cal_gap": math.nan}
    ne = n > 0
    conf = np.asarray(sum_prob, np.float64)[ne] / n[ne]
    acc = np.asarray(sum_true, np.float64)[ne] / n[ne]
    gap = np.abs(acc - conf)
    return {
        "ece": float((n[ne] * gap).sum() / N),
        "ace": float(gap.mean()),
        "mce": float(gap.max()),
        "cal_gap": float((np.asarray(sum_prob).sum() - np.asarray(sum_true).sum()) / N),
    }


def reliability_curve(n, sum_prob, sum_true, n_bins: int | None = None):
    """(bin centre, mean confidence, accuracy, count) per bin; NaN confidence/accuracy in empty bins."""
    n = np.asarray(n, np.float64)
    nb = n_bins or len(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.where(n > 0, np.asarray(sum_prob) / n, np.nan)
        acc = np.where(n > 0, np.asarray(sum_true) / n, np.nan)
    centres = (np.arange(nb) + 0.5) / nb
    return centres, conf, acc, n


def brier(prob: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared error of p against the 0/1 label over the given voxels (NaN if none)."""
    p = np.asarray(prob, np.float64).ravel()
    if p.size == 0:
        return math.nan
    return float(np.mean((p - np.asarray(truth, np.float64).ravel()) ** 2))


def nll(prob: np.ndarray, truth: np.ndarray, eps: float = NLL_EPS) -> float:
    """Mean binary negative log-likelihood (nats) with p clipped to [eps, 1 - eps] (NaN if no voxels)."""
    p = np.clip(np.asarray(prob, np.float64).ravel(), eps, 1 - eps)
    if p.size == 0:
        return math.nan
    y = np.asarray(truth, bool).ravel()
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


# ------------------------------------------------------------------------- uncertainty vs error
def uncertainty_bin_index(u: np.ndarray) -> np.ndarray:
    """Bin index (int64) of uncertainty values in [0, 1] on :data:`UNC_EDGES` (values clipped to [0, 1])."""
    u = np.clip(np.asarray(u, np.float64), 0.0, 1.0)
    out = np.zeros(u.shape, np.int64)
    pos = u >= UNC_MIN
    # analytic log-bin index; equivalent to searchsorted(UNC_EDGES, u, 'right') - 1 up to rounding at edges
    k = np.floor(np.log(u[pos] / UNC_MIN) / -np.log(UNC_MIN) * (N_UNC_BINS - 1)).astype(np.int64) + 1
    out[pos] = np.minimum(k, N_UNC_BINS - 1)
    return out


def uncertainty_bins(u: np.ndarray, error: np.ndarray):
    """Histogram of uncertainty split by voxel error (1-D masked arrays). Returns (n_error, n_correct) int64."""
    idx = uncertainty_bin_index(np.asarray(u).ravel())
    e = np.asarray(error, bool).ravel()
    n_err = np.bincount(idx[e], minlength=N_UNC_BINS)
    n_cor = np.bincount(idx[~e], minlength=N_UNC_BINS)
    return n_err, n_cor


def auroc_from_bins(n_error, n_correct) -> float:
    """AUROC of uncertainty for separating wrong (positive) from right voxels, from binned counts.

    AUROC = P(u_error > u_correct) + 0.5 P(u_error = u_correct), with voxels in the same bin counted as
    ties. NaN when either class is empty.
    """
    ne = np.asarray(n_error, np.float64)
    nc = np.asarray(n_correct, np.float64)
    P, N = ne.sum(), nc.sum()
    if P == 0 or N == 0:
        return math.nan
    below = np.cumsum(nc) - nc
    return float((ne * (below + 0.5 * nc)).sum() / (P * N))


def auroc_exact(u: np.ndarray, error: np.ndarray) -> float:
    """Exact tie-aware AUROC (Mann-Whitney U / (P N)) of ``u`` for ``error`` (1-D arrays). NaN if one class."""
    u = np.asarray(u, np.float64).ravel()
    e = np.asarray(error, bool).ravel()
    P = int(e.sum())
    N = e.size - P
    if P == 0 or N == 0:
        return math.nan
    ranks = _average_ranks(u)
    return float((ranks[e].sum() - P * (P + 1) / 2) / (P * N))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.concatenate([[True], xs[1:] != xs[:-1], [True]])
    starts = np.flatnonzero(boundaries)
    avg = (starts[:-1] + starts[1:] - 1) / 2.0 + 1.0  # 1-based average rank of each tie group
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.repeat(avg, np.diff(starts))
    return ranks


# ------------------------------------------------------------------------------- per-patient suite
def evaluate_patient(prob: np.ndarray, entropy: np.ndarray, mi: np.ndarray | None, truth: np.ndarray | None,
                     brain: np.ndarray, regions=("WT", "TC", "ET"), spacing=(1.0, 1.0, 1.0), threshold: float = 0.5,
                     n_bins: int = N_CAL_BINS, roi_radius: int = ROI_RADIUS_VOX) -> dict:
    """All per-patient numbers and bins of one prediction.

    Returns a dict of three lists of tuples:
    ``metrics`` (region, mask, metric, value); ``calibration_bins`` (region, mask, bin, n, sum_prob, sum_true);
    ``uncertainty_bins`` (region, mask, measure, bin, n_error, n_correct), non-empty bins only.
    ``truth`` None (no ground truth): only uncertainty aggregates and predicted volumes are produced.
    """
    check_inputs(prob, truth, entropy, mi)
    if brain.shape != prob.shape[1:]:
        raise MetricInputError(f"brain mask shape {brain.shape} does not match {prob.shape[1:]}")
    pred = prob >= threshold
    vox_ml = float(np.prod(spacing)) / 1000.0
    masks = {"brain": brain, "roi": roi_mask(pred, truth, brain, roi_radius)}
    rows, cal_rows, unc_rows = [], [], []
    for r, name in enumerate(regions):
        p_r, pred_r = prob[r], pred[r]
        rows.append((name, "brain", "volume_pred_ml", float(pred_r.sum()) * vox_ml))
        if truth is not None:
            t_r = truth[r]
            rows.append((name, "brain", "volume_gt_ml", float(t_r.sum()) * vox_ml))
            rows.append((name, "brain", "dice", dice(pred_r, t_r)))
        for mname, m in masks.items():
            ent = entropy[r][m]
            rows.append((name, mname, "mean_entropy", float(ent.mean()) if ent.size else math.nan))
            if mi is not None:
                mi_m = mi[r][m]
                rows.append((name, mname, "mean_mi", float(mi_m.mean()) if mi_m.size else math.nan))
            if mname == "brain":
                pe = entropy[r][pred_r]
                rows.append((name, "pred", "mean_entropy", float(pe.mean()) if pe.size else math.nan))
            if truth is None:
                continue
            pm, tm = p_r[m], truth[r][m]
            n, sp, st = calibration_bins(pm, tm, n_bins)
            cal = calibration_from_bins(n, sp, st)
            for k in ("ece", "ace", "mce", "cal_gap"):
                rows.append((name, mname, k, cal[k]))
            rows.append((name, mname, "brier", brier(pm, tm)))
            rows.append((name, mname, "nll", nll(pm, tm)))
            cal_rows += [(name, mname, b, int(n[b]), float(sp[b]), float(st[b])) for b in np.flatnonzero(n)]
            err = pred_r[m] != tm
            for measure, u in (("entropy", entropy[r]), ("mi", mi[r] if mi is not None else None)):
                if u is None:
                    continue
                ne, nc = uncertainty_bins(u[m], err)
                rows.append((name, mname, f"auroc_{measure}", auroc_from_bins(ne, nc)))
                nz = np.flatnonzero(ne + nc)
                unc_rows += [(name, mname, measure, int(b), int(ne[b]), int(nc[b])) for b in nz]
    return {"metrics": rows, "calibration_bins": cal_rows, "uncertainty_bins": unc_rows}
