"""Cohort summaries the pages show, computed from the stored bins (pandas in, pandas out; no I/O).

Kept out of the pages so that they stay thin and so the numbers are testable without Streamlit.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.metrics.binning import dense_bins, dense_uncertainty_bins
from core.metrics.calibration import N_CAL_BINS, binned_calibration, patient_reliability, reliability_histogram
from core.metrics.uncertainty import N_UNC_BINS, auroc_from_bins, budget_auc, budget_curve




GAP_TOL = 0.005  # over- and under-confidence (fractions of the voxels' confidence) both below this: within tolerance


def reliability(bins: pd.DataFrame, n_bins: int = N_CAL_BINS):
    """Per-patient bins (patient_id, bin, n, sum_prob, sum_true) of one model/method/region ->
    (curve, band, histogram):

    * curve: DataFrame(conf, acc, n) per non-empty bin, the dataset-level curve of the summed bins;
    * band: DataFrame(centre, lo, hi), 10th and 90th percentile of the patients' accuracy per bin
      (bins where at least 2 patients have voxels);
    * histogram: (n_bins x n_bins) dataset reliability histogram (paper 004), columns sum to 1.
    """
    acc, conf, n, _ = patient_reliability(bins, n_bins)
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
    return curve, band, reliability_histogram(acc, n_bins)


CONFIDENCE_KINDS = ["over-confident", "under-confident", "within tolerance", "no voxels"]


def confidence_kind(over, under, tol: float = GAP_TOL) -> np.ndarray:
    """Each patient's kind from its ``overconfidence`` and ``underconfidence`` (:func:`core.metrics.
    binned_calibration`: confidence vs accuracy per bin, in the predicted label's space, paper 002 Fig. 1):
    "within tolerance" when both are <= tol, else "over-confident" when over > under, else "under-confident";
    "no voxels" where either is NaN (an empty voxel set, or a database written before these metrics)."""
    over, under = np.asarray(over, np.float64), np.asarray(under, np.float64)
    missing = ~(np.isfinite(over) & np.isfinite(under))
    within = (over <= tol) & (under <= tol)
    return np.select([missing, within, over > under], ["no voxels", "within tolerance", "over-confident"],
                     "under-confident")


def confidence_shares(wide: pd.DataFrame, tol: float = GAP_TOL) -> pd.DataFrame:
    """Share of patients per model (rows) in each :func:`confidence_kind` (columns, in ``CONFIDENCE_KINDS`` order,
    the kinds no patient has left out); ``wide`` has model, overconfidence, underconfidence per patient."""
    kind = confidence_kind(wide.overconfidence, wide.underconfidence, tol)
    tab = wide.assign(kind=kind).groupby(["model", "kind"]).size().unstack(fill_value=0)
    tab = tab[[k for k in CONFIDENCE_KINDS if k in tab.columns]]
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
        cap, ueo = budget_curve(d["n_error"], d["n_correct"], budgets)
        cap5, ueo5 = budget_curve(d["n_error"], d["n_correct"])
        curves.append(pd.DataFrame({"model": model, "method": method, "budget": budgets * 100, "captured": cap, "ueo": ueo}))
        rows.append({"model": model, "method": method, "capture AUC 0-5 %": budget_auc(cap5),
                     "UEO AUC 0-5 %": budget_auc(ueo5), "captured at 5 %": cap5[-1],
                     "AUROC entropy": auroc_from_bins(d["n_error"], d["n_correct"]),
                     "AUROC FP vs TP": auroc_from_bins(d["n_fp"], d["n_tp"]),
                     "AUROC FN vs TN": auroc_from_bins(d["n_fn"], d["n_tn"]),
                     "error voxels": int(d["n_error"].sum()), "voxels": int(d["n_error"].sum() + d["n_correct"].sum())})
    if not rows:
        return pd.DataFrame(), pd.DataFrame()
    return pd.concat(curves, ignore_index=True), pd.DataFrame(rows)


KEYS = ["model", "method", "region"]


def _combo_codes(df: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """(R,) index of each row's (model, method, region) in the returned combos (in order of appearance)."""
    g = df.groupby(KEYS, sort=False)
    return g.ngroup().to_numpy(np.int64), g.size().reset_index()[KEYS]


def binned_summary(cal: pd.DataFrame, unc: pd.DataFrame) -> pd.DataFrame:
    """Dataset-level numbers from bins summed over a patient subset, per model / method / region:
    ece_dataset, ace_dataset, mce_dataset (the definitions of :func:`core.metrics.calibration_from_bins`) and
    auroc_entropy_dataset (:func:`core.metrics.auroc_from_bins` of n_error vs n_correct), NaN where a combo has
    no voxel (or no error / no correct voxel for the AUROC).

    cal: model, method, region, bin, n, sum_prob, sum_true; unc: model, method, region, bin, n_error, n_correct
    (one row per non-empty bin, any order). Vectorised over the combos: dense (combo, bin) arrays
    (:func:`core.metrics.binning.dense_bins`) into the metric engine's binned primitives."""
    parts = []
    if len(cal):
        code, combos = _combo_codes(cal)
        bins = cal.bin.to_numpy(np.int64)
        dense = dense_bins(code, bins, cal[["n", "sum_prob", "sum_true"]].to_numpy(np.float64), len(combos),
                           max(int(bins.max()) + 1, N_CAL_BINS))
        c = binned_calibration(dense[..., 0], dense[..., 1], dense[..., 2])
        parts.append(combos.assign(ece_dataset=c["ece"], ace_dataset=c["ace"], mce_dataset=c["mce"]))
    if len(unc):
        code, combos = _combo_codes(unc)
        dense = dense_bins(code, unc.bin.to_numpy(np.int64), unc[["n_error", "n_correct"]].to_numpy(np.float64),
                           len(combos), N_UNC_BINS)
        parts.append(combos.assign(auroc_entropy_dataset=np.atleast_1d(auroc_from_bins(dense[..., 0], dense[..., 1]))))
    cols = KEYS + ["ece_dataset", "ace_dataset", "mce_dataset", "auroc_entropy_dataset"]
    if not parts:
        return pd.DataFrame(columns=cols)
    out = parts[0] if len(parts) == 1 else parts[0].merge(parts[1], on=KEYS, how="outer")
    for c in cols:
        if c not in out:
            out[c] = np.nan
    return out[cols]


SUMMARY_MEANS = ("dice", "ece", "auroc_entropy", "mean_entropy")


def summary_parts(wide: pd.DataFrame) -> dict:
    """Per-row codes from which :func:`summary_from_parts` gives the per-patient part of :func:`cohort_summary`
    for any subset of the rows with numpy alone (one bincount per number, no groupby): the app's entropy
    filter keeps a boolean mask of rows, and a move of the filter costs a few milliseconds at 10,000 patients.

    wide: one row per (model, method, patient_id, region) as :func:`core.store.metric_wide`. Returns dict:
    combos (DataFrame model, method, region, sorted), code (R,) combo index per row, values {metric: (R,)
    float64, NaN where undefined}, dice_order (R,) rows sorted by (code, dice) with NaN last (for medians)."""
    g = wide.groupby(KEYS, sort=True)
    code = g.ngroup().to_numpy(np.int64)
    combos = g.size().reset_index()[KEYS]
    values = {m: (wide[m].to_numpy(np.float64, na_value=np.nan) if m in wide else np.full(len(wide), np.nan))
              for m in SUMMARY_MEANS}
    order = np.lexsort((values["dice"], code))
    for a in (code, order, *values.values()):
        a.flags.writeable = False
    return {"combos": combos, "code": code, "values": values, "dice_order": order}


def summary_from_parts(parts: dict, keep: np.ndarray | None = None) -> pd.DataFrame:
    """Per model / method / region of the rows kept (``keep``: (R,) bool, None = all): n_patients (rows: one per
    patient), dice_mean, dice_median, dice_nan, ece_mean, auroc_entropy_mean, auroc_nan, mean_entropy; means
    and the median over finite values, *_nan the rows without one. Combos with no kept row are left out: the
    same frame as a pandas groupby of the kept rows."""
    code, vals, combos = parts["code"], parts["values"], parts["combos"]
    C = len(combos)
    keep = np.ones(len(code), bool) if keep is None else np.asarray(keep, bool)
    n_rows = np.bincount(code[keep], minlength=C)
    out = combos.copy()
    out["n_patients"] = n_rows
    counts = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for m in SUMMARY_MEANS:
            f = keep & np.isfinite(vals[m])
            counts[m] = np.bincount(code[f], minlength=C)
            out[f"{m}_mean" if m != "mean_entropy" else m] = np.where(
                counts[m] > 0, np.bincount(code[f], vals[m][f], minlength=C) / np.maximum(counts[m], 1), np.nan)
    order = parts["dice_order"]
    taken = order[keep[order] & np.isfinite(vals["dice"][order])]  # kept finite rows, by (combo, dice)
    sorted_dice = vals["dice"][taken]
    cnt = counts["dice"]
    start = np.cumsum(cnt) - cnt
    lo = np.clip(start + (cnt - 1) // 2, 0, max(len(taken) - 1, 0))
    hi = np.clip(start + cnt // 2, 0, max(len(taken) - 1, 0))
    out["dice_median"] = np.where(cnt > 0, (sorted_dice[lo] + sorted_dice[hi]) / 2, np.nan) if len(taken) \
        else np.nan
    out["dice_nan"] = n_rows - cnt
    out["auroc_nan"] = n_rows - counts["auroc_entropy"]
    cols = KEYS + ["n_patients", "dice_mean", "dice_median", "dice_nan", "ece_mean", "auroc_entropy_mean", "auroc_nan",
                   "mean_entropy"]
    return out.loc[n_rows > 0, cols].reset_index(drop=True)


def cohort_summary(wide: pd.DataFrame, cal: pd.DataFrame, unc: pd.DataFrame, parts: dict | None = None,
                   keep: np.ndarray | None = None) -> pd.DataFrame:
    """Cohort metrics of a patient subset per model, method and region (the Compare and Strata pages).

    wide: per-patient rows (model, method, patient_id, region, dice, ece, auroc_entropy, mean_entropy) of the
    subset, as :func:`core.store.metric_wide`; cal / unc: the subset's summed bins (:func:`binned_summary`).
    Or, instead of the subset's rows, ``parts`` (:func:`summary_parts` of a larger table, cached) and ``keep``,
    the subset's rows in it. Columns: n_patients, dice_mean, dice_median, dice_nan, ece_mean,
    auroc_entropy_mean, auroc_nan, mean_entropy (means over patients, NaN skipped and counted) and the
    dataset-level numbers from bins.
    """
    if parts is None:
        parts = summary_parts(wide)
    per = summary_from_parts(parts, keep)
    if per.empty:
        return pd.DataFrame(columns=KEYS + ["n_patients", "dice_mean", "dice_median", "dice_nan", "ece_mean",
                                            "auroc_entropy_mean", "auroc_nan", "mean_entropy", "ece_dataset",
                                            "ace_dataset", "mce_dataset", "auroc_entropy_dataset"])
    return per.merge(binned_summary(cal, unc), on=KEYS, how="left")
