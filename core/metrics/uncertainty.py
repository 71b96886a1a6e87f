"""Uncertainty-vs-error histograms and what they give: AUROC, uncertainty-error overlap, FP-removal benefit,
review-budget curves.

Bins: :data:`UNC_EDGES`, 2991 bins: bin 0 = [0, 1e-30), bins 1..2000 log-spaced on [1e-30, 0.01) (3.3 % wide),
bins 2001..2990 linear 0.001 wide on [0.01, 1] (the last includes 1). Bin k holds UNC_EDGES[k] <= u < UNC_EDGES[k + 1]
exactly; it is found from the float's bit pattern (:func:`uncertainty_bin_index`), not from a log.
"""
from __future__ import annotations

import math

import numpy as np

from core.metrics import validation



UNC_MIN = 1e-30


UNC_LIN_START = 0.01


UNC_LIN_STEP = 0.001


N_UNC_LOG = 2000


# 2992 float64 edges: 0, 2001 geometric edges 1e-30 ... 0.01, then 0.011 ... 1.0 as correctly rounded k / 1000 (so that
# a float equal to a U-E threshold such as 0.15 lies exactly on its edge)
UNC_EDGES = np.concatenate([[0.0], np.geomspace(UNC_MIN, UNC_LIN_START, N_UNC_LOG + 1),
                            np.arange(round(UNC_LIN_START / UNC_LIN_STEP) + 1, round(1 / UNC_LIN_STEP) + 1) * 1.0
                            / round(1 / UNC_LIN_STEP)])


N_UNC_BINS = len(UNC_EDGES) - 1  # 2991


UEO_THRESHOLDS = tuple(round(0.05 * k, 2) for k in range(1, 20))  # 0.05 ... 0.95


BUDGETS = tuple(np.round(np.arange(1, 51) * 0.001, 3))  # 0.1 % ... 5 % of the voxel set


UNCERTAIN_T = 0.5  # a voxel is 'uncertain' when its normalised entropy is >= 0.5


# ------------------------------------------------------------------------- uncertainty vs error
# Bit-pattern binning. A non-negative float's bit pattern, read as an integer, is ordered like its value; its top
# bits (exponent and the first 9 mantissa bits) name a "cell" [2^e (1 + j/512), 2^e (1 + (j+1)/512)), i.e. a cell at
# most 1/512 = 0.2 % of its value wide, narrower than any uncertainty bin (log bins 3.3 %, linear bins 0.001 >= cell
# width 2^-10 below 1). So a cell holds at most one edge: bin = base[cell] + (u >= edge[cell]). Cells are numbered
# as float32 bit patterns >> 14 (2^18 cells cover every float32 incl. negatives, inf and NaN); float64 values are
# mapped onto the same numbering. The tables are built once from UNC_EDGES, so the index is exactly
# searchsorted(UNC_EDGES, u, side="right") - 1, clipped to [0, N_UNC_BINS - 1].
_CELL_SHIFT32 = 23 - 9


_CELL_SHIFT64 = 52 - 9


_CELL_OFFSET64 = (1023 - 127) << 9  # float64 cell number - float32 cell number of the same interval


_N_CELLS = 1 << (32 - _CELL_SHIFT32)


_CELL_INF = 0x7F800000 >> _CELL_SHIFT32  # cell of +inf (and positive NaN); cells above it are negative floats


