"""Cohort statistics for the dashboard: patient-bootstrap confidence intervals and paired tests.

Every interval here resamples PATIENTS (the unit a deployment decision is about), never voxels: a replicate
draws P patients with replacement and recomputes the statistic on them. The draws are a matrix of counts
W (B x P, row sums P), so a mean over patients is ``W @ x / P`` and a dataset-level ECE of a replicate comes
from its summed bins ``W @ bins``: exactly what summing the chosen patients' bins in SQL would give.
Intervals are percentile intervals (2.5 % and 97.5 % of the B replicates by default), seeded, so a page
shows the same numbers on every rerun.

Pure numpy / scipy; imports nothing of the project except :mod:`core.metrics` for the definitions.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd
from scipy import stats as sst

from . import metrics as M

DEFAULT_B = 1000
DEFAULT_LEVEL = 0.95


def bootstrap_counts(n: int, B: int = DEFAULT_B, seed: int = 0) -> np.ndarray:
    """B bootstrap draws of n items as counts: int32 array (B, n), each row sums to n (multinomial(n, 1/n)).

    Deterministic in (n, B, seed), so the last few are kept (read-only) and reused: a page bootstraps several
    tables over the same patients, and drawing 10 M indices for 10,000 patients costs about half a second."""
    return _bootstrap_counts(int(n), int(B), int(seed))


@functools.lru_cache(maxsize=8)
def _bootstrap_counts(n: int, B: int, seed: int) -> np.ndarray:
    if n <= 0:
        return np.zeros((B, 0), np.int32)
    rng = np.random.default_rng(seed)
    flat = rng.integers(0, n, size=(B, n), dtype=np.int64)
    flat += (np.arange(B, dtype=np.int64) * n)[:, None]
    out = np.bincount(flat.ravel(), minlength=B * n).reshape(B, n).astype(np.int32)
    out.flags.writeable = False
    return out


def _interval(reps: np.ndarray, level: float) -> tuple[float, float]:
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return math.nan, math.nan
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(reps, [a, 1.0 - a])
    return float(lo), float(hi)


def mean_ci(values, B: int = DEFAULT_B, level: float = DEFAULT_LEVEL, seed: int = 0) -> dict:
    """Mean over patients with a percentile bootstrap interval; NaN values are skipped and counted.

    values: (P,) per-patient numbers. Returns dict(estimate, lo, hi, n, n_nan); all NaN when no finite value.
    """
    v = np.asarray(values, np.float64).ravel()
    finite = np.isfinite(v)
    x = v[finite]
    out = {"n": int(x.size), "n_nan": int((~finite).sum())}
    if x.size == 0:
        return {"estimate": math.nan, "lo": math.nan, "hi": math.nan, **out}
    W = bootstrap_counts(x.size, B, seed)
    reps = (W @ x) / x.size
    lo, hi = _interval(reps, level)
    return {"estimate": float(x.mean()), "lo": lo, "hi": hi, **out}


def ece_from_bins_batch(n: np.ndarray, sum_prob: np.ndarray, sum_true: np.ndarray) -> np.ndarray:
    """Vectorised :func:`core.metrics.calibration_from_bins` ECE: inputs (R, K) summed bins of R replicates,
    output (R,) ECE = sum_k |sum_prob_k - sum_true_k| / N (NaN where N = 0). Identical to
    ``sum_k n_k/N |acc_k - conf_k|`` since n_k |acc_k - conf_k| = |sum_true_k - sum_prob_k|."""
    n = np.asarray(n, np.float64)
    N = n.sum(axis=-1)
    num = np.abs(np.asarray(sum_prob, np.float64) - np.asarray(sum_true, np.float64)).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(N > 0, num / np.where(N > 0, N, 1.0), np.nan)


def dataset_ece_ci(n: np.ndarray, sum_prob: np.ndarray, sum_true: np.ndarray, B: int = DEFAULT_B,
                   level: float = DEFAULT_LEVEL, seed: int = 0) -> dict:
    """Dataset-level ECE (from bins summed over patients) with a patient-bootstrap interval.

    n, sum_prob, sum_true: (P, K) per-patient calibration bins (voxel counts, sums of p, sums of labels).
    Returns dict(estimate, lo, hi, n) where n = P patients.
    """
    n, sp, st = (np.asarray(a, np.float64) for a in (n, sum_prob, sum_true))
    P = n.shape[0]
    if P == 0:
        return {"estimate": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    est = float(ece_from_bins_batch(n.sum(0)[None], sp.sum(0)[None], st.sum(0)[None])[0])
    W = bootstrap_counts(P, B, seed).astype(np.float64)
    reps = ece_from_bins_batch(W @ n, W @ sp, W @ st)
    lo, hi = _interval(reps, level)
    return {"estimate": est, "lo": lo, "hi": hi, "n": P}


def leaderboard(per_patient: pd.DataFrame, cal_bins: pd.DataFrame | None = None, B: int = DEFAULT_B,
                level: float = DEFAULT_LEVEL, seed: int = 0) -> pd.DataFrame:
    """Leaderboard of model x method x region with patient-bootstrap intervals and counts, all rows at once.

    per_patient: columns model, method, region, patient_id, and any of dice, auroc_entropy (one row per
    evaluated patient; NaN = undefined for that patient, e.g. AUROC without an error voxel).
    cal_bins: optional per-patient calibration bins of the same patients: model, method, region, patient_id,
    bin, n, sum_prob, sum_true; or the same as integer-coded arrays (dict patient, combo, bin, d = sum_prob -
    sum_true, n) with patient indexing the sorted patient ids and combo the sorted (model, method, region) rows.

    One set of draws W (B x P) over the P patients of ``per_patient`` serves every row (rows are compared on
    the same resamples). A replicate's mean is sum_p W_bp x_p / sum_p W_bp [x_p defined] over the drawn
    patients where the metric is defined (so a patient with a NaN still counts as drawn); its dataset ECE is
    sum_k |sum_p W_bp (sum_prob_pk - sum_true_pk)| / sum_p W_bp n_p (summed bins of the drawn patients).
    Returns one row per (model, method, region): n_patients; for dice / auroc_entropy: <m>, <m>_lo, <m>_hi,
    <m>_n (patients with a value), <m>_nan (evaluated patients without one); ece_dataset(_lo, _hi).
    """
    keys = ["model", "method", "region"]
    if per_patient.empty:
        return pd.DataFrame(columns=keys + ["n_patients"])
    combos = per_patient[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    cidx = pd.MultiIndex.from_frame(combos)
    pids = np.sort(per_patient.patient_id.unique())
    pi = pd.Index(pids).get_indexer(per_patient.patient_id)  # hashed: 100,000s of string ids without a sort
    ci = cidx.get_indexer(pd.MultiIndex.from_frame(per_patient[keys]))
    P, C = len(pids), len(combos)
    present = np.zeros((P, C), bool)
    present[pi, ci] = True
    W = bootstrap_counts(P, B, seed).astype(np.float32)
    out = combos.copy()
    out["n_patients"] = present.sum(0)
    for m in ("dice", "auroc_entropy"):
        if m not in per_patient:
            continue
        X = np.full((P, C), np.nan)
        X[pi, ci] = per_patient[m].to_numpy(np.float64)
        fin = np.isfinite(X)
        with np.errstate(invalid="ignore", divide="ignore"):
            est = np.where(fin.any(0), np.nansum(X, 0) / np.maximum(fin.sum(0), 1), np.nan)
            reps = (W @ np.where(fin, X, 0.0).astype(np.float32)) / (W @ fin.astype(np.float32))
        lo_hi = np.array([_interval(reps[:, j].astype(np.float64), level) for j in range(C)]).reshape(C, 2)
        out[m], out[f"{m}_lo"], out[f"{m}_hi"] = est, lo_hi[:, 0], lo_hi[:, 1]
        out[f"{m}_n"] = fin.sum(0)
        out[f"{m}_nan"] = (present & ~fin).sum(0)
    if cal_bins is not None and not isinstance(cal_bins, dict) and len(cal_bins):
        cb = cal_bins[cal_bins.patient_id.isin(pids)]
        bci = cidx.get_indexer(pd.MultiIndex.from_frame(cb[keys]))
        cal_bins = {"patient": np.searchsorted(pids, cb.patient_id.to_numpy()), "combo": bci, "bin": cb.bin.to_numpy(),
                    "d": cb.sum_prob.to_numpy(np.float64) - cb.sum_true.to_numpy(np.float64), "n": cb.n.to_numpy()}
    if isinstance(cal_bins, dict) and len(cal_bins["bin"]):
        # integer-coded arrays: patient = index into the sorted patient ids, combo = row of the sorted combos
        bi = np.asarray(cal_bins["bin"], np.int64)
        K = max(int(bi.max()) + 1, M.N_CAL_BINS)
        bci, bpi = np.asarray(cal_bins["combo"], np.int64), np.asarray(cal_bins["patient"], np.int64)
        ok = bci >= 0
        pc = bpi[ok] * C + bci[ok]
        D = np.bincount(pc * K + bi[ok], np.asarray(cal_bins["d"], np.float64)[ok], minlength=P * C * K).reshape(P, C * K)
        N = np.bincount(pc, np.asarray(cal_bins["n"], np.float64)[ok], minlength=P * C).reshape(P, C)
        W64 = W.astype(np.float64)  # float64: the bins' sums of p and of labels nearly cancel
        with np.errstate(invalid="ignore", divide="ignore"):
            out["ece_dataset"] = np.abs(D.sum(0).reshape(C, K)).sum(-1) / np.where(N.sum(0) > 0, N.sum(0), np.nan)
            num = np.abs((W64 @ D).reshape(B, C, K)).sum(-1)
            reps = num / (W64 @ N)
        lo_hi = np.array([_interval(reps[:, j].astype(np.float64), level) for j in range(C)]).reshape(C, 2)
        out["ece_dataset_lo"], out["ece_dataset_hi"] = lo_hi[:, 0], lo_hi[:, 1]
    return out


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (family-wise error) for an array of p-values; NaN stays NaN."""
    p = np.asarray(pvalues, np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    m = order.size
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out


def paired_test(a, b, B: int = DEFAULT_B, level: float = DEFAULT_LEVEL, seed: int = 0) -> dict:
    """Paired comparison of two models on the same patients: d = a - b per patient.

    a, b: (P,) per-patient values aligned by patient. Pairs with a NaN on either side are skipped (counted in
    n_nan). Returns n (pairs used), n_nan, n_zero (d == 0, dropped by the test as in Wilcoxon's original
    method), mean_diff with a bootstrap interval (diff_lo, diff_hi), median_diff, and the two-sided Wilcoxon
    signed-rank test (scipy.stats.wilcoxon, zero_method='wilcox': exact null distribution for small n without
    ties, normal approximation otherwise): statistic W and p_value. p_value is NaN with fewer than 2 non-zero d.
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same patients: {a.shape} vs {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    out = {"n": int(d.size), "n_nan": int((~ok).sum()), "n_zero": int((d == 0).sum())}
    ci = mean_ci(d, B, level, seed)
    out.update(mean_diff=ci["estimate"], diff_lo=ci["lo"], diff_hi=ci["hi"],
               median_diff=float(np.median(d)) if d.size else math.nan)
    if (d != 0).sum() >= 2:
        res = sst.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out.update(statistic=float(res.statistic), p_value=float(res.pvalue))
    else:
        out.update(statistic=math.nan, p_value=math.nan)
    return out


def paired_table(wide: pd.DataFrame, metric: str, a: str, b: str, regions=("WT", "TC", "ET"), B: int = DEFAULT_B,
                 seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired per-region comparison of models ``a`` and ``b`` on ``metric``.

    wide: columns model, patient_id, region, <metric> (one method). Patients are paired by id; a patient
    evaluated by one model only is skipped. Returns (summary, diffs): summary has one row per region with
    the fields of :func:`paired_test` plus p_holm (Holm-adjusted over the regions); diffs has region,
    patient_id, a, b, diff = a - b for the plot and the CSV.
    """
    rows, diffs = [], []
    for region in regions:
        g = wide[wide.region == region]
        pa = g[g.model == a].set_index("patient_id")[metric]
        pb = g[g.model == b].set_index("patient_id")[metric]
        common = pa.index.intersection(pb.index).sort_values()
        va, vb = pa.loc[common].to_numpy(np.float64), pb.loc[common].to_numpy(np.float64)
        rows.append({"region": region, **paired_test(va, vb, B=B, seed=seed)})
        diffs.append(pd.DataFrame({"region": region, "patient_id": common, "a": va, "b": vb, "diff": va - vb}))
    summary = pd.DataFrame(rows)
    summary["p_holm"] = holm(summary.p_value.to_numpy())
    return summary, pd.concat(diffs, ignore_index=True)
