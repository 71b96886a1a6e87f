"""Cohort summaries the pages show, computed from the stored bins (pandas in, pandas out; no I/O).

Kept out of the pages so that they stay thin and so the numbers are testable without Streamlit.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import metrics as M
from .store import dense_uncertainty_bins

GAP_TOL = 0.005  # |mean p - mean y| below this: calibrated within tolerance


def reliability(bins: pd.DataFrame, n_bins: int = M.N_CAL_BINS):
    """Per-patient bins (patient_id, bin, n, sum_prob, sum_true) of one model/method/region ->
    (curve, band, histogram):

    * curve: DataFrame(conf, acc, n) per non-empty bin, the dataset-level curve of the summed bins;
    * band: DataFrame(centre, lo, hi), 10th and 90th percentile of the patients' accuracy per bin
      (bins where at least 2 patients have voxels);
    * histogram: (n_bins x n_bins) dataset reliability histogram (paper 004), columns sum to 1.
    """
    acc, conf, n, _ = M.patient_reliability(bins, n_bins)
    return _reliability(acc, conf, n, n_bins)


def reliability_arrays(n: np.ndarray, sum_prob: np.ndarray, sum_true: np.ndarray):
    """:func:`reliability` from dense per-patient bins (P, n_bins) (:func:`core.store.calibration_dense`)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, sum_true / n, np.nan)
        conf = np.where(n > 0, sum_prob / n, np.nan)
    return _reliability(acc, conf, n, n.shape[1])


def _reliability(acc: np.ndarray, conf: np.ndarray, n: np.ndarray, n_bins: int):
    tot = n.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        curve = pd.DataFrame({"conf": (np.nan_to_num(conf) * n).sum(0) / tot,
                              "acc": (np.nan_to_num(acc) * n).sum(0) / tot, "n": tot})[tot > 0]
    ok = np.isfinite(acc).sum(0) >= 2
    centres = (np.arange(n_bins) + 0.5) / n_bins
    band = pd.DataFrame({"centre": centres[ok],
                         "lo": np.nanpercentile(acc[:, ok], 10, axis=0) if ok.any() else [],
                         "hi": np.nanpercentile(acc[:, ok], 90, axis=0) if ok.any() else []})
    return curve, band, M.reliability_histogram(acc, n_bins)


def confidence_shares(wide: pd.DataFrame, tol: float = GAP_TOL) -> pd.DataFrame:
    """Share of patients per model that are over-confident (cal_gap > tol), under-confident (< -tol) or within."""
    kind = np.select([wide.cal_gap > tol, wide.cal_gap < -tol], ["over-confident", "under-confident"], "within tolerance")
    tab = wide.assign(kind=kind).groupby(["model", "kind"]).size().unstack(fill_value=0)
    return tab.div(tab.sum(axis=1), axis=0).round(3)


