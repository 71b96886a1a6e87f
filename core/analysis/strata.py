"""Patient strata by an uncertainty measure: quantile strata, and the quantile groups of the entropy filter
(every quantile range in 5 % steps keeps a union of whole groups)."""
from __future__ import annotations

import numpy as np
import pandas as pd


def strata(values: pd.DataFrame, n_strata: int) -> tuple[pd.DataFrame, list[str]]:
    """Assign each patient (patient_id, value) to a quantile stratum Q1 (lowest) .. Qn of equal size (by rank;
    ties broken by order), NaN values dropped."""
    v = values.dropna(subset=["value"])
    labels = [f"Q{i + 1}" for i in range(n_strata)]
    rank = v.value.rank(method="first").to_numpy() - 1
    k = np.minimum((rank * n_strata // max(len(v), 1)).astype(int), n_strata - 1)
    return v.assign(stratum=[labels[i] for i in k]), labels


QUANTILE_STEP = 5  # the sidebar's quantile slider moves in 5 % steps


EDGES = np.arange(0, 101, QUANTILE_STEP)


def quantile_groups(values: pd.DataFrame) -> np.ndarray:
    """Group id per patient (row of ``values``: patient_id, value) such that every quantile range the sidebar
    can set ([lo, hi] in 5 % steps) keeps a union of whole groups.

    With q_k the (k x 5) % quantile of the finite values (linear interpolation), a patient with value v has
    a = max{k: q_k <= v} and b = min{k: q_k >= v} and is kept by [lo, hi] iff q_lo <= v <= q_hi, i.e. iff
    lo/5 <= a and b <= hi/5. Group id = 32 a + b; NaN values get -1 (kept only by the whole range 0-100).
    """
    v = values.value.to_numpy(dtype=float)
    g = np.full(len(v), -1, dtype=np.int64)
    finite = np.isfinite(v)
    if finite.any():
        q = np.quantile(v[finite], EDGES / 100.0)
        a = np.searchsorted(q, v[finite], side="right") - 1
        b = np.searchsorted(q, v[finite], side="left")
        g[finite] = 32 * a + b
    return g


def groups_kept(group_ids, q_range) -> np.ndarray:
    """Boolean per group id: inside the quantile range (see :func:`quantile_groups`)."""
    g = np.asarray(group_ids, dtype=np.int64)
    lo, hi = q_range
    if (lo, hi) == (0, 100):
        return np.ones(g.shape, bool)
    a, b = g // 32, g % 32
    return (g >= 0) & (lo // QUANTILE_STEP <= a) & (b <= hi // QUANTILE_STEP)


def filter_by_quantile(values: pd.DataFrame, q_range) -> list[str]:
    """Patients whose value lies within [quantile(lo), quantile(hi)] (inclusive, linear interpolation), for lo and
    hi multiples of 5. Patients with a missing value are kept only when the range is the whole cohort (0-100)."""
    if values.empty:
        return []
    keep = groups_kept(quantile_groups(values), q_range)
    return values.patient_id[keep].tolist()
