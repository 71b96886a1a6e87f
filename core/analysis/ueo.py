"""Uncertainty-error overlap (U-E) and BnF at one threshold per cohort (paper 002), from the uncertainty bins.

The stored per-patient ``ueo_best`` is an oracle: every patient gets the threshold that suits it best. Paper 002
(Table 1) instead "selected the best-performing threshold for each method" and reports the mean over the test
subjects, so here one threshold t per (model, method, region) is chosen on the cohort, among the U-E thresholds
t = 0.05, 0.10, ..., 0.95 (:data:`core.metrics.uncertainty.UEO_THRESHOLDS`, edges of the uncertainty bins):

* ``t_ueo`` maximises the cohort *mean* of the per-patient U-E(t) = 2 |{u >= t} and E| / (|{u >= t}| + |E|)
  (E: the patient's error voxels), the quantity the paper reports (a mean of subject-level values, not a pooled
  overlap, which large tumours would dominate); the pooled U-E at that t is given beside it;
* ``t_bnf`` maximises BnF(t), the share of patients for whom removing the predicted voxels with u >= t raises
  Dice (BraTS empty rule; FPU TP > TPU (TP + FP + FN) otherwise, :func:`core.metrics.uncertainty.removal_raises_dice`); the paper selects the
  threshold per metric, so BnF has its own.

Ties go to the lowest threshold. Patients with an undefined value (U-E: no error and no uncertain voxel; BnF:
nothing predicted) are skipped and counted. Everything is numpy on counts per threshold interval: bins
[t_k, t_k+1) grouped once (:func:`threshold_groups`), so a cohort costs (patients x 20) numbers, not voxels.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from core.metrics.binning import dense_bins
from core.metrics.uncertainty import UEO_THRESHOLDS, removal_raises_dice, threshold_bin

COUNTS = ("n_error", "n_correct", "n_fp", "n_fn", "n_tp")


def threshold_bins(thresholds=UEO_THRESHOLDS) -> np.ndarray:
    """(T,) int64 first uncertainty bin of each threshold (the voxels with u >= t are the bins from it on)."""
    return np.array([threshold_bin(t) for t in thresholds], np.int64)


def threshold_groups(bins, thresholds=UEO_THRESHOLDS) -> np.ndarray:
    """Group of each uncertainty bin: the number of thresholds t_k whose bin starts at or below it, in 0..T.

    Args:
        bins: (n,) uncertainty bin indices (:data:`core.metrics.uncertainty.UNC_EDGES`).

    Returns:
        (n,) int64; group 0 = u < t_1, group k = t_k <= u < t_k+1, group T = u >= t_T.
    """
    return np.searchsorted(threshold_bins(thresholds), np.asarray(bins, np.int64), side="right").astype(np.int64)


def grouped_counts(patient_code, groups, counts, n_patients: int, n_thresholds: int = len(UEO_THRESHOLDS)) -> np.ndarray:
    """Sparse rows (patient, group, counts) -> dense (P, T + 1, C) float64 sums (:func:`core.metrics.binning.dense_bins`).

    Args:
        patient_code: (n,) patient index in 0..P-1.
        groups: (n,) group (:func:`threshold_groups`) in 0..T.
        counts: (n, C) voxel counts in the order of :data:`COUNTS`.
        n_patients: P.
        n_thresholds: T.
    """
    return dense_bins(np.asarray(patient_code, np.int64), np.asarray(groups, np.int64),
                      np.asarray(counts, np.float64).reshape(len(groups), -1), n_patients, n_thresholds + 1)


def cohort_threshold(grouped: np.ndarray, thresholds=UEO_THRESHOLDS) -> dict:
    """U-E and BnF at one cohort threshold from per-patient counts per threshold group.

    Args:
        grouped: (P, T + 1, 5) voxel counts (n_error, n_correct, n_fp, n_fn, n_tp) per patient and threshold
            group (:func:`grouped_counts`; group 0 holds u < t_1).
        thresholds: the T thresholds (ascending).

    Returns:
        dict with ``ueo`` (P, T) per-patient U-E at every threshold (NaN: no error and no uncertain voxel),
        ``ueo_mean`` (T,) its cohort mean (NaN skipped), ``t_ueo`` the threshold of the highest mean (NaN when no
        patient has a value), ``ueo_at_t`` (P,) per-patient U-E at ``t_ueo``, ``ueo_mean_at_t``,
        ``ueo_pooled_at_t`` (2 sum |U and E| / (sum |U| + sum |E|) at ``t_ueo``), ``ueo_oracle`` (P,) the
        per-patient best over the thresholds (the stored ``ueo_best``) and ``ueo_oracle_mean``, ``n_ueo`` patients
        with a U-E value; ``benefit`` (P, T) 1/0 (NaN: nothing predicted), ``bnf`` (T,) BnF, ``t_bnf``,
        ``bnf_at_t``, ``n_bnf``.
    """
    g = np.asarray(grouped, np.float64)
    thresholds = np.asarray(thresholds, np.float64)
    above = np.cumsum(g[:, ::-1], axis=1)[:, ::-1][:, 1:]  # (P, T, C): voxels with u >= t_k
    total = g.sum(axis=1)  # (P, C)
    err = total[:, 0]
    ue, unc = above[..., 0], above[..., 0] + above[..., 1]
    den = unc + err[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        ueo = np.where(den > 0, 2 * ue / np.where(den > 0, den, 1), np.nan)
    has = np.isfinite(ueo)
    n_ueo = int(has.any(axis=1).sum())
    with np.errstate(invalid="ignore"):
        ueo_mean = np.where(has.sum(0) > 0, np.nansum(ueo, 0) / np.maximum(has.sum(0), 1), np.nan)
    out = {"thresholds": thresholds, "ueo": ueo, "ueo_mean": ueo_mean, "n_ueo": n_ueo}
    if np.isfinite(ueo_mean).any():
        k = int(np.nanargmax(ueo_mean))
        sue, sden = ue[:, k].sum(), den[:, k].sum()
        out.update(t_ueo=float(thresholds[k]), ueo_at_t=ueo[:, k], ueo_mean_at_t=float(ueo_mean[k]),
                   ueo_pooled_at_t=float(2 * sue / sden) if sden > 0 else np.nan)
    else:
        out.update(t_ueo=np.nan, ueo_at_t=np.full(len(g), np.nan), ueo_mean_at_t=np.nan, ueo_pooled_at_t=np.nan)
    with np.errstate(invalid="ignore"):
        oracle = np.where(has.any(axis=1), np.nanmax(np.where(has, ueo, -np.inf), axis=1), np.nan)
    out.update(ueo_oracle=oracle, ueo_oracle_mean=float(np.nanmean(oracle)) if np.isfinite(oracle).any() else np.nan)
    tp, fp, fn = total[:, 4], total[:, 2], total[:, 3]
    fpu, tpu = above[..., 2], above[..., 4]
    benefit = removal_raises_dice(tp[:, None], fp[:, None], fn[:, None], tpu, fpu)
    ok = np.isfinite(benefit[:, 0]) if len(benefit) else np.zeros(0, bool)
    n_bnf = int(ok.sum())
    bnf = benefit[ok].mean(0) if n_bnf else np.full(len(thresholds), np.nan)
    k = int(np.argmax(bnf)) if n_bnf else None
    out.update(benefit=benefit, bnf=bnf, n_bnf=n_bnf, t_bnf=float(thresholds[k]) if k is not None else np.nan,
               bnf_at_t=float(bnf[k]) if k is not None else np.nan)
    return out


def cohort_threshold_table(rows: pd.DataFrame, thresholds=UEO_THRESHOLDS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`cohort_threshold` per (model, method, region) of sparse per-patient bin rows.

    Args:
        rows: model, method, region, patient_id, bin (uncertainty bin index) or group (:func:`threshold_groups`),
            and the :data:`COUNTS` columns (voxels), one row per non-empty (patient, bin) or (patient, group).

    Returns:
        (summary, patients): summary has one row per (model, method, region): n_patients, t_ueo, ueo_mean_at_t,
        ueo_pooled_at_t, ueo_oracle_mean, t_bnf, bnf_at_t, n_bnf; patients has model, method, region,
        patient_id, ueo_at_t (U-E at the combo's cohort threshold), ueo_oracle (at the patient's own best).
    """
    keys = ["model", "method", "region"]
    s_cols = keys + ["n_patients", "t_ueo", "ueo_mean_at_t", "ueo_pooled_at_t", "ueo_oracle_mean", "t_bnf", "bnf_at_t",
                     "n_bnf"]
    p_cols = keys + ["patient_id", "ueo_at_t", "ueo_oracle"]
    if rows.empty:
        return pd.DataFrame(columns=s_cols), pd.DataFrame(columns=p_cols)
    summary, patients = [], []
    for (model, method, region), g in rows.groupby(keys, sort=True):
        code, pids = pd.factorize(g.patient_id, sort=True)
        groups = g["group"].to_numpy() if "group" in g else threshold_groups(g["bin"].to_numpy(), thresholds)
        r = cohort_threshold(grouped_counts(code, groups, g[list(COUNTS)].to_numpy(np.float64), len(pids),
                                            len(thresholds)), thresholds)
        summary.append({"model": model, "method": method, "region": region, "n_patients": r["n_ueo"],
                        **{k: r[k] for k in s_cols[4:]}})
        patients.append(pd.DataFrame({"model": model, "method": method, "region": region, "patient_id": pids,
                                      "ueo_at_t": r["ueo_at_t"], "ueo_oracle": r["ueo_oracle"]}))
    return pd.DataFrame(summary, columns=s_cols), pd.concat(patients, ignore_index=True)[p_cols]


