"""Cohort statistics for the dashboard: patient-bootstrap confidence intervals and paired tests.

Every interval here resamples PATIENTS (the unit a deployment decision is about), never voxels: a replicate
draws patients with replacement and recomputes the statistic on them. The draws are a matrix of counts
W (B x P), so a mean over patients is ``W @ x / W @ 1`` and a dataset-level ECE of a replicate comes from its
summed bins ``W @ bins``: exactly what summing the chosen patients' bins in SQL would give. Single intervals
(:func:`mean_ci`, :func:`dataset_ece_ci`, the paired test) use the multinomial bootstrap (row sums P); the
leaderboard uses the Poisson bootstrap (independent Poisson(1) counts per patient, seeded by patient id), whose
replicate sums add up over patient groups, so a subgroup's intervals need no new pass over its patients.
Intervals of means are percentile intervals (2.5 % and 97.5 % of the B replicates by default); the dataset ECE's
is bias-corrected and reaches 0 where the ECE is within noise of 0 (:func:`ece_interval`); all seeded, so a page
shows the same numbers on every rerun.

Pure numpy / scipy; imports nothing of the project except :mod:`core.metrics` for the definitions.
"""
from __future__ import annotations

import functools
import hashlib
import math

import numpy as np
import pandas as pd
from scipy import stats as sst

from core.metrics.binning import dense_bins
from core.metrics.calibration import N_CAL_BINS, ece_from_gap_sums


DEFAULT_B = 1000
DEFAULT_LEVEL = 0.95
# the columns of a leaderboard (:func:`leaderboard`) with both metrics and calibration bins
# per-patient metrics the leaderboard averages over patients (each with a Poisson-bootstrap interval)
MEAN_METRICS = ("dice", "auroc_entropy", "lesion_pq_dice")
LEADERBOARD_COLUMNS = (["model", "method", "region", "n_patients"]
                       + [f"{m}{s}" for m in MEAN_METRICS for s in ("", "_lo", "_hi", "_n", "_nan")]
                       + ["ece_dataset", "ece_dataset_lo", "ece_dataset_hi"])


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


def poisson_mean_ci(values, positions, weights: np.ndarray, level: float = DEFAULT_LEVEL) -> dict:
    """Mean over patients with a percentile interval of the Poisson bootstrap whose weights are given per
    cohort patient: replicate b = sum_j W[b, pos_j] x_j / sum_j W[b, pos_j] over the finite values (a replicate
    that draws nobody is skipped). Each patient keeps its weights (:func:`poisson_weights`) in every subset, so
    moving a filter changes the interval only through the patients it adds or drops.

    values: (n,) per-patient numbers (NaN skipped and counted); positions: (n,) distinct column of each in
    ``weights`` (B, P) float32. Two float32 matrix-vector products over the cohort, no resampling of the subset.
    Returns dict(estimate, lo, hi, n, n_nan) as :func:`mean_ci`."""
    v = np.asarray(values, np.float64).ravel()
    pos = np.asarray(positions, np.int64).ravel()
    if v.shape != pos.shape:
        raise ValueError(f"one position per value: {v.shape} vs {pos.shape}")
    finite = np.isfinite(v)
    out = {"n": int(finite.sum()), "n_nan": int((~finite).sum())}
    if not finite.any():
        return {"estimate": math.nan, "lo": math.nan, "hi": math.nan, **out}
    x = np.zeros(weights.shape[1], np.float32)
    m = np.zeros(weights.shape[1], np.float32)
    x[pos[finite]] = v[finite]
    m[pos[finite]] = 1.0
    den = (weights @ m).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        reps = np.where(den > 0, (weights @ x).astype(np.float64) / den, np.nan)
    lo, hi = _interval(reps, level)
    return {"estimate": float(v[finite].mean()), "lo": lo, "hi": hi, **out}