def _unc_cell_tables():
    cells = np.arange(_N_CELLS, dtype=np.int64)
    finite = cells < _CELL_INF  # non-negative finite cells (the cell just below +inf stops at inf)
    with np.errstate(invalid="ignore"):
        start = (cells << _CELL_SHIFT32).astype(np.uint32).view(np.float32).astype(np.float64)
        stop = ((cells + 1) << _CELL_SHIFT32).astype(np.uint32).view(np.float32).astype(np.float64)
    start[~finite] = stop[~finite] = 0.0
    stop[_CELL_INF - 1] = np.inf
    base = np.zeros(_N_CELLS, np.int64)
    base[finite] = np.clip(np.searchsorted(UNC_EDGES, start[finite], side="right") - 1, 0, N_UNC_BINS - 1)
    base[_CELL_INF] = N_UNC_BINS - 1  # +inf and NaN: last bin (NaN never gets here: inputs are checked)
    # the one edge strictly inside each cell (if any): searchsorted on start (right) and stop (left)
    lo = np.searchsorted(UNC_EDGES, start, side="right")
    hi = np.searchsorted(UNC_EDGES, stop, side="left")
    inside = finite & (hi > lo) & (base < N_UNC_BINS - 1)  # (1.0, the top edge, is a cell start: never inside)
    if (hi - lo)[finite].max() > 1:
        raise AssertionError("an uncertainty-bin cell holds more than one edge")
    edge64 = np.full(_N_CELLS, np.nan)  # NaN: no edge in the cell (u >= NaN is False, also for u = inf)
    edge64[inside] = UNC_EDGES[lo[inside]]
    # float32 inputs: compare with the smallest float32 >= the edge (exact for every float32 u: u >= e <=> u >= that)
    e32 = edge64.astype(np.float32)
    up = inside & (e32.astype(np.float64) < edge64)
    e32[up] = np.nextafter(e32[up], np.float32(np.inf))
    return base, edge64, e32


_UNC_BASE, _UNC_EDGE64, _UNC_EDGE32 = _unc_cell_tables()


def _unc_cells(u: np.ndarray) -> np.ndarray:
    """Cell number (intp) of each value of a float32 or float64 array (see the table comment above)."""
    if u.dtype == np.float32:
        return np.right_shift(u.view(np.uint32), _CELL_SHIFT32, dtype=np.intp)
    c = (u.view(np.int64) >> _CELL_SHIFT64) - _CELL_OFFSET64  # negative floats: negative -> cell 0 (bin 0)
    return np.clip(c, 0, _CELL_INF, out=c)  # below float32's range: cell 0 (bin 0); above: the +inf cell (last bin)


def uncertainty_bin_index(u: np.ndarray) -> np.ndarray:
    """Bin index (int64, same shape as ``u``) of uncertainty values in [0, 1] on :data:`UNC_EDGES`.

    Bin 0 = [0, 1e-30); bins 1..2000 log-spaced on [1e-30, 0.01); bins 2001..2990 linear, 0.001 wide, on [0.01, 1]
    (the last includes 1), so every multiple of 0.05 is an edge (thresholds of the U-E metric). Exactly
    ``searchsorted(UNC_EDGES, u, side="right") - 1`` clipped to [0, 2990] (float32 values compared exactly with the
    float64 edges): negative values (incl. -0.0) go to bin 0, values above 1 to the last bin. Computed from the bit
    pattern (one table look-up and one comparison per value, no log). Other dtypes are converted to float64."""
    u = np.asarray(u)
    if u.dtype != np.float32 and u.dtype != np.float64:
        u = u.astype(np.float64)
    shape, u = u.shape, u.reshape(-1)
    cell = _unc_cells(u)
    edge = _UNC_EDGE32 if u.dtype == np.float32 else _UNC_EDGE64
    out = _UNC_BASE.take(cell)
    out += u >= edge.take(cell)
    return out.reshape(shape)


def uncertainty_bins(u: np.ndarray, error: np.ndarray, pred: np.ndarray | None = None):
    """Histogram of uncertainty split by voxel outcome (1-D masked arrays).

    Returns (n_error, n_correct) int64 arrays of :data:`N_UNC_BINS`; with ``pred`` (bool predicted positive)
    returns (n_fp, n_fn, n_tp, n_tn): error = fp + fn, correct = tp + tn.
    """
    return _uncertainty_bins_idx(uncertainty_bin_index(np.asarray(u).ravel()), error, pred)


def _uncertainty_bins_idx(idx, error, pred=None):
    e = np.asarray(error, bool).ravel()
    if pred is None:
        return np.bincount(idx[e], minlength=N_UNC_BINS), np.bincount(idx[~e], minlength=N_UNC_BINS)
    p = np.asarray(pred, bool).ravel()
    code = idx * 4 + (e.astype(np.int64) * 2 + p)  # 0 tn, 1 tp, 2 fn, 3 fp
    c = np.bincount(code, minlength=4 * N_UNC_BINS).reshape(N_UNC_BINS, 4)
    return c[:, 3], c[:, 2], c[:, 1], c[:, 0]


