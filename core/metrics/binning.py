"""The dense-bins kernel: sparse (row, bin, value) entries scatter-added into dense per-row bin arrays.

Every per-patient or per-group bin table of the project (calibration bins, uncertainty histograms) is stored
sparsely (non-empty bins only); this one function turns such entries into dense arrays for vectorised maths.
"""
from __future__ import annotations

import numpy as np

from core.metrics.uncertainty import N_UNC_BINS



def dense_bins(row, bins, values, n_rows: int, n_bins: int) -> np.ndarray:
    """Sum sparse bin entries into a dense array.

    Args:
        row: (E,) int, the row (patient, group or combo) of each entry, in [0, n_rows).
        bins: (E,) int, the bin of each entry, in [0, n_bins).
        values: (E,) or (E, k) float, the entry's value(s); None counts the entries.
        n_rows: number of rows of the output.
        n_bins: number of bins of the output.

    Returns:
        float64 array (n_rows, n_bins) for 1-D ``values`` (or None), (n_rows, n_bins, k) for 2-D ``values``;
        zeros where no entry falls. Entries with the same (row, bin) are added.
    """
    flat = np.asarray(row, np.int64) * int(n_bins) + np.asarray(bins, np.int64)
    size = int(n_rows) * int(n_bins)
    if values is None:
        return np.bincount(flat, minlength=size).astype(np.float64).reshape(n_rows, n_bins)
    v = np.asarray(values, np.float64)
    if v.ndim == 1:
        return np.bincount(flat, v, minlength=size).reshape(n_rows, n_bins)
    out = np.stack([np.bincount(flat, v[:, j], minlength=size) for j in range(v.shape[1])], axis=-1)
    return out.reshape(int(n_rows), int(n_bins), v.shape[1])


def sum_by_bin(row, bins, values, n_rows: int, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sum sparse bin entries per (row, bin), returned sparse: only the (row, bin) pairs that have an entry.

    Args:
        row, bins: (E,) int entry coordinates as :func:`dense_bins`.
        values: (E, k) float values.
        n_rows, n_bins: the coordinate ranges.

    Returns:
        (rows (M,), bins (M,), sums (M, k) float64), sorted by (row, bin); M pairs with at least one entry.
    """
    flat = np.asarray(row, np.int64) * int(n_bins) + np.asarray(bins, np.int64)
    size = int(n_rows) * int(n_bins)
    idx = np.flatnonzero(np.bincount(flat, minlength=size) > 0)
    v = np.asarray(values, np.float64).reshape(len(flat), -1)
    sums = np.stack([np.bincount(flat, v[:, j], minlength=size)[idx] for j in range(v.shape[1])], axis=1)
    return idx // n_bins, idx % n_bins, sums


def dense_uncertainty_bins(df) -> dict[str, np.ndarray]:
    """Sparse summed uncertainty-bin rows of ONE model/method/region (a frame with ``bin``, n_error, n_correct,
    n_fp, n_fn, n_tp) -> dense float64 arrays of length N_UNC_BINS, the same five plus n_tn = n_correct - n_tp."""
    cols = ("n_error", "n_correct", "n_fp", "n_fn", "n_tp")
    b = df["bin"].to_numpy()
    dense = dense_bins(np.zeros(len(b), np.int64), b, np.stack([df[k].to_numpy(np.float64) for k in cols], axis=1)
                       if len(b) else np.zeros((0, len(cols))), 1, N_UNC_BINS)[0]
    out = {k: dense[:, j] for j, k in enumerate(cols)}
    out["n_tn"] = out["n_correct"] - out["n_tp"]
    return out