def ece_interval(D: np.ndarray, N: np.ndarray, rep_D: np.ndarray, rep_N: np.ndarray,
                 level: float = DEFAULT_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap interval of the dataset ECE that covers, vectorised over C rows.

    The plain percentile interval of the replicates' ECE is biased upward: ECE = sum_k |g_k| (g_k the pooled
    gap of bin k, sum_p (sum_prob - sum_true)_pk / N) and every replicate adds noise inside the absolute values, so
    when the patients' gaps cancel the whole interval lies above the estimate (audit: 40 patients, pooled ECE
    0.0008, interval [0.0041, 0.0084]; coverage 0 of a true ECE of 0 in simulation). Here, with the replicates'
    ECE* and b = mean(ECE*) - ECE (the bootstrap bias):

    * hi = max(q_{1-a/2}(ECE*) - b, ECE);
    * lo = max(0, min(q_{a/2}(ECE*) - b, ECE - q_{1-a/2}(Delta*))), Delta*_b = sum_k |g*_bk - g_k| >= |ECE*_b - ECE|
      (triangle inequality): the lower end reaches 0 whenever ECE is within the replicates' noise of 0.

    Simulated coverage of the population ECE at 95 % (40 patients, 20 bins, 400 cohorts; population ECE 0, 0.003,
    0.005, 0.0072, 0.02, 0.05): 0.98 to 1.00, where the percentile interval gave 0.00, 0.76, 0.95, 0.76, 0.96,
    0.96 (``tests/unit/test_ece_interval.py``). The interval always contains the estimate.

    Args:
        D: (C, K) sum over patients of sum_prob - sum_true per bin; N: (C,) voxels.
        rep_D: (B, C, K) the same per bootstrap replicate (weighted by the draws); rep_N: (B, C).
        level: the interval's level.

    Returns:
        (lo, hi), each (C,); NaN where N = 0 or no replicate drew a voxel.
    """
    D, N = np.asarray(D, np.float64), np.asarray(N, np.float64)
    rep_D, rep_N = np.asarray(rep_D, np.float64), np.asarray(rep_N, np.float64)
    a = (1.0 - level) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        g = np.where(N[:, None] > 0, D / np.where(N > 0, N, 1.0)[:, None], np.nan)  # (C, K)
        g_rep = np.where(rep_N[..., None] > 0, rep_D / np.where(rep_N > 0, rep_N, 1.0)[..., None], np.nan)
    est = np.abs(g).sum(-1)
    reps = np.abs(g_rep).sum(-1)  # (B, C)
    reps[~(rep_N > 0)] = np.nan
    delta = np.abs(g_rep - g[None]).sum(-1)
    delta[~(rep_N > 0)] = np.nan
    lo, hi = np.full(est.shape, np.nan), np.full(est.shape, np.nan)
    ok = (N > 0) & np.isfinite(reps).any(0)
    if ok.any():
        q_lo, q_hi = np.nanquantile(reps[:, ok], [a, 1.0 - a], axis=0)
        bias = np.nanmean(reps[:, ok], axis=0) - est[ok]
        d_hi = np.nanquantile(delta[:, ok], 1.0 - a, axis=0)
        hi[ok] = np.maximum(q_hi - bias, est[ok])
        lo[ok] = np.maximum(0.0, np.minimum(q_lo - bias, est[ok] - d_hi))
    return lo, hi


def dataset_ece_ci(n: np.ndarray, sum_prob: np.ndarray, sum_true: np.ndarray, B: int = DEFAULT_B,
                   level: float = DEFAULT_LEVEL, seed: int = 0) -> dict:
    """Dataset-level ECE (from bins summed over patients) with a patient-bootstrap interval (:func:`ece_interval`).

    n, sum_prob, sum_true: (P, K) per-patient calibration bins (voxel counts, sums of p, sums of labels).
    Returns dict(estimate, lo, hi, n) where n = P patients.
    """
    n, sp, st = (np.asarray(a, np.float64) for a in (n, sum_prob, sum_true))
    P = n.shape[0]
    if P == 0:
        return {"estimate": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    est = float(ece_from_gap_sums(sp.sum(0) - st.sum(0), n.sum()))
    W = bootstrap_counts(P, B, seed).astype(np.float64)
    d = sp - st
    lo, hi = ece_interval(d.sum(0)[None], np.array([n.sum()]), (W @ d)[:, None], (W @ n).sum(-1)[:, None], level)
    return {"estimate": est, "lo": float(lo[0]), "hi": float(hi[0]), "n": P}


def poisson_weights(patient_ids, B: int = DEFAULT_B, seed: int = 0) -> np.ndarray:
    """Poisson bootstrap weights: float32 (B, P), entry (b, j) the number of times patient ``patient_ids[j]``
    is drawn in replicate b, independent Poisson(1) counts (Hanley & MacGibbon 2006; the multinomial
    bootstrap's counts are Binomial(P, 1/P), which tends to Poisson(1)).

    Column j depends on (patient id, B, seed) only: a Philox generator keyed by the id's 64-bit BLAKE2b digest
    and the seed. So a patient carries the same B counts in every subset, table and process, and the replicate
    sums of a subgroup are sums of its patient groups' replicate sums (:func:`leaderboard_parts`). The last
    few arrays are kept (read-only); about 0.75 s for 10,000 patients."""
    return _poisson_weights(tuple(str(p) for p in patient_ids), int(B), int(seed))


@functools.lru_cache(maxsize=4)
def _poisson_weights(ids: tuple, B: int, seed: int) -> np.ndarray:
    wt = np.empty((len(ids), B), np.float32)  # one contiguous row per patient, returned transposed
    for j, pid in enumerate(ids):
        key = int.from_bytes(hashlib.blake2b(pid.encode(), digest_size=8).digest(), "little")
        wt[j] = np.random.Generator(np.random.Philox(key=[key, seed])).poisson(1.0, B)
    wt.flags.writeable = False
    return wt.T


def _reduce_groups(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of consecutive row blocks: x (P, ...) sorted by group, starts (G,) first row of each group."""
    return np.add.reduceat(x, starts, axis=0) if len(x) else np.zeros((0,) + x.shape[1:], x.dtype)


def leaderboard_parts(per_patient: pd.DataFrame, cal_bins=None, groups=None, B: int = DEFAULT_B,
                      seed: int = 0) -> dict:
    """Per patient group, the sums from which :func:`leaderboard_from_parts` makes the leaderboard of any union
    of groups (e.g. the patients inside an entropy-quantile range) without touching a patient again.

    per_patient, cal_bins: as :func:`leaderboard`. groups: optional group id per patient, a mapping
    patient_id -> int (default: one group); a patient missing from it gets group -2.
    Returns dict: combos (C rows of model, method, region), groups (G,) sorted group ids, B, n_patients (G, C)
    patients with a row; per metric m in dice / auroc_entropy: m -> dict(sum (G, C) float64 of the values,
    n (G, C) patients with a value, nan (G, C) evaluated without one, rep_x / rep_n (G, B, C) float32: per
    replicate, the sums of w x and of w over the patients with a value, w = :func:`poisson_weights`; float64);
    'ece' -> dict(D (G, C, K) float64 sum over patients of sum_prob - sum_true per bin, N (G, C) voxels,
    rep_D (G, B, C, K) float32 and rep_N (G, B, C) float64 the same weighted by w). Memory about
    4 G B C (K + 10) bytes (float32 for the K bins: about 1e-7 relative, far below an interval's width).
    """
    keys = ["model", "method", "region"]
    combos = per_patient[keys].drop_duplicates().sort_values(keys).reset_index(drop=True)
    cidx = pd.MultiIndex.from_frame(combos)
    pids = np.sort(per_patient.patient_id.unique()).astype(object)
    P, C = len(pids), len(combos)
    if groups is None:
        g = np.zeros(P, np.int64)
    else:
        g = pd.Series(groups, dtype="float64").reindex(pids).fillna(-2).to_numpy().astype(np.int64)
    ug, ginv = np.unique(g, return_inverse=True)
    order = np.argsort(ginv, kind="stable")
    starts = np.searchsorted(ginv[order], np.arange(len(ug)))
    bounds = np.append(starts, P)
    G = len(ug)
    parts = {"combos": combos, "groups": ug, "B": int(B)}
    if P == 0:
        parts["n_patients"] = np.zeros((0, C), np.int64)
        return parts
    pi = pd.Index(pids).get_indexer(per_patient.patient_id)  # hashed: 100,000s of string ids without a sort
    ci = cidx.get_indexer(pd.MultiIndex.from_frame(per_patient[keys]))
    inv = np.empty(P, np.int64)
    inv[order] = np.arange(P)  # patient index -> row in group order
    present = np.zeros((P, C), bool)
    present[inv[pi], ci] = True
    parts["n_patients"] = _reduce_groups(present.astype(np.int64), starts)
    W = np.ascontiguousarray(poisson_weights(pids[order], B, seed))  # (B, P), columns in group order
    W64 = W.astype(np.float64)

    def weighted(x: np.ndarray, dtype=np.float64) -> np.ndarray:  # x (P, ...) in group order -> (G, B, ...)
        flat = x.reshape(P, -1).astype(dtype)
        w = W if dtype == np.float32 else W64
        out = np.empty((G, B, flat.shape[1]), dtype)
        for k in range(G):
            out[k] = w[:, bounds[k]:bounds[k + 1]] @ flat[bounds[k]:bounds[k + 1]]
        return out.reshape((G, B) + x.shape[1:])

    for m in MEAN_METRICS:
        if m not in per_patient:
            continue
        X = np.full((P, C), np.nan)
        X[inv[pi], ci] = per_patient[m].to_numpy(np.float64)
        fin = np.isfinite(X)
        X0 = np.where(fin, X, 0.0)
        parts[m] = {"sum": _reduce_groups(X0, starts), "n": _reduce_groups(fin.astype(np.int64), starts),
                    "nan": _reduce_groups((present & ~fin).astype(np.int64), starts),
                    "rep_x": weighted(X0), "rep_n": weighted(fin)}
    if cal_bins is not None and not isinstance(cal_bins, dict) and len(cal_bins):
        cb = cal_bins[cal_bins.patient_id.isin(pids)]
        cal_bins = {"patient": np.searchsorted(pids, cb.patient_id.to_numpy()),
                    "combo": cidx.get_indexer(pd.MultiIndex.from_frame(cb[keys])), "bin": cb.bin.to_numpy(),
                    "d": cb.sum_prob.to_numpy(np.float64) - cb.sum_true.to_numpy(np.float64), "n": cb.n.to_numpy()}
    if isinstance(cal_bins, dict) and len(cal_bins["bin"]):
        # integer-coded arrays: patient = index into the sorted patient ids, combo = row of the sorted combos
        bi = np.asarray(cal_bins["bin"], np.int64)
        K = max(int(bi.max()) + 1, N_CAL_BINS)
        bci, bpi = np.asarray(cal_bins["combo"], np.int64), np.asarray(cal_bins["patient"], np.int64)
        ok = bci >= 0
        pc = inv[bpi[ok]] * C + bci[ok]
        D = dense_bins(pc, bi[ok], np.asarray(cal_bins["d"], np.float64)[ok], P * C, K).reshape(P, C, K)
        N = np.bincount(pc, np.asarray(cal_bins["n"], np.float64)[ok], minlength=P * C).reshape(P, C)
        # each patient's d = sum_prob - sum_true is exact (float64) before the float32 weighting
        parts["ece"] = {"D": _reduce_groups(D, starts), "N": _reduce_groups(N, starts), "rep_D": weighted(D, np.float32),
                        "rep_N": weighted(N)}
    return parts


def leaderboard_from_parts(parts: dict, keep=None, level: float = DEFAULT_LEVEL) -> pd.DataFrame:
    """The leaderboard (columns of :func:`leaderboard`) of the patients of the groups where ``keep`` (bool per
    entry of ``parts['groups']``; default all) is True, from :func:`leaderboard_parts`: the point estimates
    from the exact (float64) sums, each replicate's statistic from the summed weighted sums."""
    combos = parts["combos"]
    out = combos.copy()
    k = np.ones(len(parts["groups"]), bool) if keep is None else np.asarray(keep, bool)
    out["n_patients"] = parts["n_patients"][k].sum(0) if len(parts["groups"]) else 0
    C = len(combos)

    def intervals(reps: np.ndarray) -> np.ndarray:  # (B, C) -> (C, 2); NaN replicates (nobody drawn) skipped
        return np.array([_interval(reps[:, j].astype(np.float64), level) for j in range(C)]).reshape(C, 2)

    with np.errstate(invalid="ignore", divide="ignore"):
        for m in MEAN_METRICS:
            if m not in parts:
                continue
            p = parts[m]
            s, n = p["sum"][k].sum(0), p["n"][k].sum(0)
            lo_hi = intervals(p["rep_x"][k].sum(0) / p["rep_n"][k].sum(0))
            out[m] = np.where(n > 0, s / np.maximum(n, 1), np.nan)
            out[f"{m}_lo"], out[f"{m}_hi"] = lo_hi[:, 0], lo_hi[:, 1]
            out[f"{m}_n"], out[f"{m}_nan"] = n, p["nan"][k].sum(0)
        if "ece" in parts:
            e = parts["ece"]
            N = e["N"][k].sum(0)
            out["ece_dataset"] = ece_from_gap_sums(e["D"][k].sum(0), N)
            out["ece_dataset_lo"], out["ece_dataset_hi"] = ece_interval(e["D"][k].sum(0), N, e["rep_D"][k].sum(0),
                                                                        e["rep_N"][k].sum(0), level)
    return out


def leaderboard(per_patient: pd.DataFrame, cal_bins: pd.DataFrame | dict | None = None, B: int = DEFAULT_B,
                level: float = DEFAULT_LEVEL, seed: int = 0) -> pd.DataFrame:
    """Leaderboard of model x method x region with patient-bootstrap intervals and counts, all rows at once.

    per_patient: columns model, method, region, patient_id, and any of dice, auroc_entropy (one row per
    evaluated patient; NaN = undefined for that patient, e.g. AUROC without an error voxel).
    cal_bins: optional per-patient calibration bins of the same patients: model, method, region, patient_id,
    bin, n, sum_prob, sum_true; or the same as integer-coded arrays (dict patient, combo, bin, d = sum_prob -
    sum_true, n) with patient indexing the sorted patient ids and combo the sorted (model, method, region) rows.

    Poisson bootstrap over patients: in replicate b patient p is drawn w_bp ~ Poisson(1) times
    (:func:`poisson_weights`, the same counts for a patient in every row, so rows are compared on the same
    resamples, and in every subgroup). A replicate's mean is sum_p w_bp x_p / sum_p w_bp [x_p defined] over the
    patients where the metric is defined; its dataset ECE is sum_k |sum_p w_bp (sum_prob_pk - sum_true_pk)| /
    sum_p w_bp n_p (the summed bins of the drawn patients). A replicate that draws nobody (probability e^-P)
    is skipped. Returns one row per (model, method, region): n_patients; for dice / auroc_entropy: <m>,
    <m>_lo, <m>_hi, <m>_n (patients with a value), <m>_nan (evaluated patients without one);
    ece_dataset(_lo, _hi).
    """
    keys = ["model", "method", "region"]
    if per_patient.empty:
        return pd.DataFrame(columns=keys + ["n_patients"])
    return leaderboard_from_parts(leaderboard_parts(per_patient, cal_bins, None, B, seed), None, level)


P_FLOOR = 1e-300


def format_p(p) -> str:
    """A p-value as text: 3 significant digits, ``"< 1e-300"`` below :data:`P_FLOOR` (scipy's normal
    approximation underflows to exactly 0 for large, one-sided samples: "0" would claim certainty), ``"-"`` for NaN
    (fewer than 2 non-zero differences)."""
    if p is None or not np.isfinite(p):
        return "-"
    return "< 1e-300" if p < P_FLOOR else f"{p:.3g}"


def format_p_columns(df: pd.DataFrame, columns=("p_value", "p_holm")) -> pd.DataFrame:
    """Copy of ``df`` with its p-value columns as :func:`format_p` text (for tables shown to a person)."""
    out = df.copy()
    for c in columns:
        if c in out:
            out[c] = [format_p(v) for v in out[c]]
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


def paired_test(a, b, B: int = DEFAULT_B, level: float = DEFAULT_LEVEL, seed: int = 0, poisson=None) -> dict:
    """Paired comparison of two models on the same patients: d = a - b per patient.

    a, b: (P,) per-patient values aligned by patient. Pairs with a NaN on either side are skipped (counted in
    n_nan). Returns n (pairs used), n_nan, n_zero (d == 0, dropped by the test as in Wilcoxon's original
    method), mean_diff with a bootstrap interval (diff_lo, diff_hi), median_diff, and the two-sided Wilcoxon
    signed-rank test (scipy.stats.wilcoxon, zero_method='wilcox': exact null distribution for small n without
    ties, normal approximation otherwise): statistic W and p_value. p_value is NaN with fewer than 2 non-zero d.
    ``poisson``: (weights (B, P), positions (n,)) of the cohort's Poisson bootstrap (:func:`poisson_mean_ci`)
    for the interval, instead of a multinomial resampling of the pairs.
    """
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same patients: {a.shape} vs {b.shape}")
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    out = {"n": int(d.size), "n_nan": int((~ok).sum()), "n_zero": int((d == 0).sum())}
    if poisson is None:
        ci = mean_ci(d, B, level, seed)
    else:
        weights, positions = poisson
        ci = poisson_mean_ci(d, np.asarray(positions).ravel()[ok], weights, level)
    out.update(mean_diff=ci["estimate"], diff_lo=ci["lo"], diff_hi=ci["hi"],
               median_diff=float(np.median(d)) if d.size else math.nan)
    if (d != 0).sum() >= 2:
        res = sst.wilcoxon(d, zero_method="wilcox", alternative="two-sided")
        out.update(statistic=float(res.statistic), p_value=float(res.pvalue))
    else:
        out.update(statistic=math.nan, p_value=math.nan)
    return out


def paired_table(wide: pd.DataFrame, metric: str, a: str, b: str, regions=("WT", "TC", "ET"), B: int = DEFAULT_B,
                 seed: int = 0, cohort_ids=None, by: str = "model") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Paired per-region comparison of ``a`` and ``b`` on ``metric``: two models of one method (``by="model"``)
    or two methods of one model (``by="method"``, e.g. mc_dropout vs deterministic, deterministic+ts vs
    deterministic).

    wide: columns <by>, patient_id, region, <metric>, with the other key fixed (one method, or one model).
    Patients are paired by id; a patient evaluated by one side only is skipped. Returns (summary, diffs): summary has one row per region with
    the fields of :func:`paired_test` plus p_holm (Holm-adjusted over the regions); diffs has region,
    patient_id, a, b, diff = a - b for the plot and the CSV. ``cohort_ids``: every patient of the cohort (a
    superset of wide's): the intervals are then the cohort's Poisson bootstrap (:func:`poisson_weights`, the
    leaderboard's), the same patient weights in every subset.
    """
    poisson = None
    if cohort_ids is not None:
        cohort_ids = tuple(str(p) for p in cohort_ids)
        poisson = poisson_weights(cohort_ids, B, seed), pd.Index(cohort_ids)
    rows, diffs = [], []
    for region in regions:
        g = wide[wide.region == region]
        pa = g[g[by] == a].set_index("patient_id")[metric]
        pb = g[g[by] == b].set_index("patient_id")[metric]
        common = pa.index.intersection(pb.index).sort_values()
        va, vb = pa.loc[common].to_numpy(np.float64), pb.loc[common].to_numpy(np.float64)
        pw = None
        if poisson is not None:
            pos = poisson[1].get_indexer(common.astype(str))
            if (pos < 0).any():
                raise ValueError(f"patients not in cohort_ids: {list(common[pos < 0][:5])}")
            pw = (poisson[0], pos)
        rows.append({"region": region, **paired_test(va, vb, B=B, seed=seed, poisson=pw)})
        diffs.append(pd.DataFrame({"region": region, "patient_id": common, "a": va, "b": vb, "diff": va - vb}))
    summary = pd.DataFrame(rows)
    summary["p_holm"] = holm(summary.p_value.to_numpy())
    return summary, pd.concat(diffs, ignore_index=True)


def paired_metrics(wide: pd.DataFrame, metrics, a: str, b: str, by: str = "method", regions=("WT", "TC", "ET"),
                   B: int = DEFAULT_B, seed: int = 0, cohort_ids=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """:func:`paired_table` of several metrics: e.g. two methods of one model (``by="method"``: wide holds one
    model's rows) on Dice, ECE, AUROC, ... at once.

    Returns:
        (summary, diffs) as :func:`paired_table` with a ``metric`` column first; p_holm adjusts each metric's
        regions (as the single-metric table); a metric absent from ``wide`` is skipped.
    """
    tabs, diffs = [], []
    for metric in [m for m in metrics if m in wide]:
        t, d = paired_table(wide, metric, a, b, regions, B, seed, cohort_ids, by=by)
        tabs.append(t.assign(metric=metric))
        diffs.append(d.assign(metric=metric))
    if not tabs:
        return pd.DataFrame(columns=["metric", "region"]), pd.DataFrame(columns=["metric", "region", "patient_id"])
    summary = pd.concat(tabs, ignore_index=True)
    out = pd.concat(diffs, ignore_index=True)
    return summary[["metric"] + [c for c in summary.columns if c != "metric"]], \
        out[["metric"] + [c for c in out.columns if c != "metric"]]