def auroc_from_bins(n_pos, n_neg) -> float:
    """AUROC of uncertainty for separating positives (e.g. wrong voxels) from negatives, from binned counts.

    AUROC = P(u_pos > u_neg) + 0.5 P(u_pos = u_neg), with voxels in the same bin counted as ties.

    Args:
        n_pos: (..., K) positive counts per uncertainty bin, lowest uncertainty first.
        n_neg: (..., K) negative counts per bin.

    Returns:
        float for 1-D input, else a (...) float64 array; NaN where either class is empty.
    """
    ne = np.asarray(n_pos, np.float64)
    nc = np.asarray(n_neg, np.float64)
    P, N = ne.sum(axis=-1), nc.sum(axis=-1)
    below = np.cumsum(nc, axis=-1) - nc  # negatives in the lower bins
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where((P > 0) & (N > 0), (ne * (below + 0.5 * nc)).sum(axis=-1) / (P * N), np.nan)
    return float(out) if out.ndim == 0 else out


_THRESHOLD_BIN_CACHE: dict[float, int] = {}


def threshold_bin(t: float) -> int:
    """First bin whose voxels satisfy u >= t, for t a bin edge (multiples of 0.001 above 0.01)."""
    b = _THRESHOLD_BIN_CACHE.get(t)
    if b is None:
        b = _THRESHOLD_BIN_CACHE[t] = int(uncertainty_bin_index(np.array([t]))[0])
    return b


def ueo_curve(n_error, n_correct, thresholds=UEO_THRESHOLDS) -> np.ndarray:
    """Uncertainty-error overlap (Jungo & Reyes): Dice between {u >= t} and the error voxels, per threshold t."""
    ne, nc = np.asarray(n_error, np.float64), np.asarray(n_correct, np.float64)
    E = ne.sum()
    out = []
    for t in thresholds:
        b = threshold_bin(t)
        ue, u = ne[b:].sum(), ne[b:].sum() + nc[b:].sum()
        out.append(2 * ue / (u + E) if (u + E) > 0 else math.nan)
    return np.array(out)


def removal_raises_dice(tp, fp, fn, tpu, fpu) -> np.ndarray:
    """1.0 where removing the uncertain predicted voxels (``tpu`` of the ``tp``, ``fpu`` of the ``fp``) raises Dice,
    else 0.0; NaN where nothing is predicted (tp + fp = 0). Broadcasting arrays of voxel counts.

    Both Dice values use the BraTS empty rule (1 when prediction and truth are both empty), so a region absent
    from the truth (TP = FN = 0) whose false positives are all uncertain gains (0 -> 1). Otherwise this equals
    paper 002's FPU TP > TPU (TP + FP + FN): Dice after > Dice before, since
    2 (TP - TPU) / (S - TPU - FPU) > 2 TP / S with S = 2 TP + FP + FN. Exact: equal rationals give equal floats.
    """
    tp, fp, fn, tpu, fpu = np.broadcast_arrays(*(np.asarray(x, np.float64) for x in (tp, fp, fn, tpu, fpu)))

    def _dice(a, b, c):
        s = 2 * a + b + c
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(s > 0, 2 * a / np.where(s > 0, s, 1), 1.0)

    gain = (_dice(tp - tpu, fp - fpu, fn + tpu) > _dice(tp, fp, fn)).astype(np.float64)
    return np.where(tp + fp > 0, gain, np.nan)


def fp_removal_benefit(n_fp, n_fn, n_tp, t: float) -> float:
    """1.0 if removing the predicted voxels with u >= t raises Dice (paper 002, BraTS empty rule:
    :func:`removal_raises_dice`), else 0.0. NaN when nothing is predicted. Inputs: (K,) uncertainty bins."""
    b = threshold_bin(t)
    tp, fp, fn = (float(np.sum(x)) for x in (n_tp, n_fp, n_fn))
    fpu, tpu = float(np.sum(n_fp[b:])), float(np.sum(n_tp[b:]))
    return float(removal_raises_dice(tp, fp, fn, tpu, fpu))


