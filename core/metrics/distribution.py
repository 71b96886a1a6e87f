"""Distributions of sampled predictions (volumes, CRPS) and calibration against soft (multi-rater) labels."""
from __future__ import annotations

import math

import numpy as np

from core.metrics.calibration import N_CAL_BINS, brier, calibration_bins, calibration_from_bins, nll


def crps_ensemble(samples: np.ndarray, observed: float) -> float:
    """CRPS of a sample (ensemble) forecast: mean|X - y| - 1/2 mean_{i,j}|X_i - X_j| (all pairs, as
    properscoring.crps_ensemble); same units as the samples. O(n log n) via the sorted-sample identity."""
    x = np.sort(np.asarray(samples, np.float64).ravel())
    n = x.size
    if n == 0 or not math.isfinite(observed):
        return math.nan
    # sum_{i,j}|x_i - x_j| = 2 sum_k (2k - n - 1) x_(k), k = 1..n
    pair = 2.0 * np.sum((2 * np.arange(1, n + 1) - n - 1) * x) / n**2
    return float(np.mean(np.abs(x - observed)) - 0.5 * pair)


def crps_fair(samples: np.ndarray, observed: float) -> float:
    """Fair (N-corrected) CRPS of a sample forecast: mean|X - y| - 1/(2 N (N - 1)) sum_{i != j}|X_i - X_j|
    (Ferro 2014). Its expectation does not depend on N for samples from the same forecast distribution, so methods
    with different numbers of passes are comparable (the plain :func:`crps_ensemble` is too high by
    E|X - X'| / (2N)). NaN for fewer than 2 samples; same units as the samples."""
    x = np.sort(np.asarray(samples, np.float64).ravel())
    n = x.size
    if n < 2 or not math.isfinite(observed):
        return math.nan
    pair_sum = 2.0 * np.sum((2 * np.arange(1, n + 1) - n - 1) * x)  # sum over all ordered pairs i != j
    return float(np.mean(np.abs(x - observed)) - pair_sum / (2.0 * n * (n - 1)))


def prediction_interval_ranks(n: int, level: float = 0.9) -> tuple[int, int, float]:
    """1-based ranks (k, n + 1 - k) of the order statistics X_(k) <= X_(n+1-k) of n samples that form the
    narrowest central prediction interval with nominal coverage >= ``level``, and that nominal coverage.

    For a calibrated sampler (the truth exchangeable with the n samples) P(X_(i) <= y <= X_(j)) = (j - i) / (n + 1),
    so the interval of ranks k and n + 1 - k covers (n + 1 - 2k) / (n + 1). When even [min, max] stays below
    ``level`` (n < 19 for 90 %), it is [min, max] with its nominal (n - 1) / (n + 1) (0.5 at n = 3, 0.818 at
    n = 10, 0.778 at n = 8). n = 1: (1, 1, 0.0)."""
    if n < 2:
        return 1, 1, 0.0
    k = max(1, int(math.floor((n + 1) * (1 - level) / 2 + 1e-9)))
    return k, n + 1 - k, (n + 1 - 2 * k) / (n + 1)


def volume_distribution(sample_volumes_ml: np.ndarray, gt_ml: float | None = None, level: float = 0.9) -> dict:
    """Predicted-volume distribution of one region from the N samples' volumes (ml, shape (N,)).

    vol_sample_mean_ml, vol_sample_sd_ml (ddof 0), vol_q05_ml / vol_q95_ml (the 5th / 95th percentiles, numpy
    linear quantiles: descriptive); the prediction interval vol_pi_lo_ml / vol_pi_hi_ml of order statistics with
    its nominal coverage vol_pi_nominal for this N (:func:`prediction_interval_ranks`); with ground truth:
    vol_in_pi (1.0 if vol_pi_lo_ml <= gt <= vol_pi_hi_ml; its mean over patients is the coverage to set against
    vol_pi_nominal), vol_crps_ml (:func:`crps_ensemble`, depends on N) and vol_fcrps_ml (:func:`crps_fair`,
    comparable across N; NaN for N = 1)."""
    v = np.asarray(sample_volumes_ml, np.float64).ravel()
    lo, hi = np.quantile(v, [0.05, 0.95])
    i, j, nominal = prediction_interval_ranks(v.size, level)
    srt = np.sort(v)
    out = {"vol_sample_mean_ml": float(v.mean()), "vol_sample_sd_ml": float(v.std()),
           "vol_q05_ml": float(lo), "vol_q95_ml": float(hi), "vol_pi_lo_ml": float(srt[i - 1]),
           "vol_pi_hi_ml": float(srt[j - 1]), "vol_pi_nominal": nominal}
    if gt_ml is not None:
        out["vol_in_pi"] = float(srt[i - 1] <= gt_ml <= srt[j - 1])
        out["vol_crps_ml"] = crps_ensemble(v, gt_ml)
        out["vol_fcrps_ml"] = crps_fair(v, gt_ml)
    return out


def soft_label_metrics(prob: np.ndarray, soft: np.ndarray, n_bins: int = N_CAL_BINS) -> dict:
    """Calibration against soft labels (the raters' mean, in [0, 1]) over a voxel set (1-D arrays):
    soft_ece / soft_ace / soft_mce (bins as :func:`calibration_from_bins`, the bin's accuracy being the mean
    soft label), soft_brier = mean (p - s)^2, soft_nll = -mean[s ln p + (1 - s) ln(1 - p)]."""
    n, sp, st = calibration_bins(prob, soft, n_bins)
    cal = calibration_from_bins(n, sp, st)
    return {"soft_ece": cal["ece"], "soft_ace": cal["ace"], "soft_mce": cal["mce"],
            "soft_brier": brier(prob, soft), "soft_nll": nll(prob, np.asarray(soft, np.float64))}
