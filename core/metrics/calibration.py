"""Calibration from equal-width reliability bins: bin counts, ECE / ACE / MCE / gap, Brier, NLL, reliability.

Bins: ``n_bins`` (default 20) equal-width bins on the region probability p; bin k holds k/n <= p < (k+1)/n and
the last bin also holds p = 1.
"""
from __future__ import annotations

import math

import numpy as np

from core.metrics import validation
from core.metrics.binning import dense_bins


N_CAL_BINS = 20
# the per-patient calibration metrics of one voxel set stored from the bins (:func:`binned_calibration`)
CAL_METRICS = ("ece", "ace", "mce", "cal_gap", "overconfidence", "underconfidence")


NLL_EPS = float(np.finfo(np.float64).eps)  # p clipped to [eps, 1 - eps] for NLL only (as scikit-learn log_loss)


# ------------------------------------------------------------------------------------- calibration
def calibration_bins(prob: np.ndarray, truth: np.ndarray, n_bins: int = N_CAL_BINS):
    """Equal-width reliability bins of one region over a voxel set (1-D arrays of the masked voxels).

    Returns (n, sum_prob, sum_true): int64 counts, float64 sums of p and of the 0/1 label per bin.
    """
    p = np.asarray(prob).ravel()
    idx = calibration_bin_index(p, n_bins)
    return _calibration_bins_idx(idx, p, truth, n_bins)


def calibration_bin_index(p: np.ndarray, n_bins: int = N_CAL_BINS) -> np.ndarray:
    """Equal-width bin of each probability: floor(p * n_bins), with p = 1 in the last bin (int64)."""
    return np.minimum((np.asarray(p, np.float64) * n_bins).astype(np.int64), n_bins - 1)


def _calibration_bins_idx(idx, p, truth, n_bins):
    n = np.bincount(idx, minlength=n_bins)
    sp = np.bincount(idx, weights=p, minlength=n_bins)
    st = np.bincount(idx, weights=np.asarray(truth, dtype=np.float64).ravel(), minlength=n_bins)
    return n, sp, st


def ece_from_gap_sums(gap_sums, n_total) -> np.ndarray:
    """ECE from per-bin gap sums, vectorised over leading axes.

    Since n_k |acc_k - conf_k| = |sum_true_k - sum_prob_k|, ECE = sum_k n_k/N |acc_k - conf_k|
    = sum_k |sum_prob_k - sum_true_k| / N. This is the one ECE formula of the project: the per-patient suite,
    the cohort summaries, the bootstrap replicates and the leaderboard all reach it.

    Args:
        gap_sums: (..., K) float, sum_prob_k - sum_true_k per bin (any sign).
        n_total: (...) float, voxels N over all bins.

    Returns:
        (...) float64 ECE in [0, 1]; NaN where N = 0.
    """
    n_total = np.asarray(n_total, np.float64)
    num = np.abs(np.asarray(gap_sums)).sum(axis=-1)  # in the input's precision (float32 replicate sums stay so)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_total > 0, num / np.where(n_total > 0, n_total, 1.0), np.nan)