def budget_table(summed: pd.DataFrame, budgets) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Summed uncertainty bins of one region (all models/methods) -> (curves, table).

    curves: model, method, budget (%), captured, ueo at each budget; table: per model and method the
    capture / UEO AUC over 0-5 %, captured at 5 %, AUROC of entropy, FP-vs-TP and FN-vs-TN AUROC, counts.
    """
    budgets = np.asarray(budgets, np.float64)
    rows, curves = [], []
    for (model, method), g in summed.groupby(["model", "method"]):
        d = dense_uncertainty_bins(g)
        cap, ueo = M.budget_curve(d["n_error"], d["n_correct"], budgets)
        cap5, ueo5 = M.budget_curve(d["n_error"], d["n_correct"])
        curves.append(pd.DataFrame({"model": model, "method": method, "budget": budgets * 100, "captured": cap, "ueo": ueo}))
        rows.append({"model": model, "method": method, "capture AUC 0-5 %": M.budget_auc(cap5),
                     "UEO AUC 0-5 %": M.budget_auc(ueo5), "captured at 5 %": cap5[-1],
                     "AUROC entropy": M.auroc_from_bins(d["n_error"], d["n_correct"]),
                     "AUROC FP vs TP": M.auroc_from_bins(d["n_fp"], d["n_tp"]),
                     "AUROC FN vs TN": M.auroc_from_bins(d["n_fn"], d["n_tn"]),
                     "error voxels": int(d["n_error"].sum()), "voxels": int(d["n_error"].sum() + d["n_correct"].sum())})
    if not rows:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(curves, ignore_index=True), pd.DataFrame(rows)


def strata(values: pd.DataFrame, n_strata: int) -> tuple[pd.DataFrame, list[str]]:
    """Assign each patient (patient_id, value) to a quantile stratum Q1 (lowest) .. Qn of equal size (by rank;
    ties broken by order), NaN values dropped."""
    v = values.dropna(subset=["value"])
    labels = [f"Q{i + 1}" for i in range(n_strata)]
    rank = v.value.rank(method="first").to_numpy() - 1
    k = np.minimum((rank * n_strata // max(len(v), 1)).astype(int), n_strata - 1)
    return v.assign(stratum=[labels[i] for i in k]), labels


KEYS = ["model", "method", "region"]


def binned_summary(cal: pd.DataFrame, unc: pd.DataFrame) -> pd.DataFrame:
    """Dataset-level numbers from bins summed over a patient subset, per model / method / region:
    ece_dataset, ace_dataset, mce_dataset (:func:`core.metrics.calibration_from_bins`) and
    auroc_entropy_dataset (:func:`core.metrics.auroc_from_bins` of n_error vs n_correct).

    cal: model, method, region, bin, n, sum_prob, sum_true; unc: model, method, region, bin, n_error, n_correct.
    One groupby per table (no per-group filtering of the whole frame)."""
    rows = {}
    for key, c in cal.groupby(KEYS, sort=False):
        nb = max(int(c.bin.max()) + 1, M.N_CAL_BINS)
        n, sp, st = (np.zeros(nb) for _ in range(3))
        b = c.bin.to_numpy()
        n[b], sp[b], st[b] = c.n.to_numpy(), c.sum_prob.to_numpy(), c.sum_true.to_numpy()
        calm = M.calibration_from_bins(n, sp, st)
        rows[key] = {"ece_dataset": calm["ece"], "ace_dataset": calm["ace"], "mce_dataset": calm["mce"],
                     "auroc_entropy_dataset": np.nan}
    for key, u in unc.groupby(KEYS, sort=False):
        ne, nc = np.zeros(M.N_UNC_BINS), np.zeros(M.N_UNC_BINS)
        b = u.bin.to_numpy()
        ne[b], nc[b] = u.n_error.to_numpy(), u.n_correct.to_numpy()
        rows.setdefault(key, {"ece_dataset": np.nan, "ace_dataset": np.nan, "mce_dataset": np.nan})
        rows[key]["auroc_entropy_dataset"] = M.auroc_from_bins(ne, nc)
    if not rows:
        return pd.DataFrame(columns=KEYS + ["ece_dataset", "ace_dataset", "mce_dataset", "auroc_entropy_dataset"])
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index = pd.MultiIndex.from_tuples(out.index, names=KEYS)
    return out.reset_index()


def cohort_summary(wide: pd.DataFrame, cal: pd.DataFrame, unc: pd.DataFrame) -> pd.DataFrame:
    """Cohort metrics of a patient subset per model, method and region (the Compare and Strata pages).

    wide: per-patient rows (model, method, patient_id, region, dice, ece, auroc_entropy, mean_entropy) of the
    subset, as :func:`core.store.metric_wide`; cal / unc: the subset's summed bins (:func:`binned_summary`).
    Columns: n_patients, dice_mean, dice_median, dice_nan, ece_mean, auroc_entropy_mean, auroc_nan,
    mean_entropy (means over patients, NaN skipped and counted) and the dataset-level numbers from bins.
    """
    if wide.empty:
        return pd.DataFrame(columns=KEYS + ["n_patients", "dice_mean", "dice_median", "dice_nan", "ece_mean",
                                            "auroc_entropy_mean", "auroc_nan", "mean_entropy", "ece_dataset",
                                            "ace_dataset", "mce_dataset", "auroc_entropy_dataset"])
    w = wide.copy()
    for m in ("dice", "ece", "auroc_entropy", "mean_entropy"):
        if m not in w:
            w[m] = np.nan
    g = w.groupby(KEYS, sort=True)
    per = pd.DataFrame({
        "n_patients": g.patient_id.nunique(),
        "dice_mean": g.dice.mean(), "dice_median": g.dice.median(),
        "dice_nan": g.dice.size() - g.dice.count(),
        "ece_mean": g.ece.mean(), "auroc_entropy_mean": g.auroc_entropy.mean(),
        "auroc_nan": g.auroc_entropy.size() - g.auroc_entropy.count(),
        "mean_entropy": g.mean_entropy.mean(),
    }).reset_index()
    return per.merge(binned_summary(cal, unc), on=KEYS, how="left")