def cohort_threshold_from_cubes(cubes: dict, patient_ids=None, thresholds=UEO_THRESHOLDS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`cohort_threshold_table` of dense per-patient cubes, for a subset of their patients.

    Args:
        cubes: {(model, method, region): (patient ids (P,) sorted, counts (P, T + 1, 5))}
            (:func:`core.store.threshold_cubes`).
        patient_ids: the cohort (None: every patient of each cube); ids a cube lacks are left out.
        thresholds: the T thresholds.

    Returns:
        (summary, patients) as :func:`cohort_threshold_table` (combos in sorted order; a combo with none of the
        patients is left out).
    """
    keys = ["model", "method", "region"]
    s_cols = keys + ["n_patients", "t_ueo", "ueo_mean_at_t", "ueo_pooled_at_t", "ueo_oracle_mean", "t_bnf", "bnf_at_t",
                     "n_bnf"]
    p_cols = keys + ["patient_id", "ueo_at_t", "ueo_oracle"]
    wanted = None if patient_ids is None else pd.Index(list(patient_ids)).unique()
    summary, patients = [], []
    positions = {}  # id of a cube's patient-id array -> the wanted rows (cubes of one read share their id arrays)
    for (model, method, region) in sorted(cubes):
        pids, grouped = cubes[(model, method, region)]
        if wanted is not None:
            if id(pids) not in positions:
                pos = np.sort(pd.Index(pids).get_indexer(wanted))  # hashed lookups (np.isin sorts the strings)
                positions[id(pids)] = (pids, pos[pos >= 0])  # (the array kept alive: its id stays its own)
            pos = positions[id(pids)][1]
            pids, grouped = pids[pos], grouped[pos]
        if not len(pids):
            continue
        r = cohort_threshold(grouped, thresholds)
        summary.append({"model": model, "method": method, "region": region, "n_patients": r["n_ueo"],
                        **{k: r[k] for k in s_cols[4:]}})
        patients.append(pd.DataFrame({"model": model, "method": method, "region": region, "patient_id": pids,
                                      "ueo_at_t": r["ueo_at_t"], "ueo_oracle": r["ueo_oracle"]}))
    if not summary:
        return pd.DataFrame(columns=s_cols), pd.DataFrame(columns=p_cols)
    return pd.DataFrame(summary, columns=s_cols), pd.concat(patients, ignore_index=True)[p_cols]