def binned_calibration(n, sum_prob, sum_true) -> dict[str, np.ndarray]:
    """ECE, ACE, MCE and the signed gap from reliability bins, vectorised over leading axes.

    Args:
        n: (..., K) voxel counts per equal-width bin.
        sum_prob: (..., K) sums of the region probability p per bin.
        sum_true: (..., K) sums of the 0/1 (or soft) label per bin.

    Returns:
        dict of (...) float64 arrays: ``ece`` = sum_k n_k/N |acc_k - conf_k| (:func:`ece_from_gap_sums`);
        ``ace`` = mean over non-empty bins of |acc_k - conf_k|; ``mce`` = their maximum; ``cal_gap`` =
        sum_k n_k/N (conf_k - acc_k) = mean p - mean y (> 0: probabilities too high for the observed
        frequency; this is over-*segmentation*, not over-confidence); ``overconfidence`` /
        ``underconfidence`` = sum_k n_k/N max(0, +-(confidence_k - accuracy_k)) in the space of the predicted
        label (paper 002, Fig. 1): a bin with p >= 0.5 predicts tumour, its confidence is conf_k and its accuracy
        acc_k; a bin below 0.5 predicts background, its confidence is 1 - conf_k and its accuracy 1 - acc_k. So
        ``overconfidence + underconfidence == ece``, and 0.1 / 0.9 predicted where the true rates are 0.3 / 0.7 is
        over-confident by 0.2 with ``cal_gap`` 0. NaN where the voxel set is empty (N = 0).
    """
    n = np.asarray(n, np.float64)
    sum_prob, sum_true = np.asarray(sum_prob, np.float64), np.asarray(sum_true, np.float64)
    N = n.sum(axis=-1)
    ne = n > 0
    safe = np.where(ne, n, 1.0)
    gap = np.where(ne, np.abs(sum_true / safe - sum_prob / safe), 0.0)  # |acc_k - conf_k| per non-empty bin
    k = ne.sum(axis=-1)
    empty = N == 0
    K = n.shape[-1]
    # +1 where the bin predicts tumour (its centre >= 0.5), -1 where it predicts background
    side = np.where((np.arange(K) + 0.5) / K >= 0.5, 1.0, -1.0)
    signed = side * (sum_prob - sum_true)  # n_k (confidence_k - accuracy_k)
    safe_n = np.where(empty, 1.0, N)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "ece": ece_from_gap_sums(sum_prob - sum_true, N),
            "ace": np.where(empty, np.nan, gap.sum(axis=-1) / np.maximum(k, 1)),
            "mce": np.where(empty, np.nan, np.where(ne, gap, -np.inf).max(axis=-1, initial=-np.inf)),
            "cal_gap": np.where(empty, np.nan, (sum_prob.sum(axis=-1) - sum_true.sum(axis=-1)) / safe_n),
            "overconfidence": np.where(empty, np.nan, np.maximum(signed, 0.0).sum(axis=-1) / safe_n),
            "underconfidence": np.where(empty, np.nan, np.maximum(-signed, 0.0).sum(axis=-1) / safe_n),
        }


def calibration_from_bins(n, sum_prob, sum_true) -> dict:
    """:func:`binned_calibration` of one set of bins (1-D arrays of length K) as Python floats: ece, ace, mce,
    cal_gap, overconfidence, underconfidence (NaN for an empty voxel set)."""
    return {k: float(v) for k, v in binned_calibration(n, sum_prob, sum_true).items()}