def budget_curve(n_error, n_correct, budgets=BUDGETS):
    """Review budget (paper 003): review the fraction b of the voxel set with the highest uncertainty.

    Returns (captured, ueo): share of all error voxels inside the reviewed set, and the Dice overlap between
    the reviewed set and the errors, per budget. Voxels of the bin cut by the budget are taken in
    proportion (the bin's error share), i.e. ties are broken at random in expectation.
    """
    ne = np.asarray(n_error, np.float64)[::-1]
    nt = ne + np.asarray(n_correct, np.float64)[::-1]
    N, E = nt.sum(), ne.sum()
    if N == 0 or E == 0:
        nan = np.full(len(budgets), math.nan)
        return nan, nan
    cum_n = np.concatenate([[0], np.cumsum(nt)])
    cum_e = np.concatenate([[0], np.cumsum(ne)])
    k = np.asarray(budgets, np.float64) * N
    j = np.clip(np.searchsorted(cum_n, k, side="right") - 1, 0, len(nt) - 1)
    frac = np.where(nt[j] > 0, (k - cum_n[j]) / np.maximum(nt[j], 1), 0.0)
    err_in = cum_e[j] + frac * ne[j]
    return err_in / E, 2 * err_in / (k + E)


def budget_auc(values, budgets=BUDGETS) -> float:
    """Normalised area under a budget curve over (0, max budget]: trapezoid from (0, 0) divided by max budget."""
    b = np.concatenate([[0.0], np.asarray(budgets, np.float64)])
    v = np.concatenate([[0.0], np.asarray(values, np.float64)])
    if not np.isfinite(v).all():
        return math.nan
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(b)) / b[-1])


def auroc_exact(u: np.ndarray, error: np.ndarray) -> float:
    """Exact tie-aware AUROC (Mann-Whitney U / (P N)) of ``u`` for ``error`` (1-D arrays). NaN if one class."""
    u = np.asarray(u, np.float64).ravel()
    e = np.asarray(error, bool).ravel()
    P = int(e.sum())
    N = e.size - P
    if P == 0 or N == 0:
        return math.nan
    ranks = _average_ranks(u)
    return float((ranks[e].sum() - P * (P + 1) / 2) / (P * N))


def _average_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.concatenate([[True], xs[1:] != xs[:-1], [True]])
    starts = np.flatnonzero(boundaries)
    avg = (starts[:-1] + starts[1:] - 1) / 2.0 + 1.0  # 1-based average rank of each tie group
    ranks = np.empty(x.size, np.float64)
    ranks[order] = np.repeat(avg, np.diff(starts))
    return ranks


def epkl_to_unit(epkl: np.ndarray) -> np.ndarray:
    """Map EPKL (bits, >= 0, unbounded) monotonically into [0, 1): u = 1 - 2^-EPKL, so it can use the
    uncertainty bins (AUROC and every ranking are unchanged by a monotone map)."""
    return -np.expm1(-np.asarray(epkl, np.float64) * math.log(2.0))


_TORCH_UNC_TABLES = None


def _unc_counts(u: np.ndarray) -> np.ndarray:
    """Voxel count per uncertainty bin, int64 (N_UNC_BINS,), of a 1-D uncertainty array: exactly
    ``bincount(uncertainty_bin_index(u))``. Large float32 arrays use the same tables through torch (index_select and
    bincount, in chunks of :data:`_CHUNK` voxels: about twice as fast as numpy's take and bincount); the rest numpy."""
    global _TORCH_UNC_TABLES
    if u.dtype != np.float32 or u.ndim != 1 or u.size < 1 << 16 or not u.flags.c_contiguous or not u.flags.writeable:
        return np.bincount(uncertainty_bin_index(u).ravel(), minlength=N_UNC_BINS)
    import torch

    if _TORCH_UNC_TABLES is None:
        _TORCH_UNC_TABLES = (torch.from_numpy(_UNC_BASE.astype(np.int32)), torch.from_numpy(_UNC_EDGE32))
    base, edge = _TORCH_UNC_TABLES
    out = torch.zeros(N_UNC_BINS, dtype=torch.int64)
    for start in range(0, u.size, validation.CHUNK):
        c = u[start:start + validation.CHUNK]
        cell = torch.from_numpy((c.view(np.uint32) >> _CELL_SHIFT32).view(np.int32))
        b = base.index_select(0, cell)
        b_np = b.numpy()  # a view: numpy's in-place add of a bool array is the faster one
        b_np += c >= edge.index_select(0, cell).numpy()
        out += torch.bincount(b, minlength=N_UNC_BINS)
    return out.numpy()
