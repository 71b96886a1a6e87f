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


def volume_distribution(sample_volumes_ml: np.ndarray, gt_ml: float | None = None, level: float = 0.9) -> dict:
    """Predicted-volume distribution of one region from the N samples' volumes (ml, shape (N,)).

    vol_sample_mean_ml, vol_sample_sd_ml (ddof 0), vol_q05_ml / vol_q95_ml (the central ``level`` interval,
    numpy linear quantiles); with ground truth: vol_in_90 (1.0 if q05 <= gt <= q95 else 0.0; its mean over
    patients is the interval's coverage) and vol_crps_ml (:func:`crps_ensemble`)."""
    v = np.asarray(sample_volumes_ml, np.float64).ravel()
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2])
    out = {"vol_sample_mean_ml": float(v.mean()), "vol_sample_sd_ml": float(v.std()),
           "vol_q05_ml": float(lo), "vol_q95_ml": float(hi)}
    if gt_ml is not None:
        out["vol_in_90"] = float(lo <= gt_ml <= hi)
        out["vol_crps_ml"] = crps_ensemble(v, gt_ml)
    return out


def soft_label_metrics(prob: np.ndarray, soft: np.ndarray, n_bins: int = N_CAL_BINS) -> dict:
    """Calibration against soft labels (the raters' mean, in [0, 1]) over a voxel set (1-D arrays):
    soft_ece / soft_ace / soft_mce (bins as :func:`calibration_from_bins`, the bin's accuracy being the mean
    soft label), soft_brier = mean (p - s)^2, soft_nll = -mean[s ln p + (1 - s) ln(1 - p)]."""
    n, sp, st = calibration_bins(prob, soft, n_bins)
    cal = calibration_from_bins(n, sp, st)
    return {"soft_ece": cal["ece"], "soft_ace": cal["ace"], "soft_mce": cal["mce"],
            "soft_brier": brier(prob, soft), "soft_nll": nll(prob, np.asarray(soft, np.float64))}