def brier(prob: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared error of p against the 0/1 label over the given voxels (NaN if none)."""
    p = np.asarray(prob, np.float64).ravel()
    if p.size == 0:
        return math.nan
    return float(np.mean((p - np.asarray(truth, np.float64).ravel()) ** 2))


def nll(prob: np.ndarray, truth: np.ndarray, eps: float = NLL_EPS) -> float:
    """Mean binary negative log-likelihood (nats) with p clipped to [eps, 1 - eps] (NaN if no voxels).

    ``truth`` bool (hard labels) or float in [0, 1] (soft labels, e.g. the raters' mean):
    -mean[y ln p + (1 - y) ln(1 - p)]."""
    p = np.asarray(prob, np.float64).ravel()
    if p.size == 0:
        return math.nan
    if np.asarray(truth).dtype != bool:
        y = np.asarray(truth, np.float64).ravel()
        pc = np.clip(p, eps, 1 - eps)
        return float(-np.mean(y * np.log(pc) + (1 - y) * np.log1p(-pc)))
    y = np.asarray(truth, bool).ravel()
    q = np.clip(np.where(y, p, 1.0 - p), eps, 1 - eps)  # probability given to the true label
    return float(-np.mean(np.log(q)))


_SMALL_P = 1.0 / 256  # below it a negative voxel's -ln(1 - p) is summed as a series (see _negative_sums)




def _negative_sums(p: np.ndarray, n_bins: int = N_CAL_BINS):
    """Sums over every voxel of a 1-D probability array ``p`` as if every label were 0 (outside the ROI all voxels
    are true negatives). Returns (n, sum_prob, sum_sq, sum_nll): the calibration bins of :func:`calibration_bins`
    (int64 and float64, length ``n_bins``; their sum_true is 0), sum p^2 (Brier numerator) and
    sum -ln clip(1 - p, eps, 1 - eps) (NLL numerator, nats), all float64.

    Only voxels with p >= min(1/256, 0.5/n_bins) are binned and logged one by one. All smaller ones are in bin 0 and
    their -ln(1 - p) = p + p^2/2 + p^3/3 + p^4/4 + R with 0 <= R < 5e-11 p, so their sums come from sum p^k over all
    voxels (k = 1..4) minus the same sums over the large ones (agrees with the voxel-by-voxel sum to 5e-11
    relative, plus < 2.3e-16 per voxel with p < 1.2e-16 where the clip at 1 - eps applies). Runs in chunks of
    :data:`_CHUNK` voxels (float64 sums per chunk)."""
    thr = min(_SMALL_P, 0.5 / n_bins)
    n = np.zeros(n_bins, np.int64)
    sum_prob = np.zeros(n_bins)
    sum_sq = sum_nll = 0.0
    for start in range(0, p.size, validation.CHUNK):
        c = p[start:start + validation.CHUNK]
        c64 = c.astype(np.float64)
        sq = c64 * c64
        s1, s2 = float(c64.sum()), float(np.dot(c64, c64))
        series = s1 + s2 / 2 + float(np.dot(sq, c64)) / 3 + float(np.dot(sq, sq)) / 4
        big = c[c >= thr].astype(np.float64)
        n[0] += c.size - big.size
        sum_sq += s2
        if big.size:
            idx = calibration_bin_index(big, n_bins)
            n += np.bincount(idx, minlength=n_bins)
            sum_prob += np.bincount(idx, weights=big, minlength=n_bins)
            big_sq = big * big
            s1b = float(big.sum())
            s1 -= s1b
            series -= s1b + float(np.dot(big, big)) / 2 + float(np.dot(big_sq, big)) / 3 + float(np.dot(big_sq, big_sq)) / 4
            series += float(-np.log(np.clip(1.0 - big, NLL_EPS, 1 - NLL_EPS)).sum())
        sum_prob[0] += s1
        sum_nll += series
    return n, sum_prob, sum_sq, sum_nll


def patient_reliability(bins, n_bins: int = N_CAL_BINS):
    """Per-patient reliability from per-patient bins.

    ``bins``: iterable of (patient_id, bin, n, sum_prob, sum_true) rows, or a mapping / data frame with those
    five columns. Returns (acc, conf, count) arrays of shape (P, n_bins) with NaN accuracy/confidence in empty
    bins, and the patient ids in row order.
    """
    names = ("patient_id", "bin", "n", "sum_prob", "sum_true")
    if hasattr(bins, "keys") and all(k in bins for k in names):
        cols = [np.asarray(bins[k]) for k in names]
    else:
        arr = np.array(list(bins), dtype=object).reshape(-1, 5)
        cols = [arr[:, k] for k in range(5)]
    ids, row = np.unique(cols[0].astype(str), return_inverse=True)
    n, sp, st = (dense_bins(row, cols[1].astype(np.int64), cols[k].astype(np.float64), len(ids), n_bins)
                 for k in (2, 3, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, st / n, np.nan)
        conf = np.where(n > 0, sp / n, np.nan)
    return acc, conf, n, ids.tolist()


def reliability_histogram(acc: np.ndarray, n_bins: int = N_CAL_BINS) -> np.ndarray:
    """Dataset reliability histogram (paper 004): (n_bins accuracy rows x n_bins confidence columns) matrix of
    the share of patients whose accuracy in confidence bin k falls in accuracy bin j; each non-empty column
    sums to 1 (patients with an empty bin k are not counted in column k)."""
    out = np.zeros((n_bins, n_bins))
    for k in range(acc.shape[1]):
        a = acc[:, k]
        a = a[np.isfinite(a)]
        if a.size:
            j = np.minimum((a * n_bins).astype(int), n_bins - 1)
            out[:, k] = np.bincount(j, minlength=n_bins) / a.size
    return out
