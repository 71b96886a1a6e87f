"""Metric engine: pure functions, arrays in, numbers and bin counts out. Imports nothing of the project.

Shapes and units
----------------
* ``prob``: (R, X, Y, Z) float, region positive-class probabilities in [0, 1] (R = 3: WT, TC, ET)
* ``truth``: (R, X, Y, Z) bool ground-truth region masks
* ``entropy``, ``mi``: (R, X, Y, Z) float in [0, 1] (bits: binary entropy / ln 2; MI in bits)
* ``mask``: (X, Y, Z) bool voxel set (``brain`` = any input channel non-zero; ``roi`` see :func:`roi_mask`)
* ``spacing``: voxel size in mm; volumes are reported in millilitres

Binning conventions (written in the README too)
-----------------------------------------------
* Calibration: ``n_bins`` (default 20) equal-width bins on the region probability p; bin k holds
  ``k/n <= p < (k+1)/n`` and the last bin also holds p = 1 (no extra bin for p = 1).
* Uncertainty: :data:`UNC_EDGES`, 2991 bins: bin 0 = [0, 1e-30), bins 1..2000 log-spaced on [1e-30, 0.01)
  (3.3 % wide), bins 2001..2990 linear 0.001 wide on [0.01, 1] (the last includes 1). Fine near 0 where most voxels sit, so
  AUROC from bins matches the exact value, and every U-E threshold (multiples of 0.05) is an edge. Bin k holds
  ``UNC_EDGES[k] <= u < UNC_EDGES[k + 1]`` exactly (the float64 edges; the linear edges are the correctly rounded
  decimals k/1000); it is found from the float's bit pattern (:func:`uncertainty_bin_index`), not from a log.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree

N_CAL_BINS = 20
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
NLL_EPS = float(np.finfo(np.float64).eps)  # p clipped to [eps, 1 - eps] for NLL only (as scikit-learn log_loss)
ROI_RADIUS_VOX = 3  # ROI = (ground truth | prediction) dilated by a ball of this radius, within the brain


class MetricInputError(ValueError):
    """Arrays that cannot be evaluated (shape mismatch, NaN/Inf, probabilities outside [0, 1])."""


def _as_tensor(a: np.ndarray):
    """A torch view of a writeable, C-contiguous float32/float64 array (torch sums and min/max of large arrays are
    about 1.5x numpy's on one core); None otherwise, or when torch cannot be imported."""
    if a.dtype not in (np.float32, np.float64) or not a.flags.c_contiguous or not a.flags.writeable or a.size < 1 << 20:
        return None
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of the project
        return None
    return torch.from_numpy(a)


def _all_finite(a: np.ndarray) -> bool:
    """True if ``a`` holds no NaN / Inf (bool and integer arrays always). Fast path: the float sum is finite (NaN and
    Inf propagate into it); only when it is not (a non-finite value, or an overflow of huge finite values) is every
    element checked."""
    if a.dtype.kind in "biu":
        return True
    t = _as_tensor(a)
    with np.errstate(over="ignore", invalid="ignore"):
        if math.isfinite(float(t.sum()) if t is not None else float(a.sum())):
            return True
    return bool(np.isfinite(a).all())


def _min_max(a: np.ndarray):
    """(min, max) of a non-empty array; NaN propagates into both."""
    t = _as_tensor(a)
    if t is None:
        return a.min(), a.max()
    lo, hi = t.aminmax()
    return lo.numpy()[()], hi.numpy()[()]


def check_inputs(prob: np.ndarray, truth: np.ndarray | None = None, *others: np.ndarray | None) -> None:
    """Raise :class:`MetricInputError` for NaN / Inf probabilities, probabilities outside [0, 1], an array of another
    shape than ``prob`` among ``truth`` and ``others`` (None skipped), or NaN / Inf in a non-bool one of them."""
    if prob.size:
        lo, hi = _min_max(prob)  # a NaN propagates into both, an Inf into one
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise MetricInputError(f"probabilities contain {int((~np.isfinite(prob)).sum())} NaN/Inf values")
        if lo < 0 or hi > 1:
            raise MetricInputError(f"probabilities outside [0, 1]: min {lo}, max {hi}")
    for a in (truth, *others):
        if a is None:
            continue
        if a.shape != prob.shape:
            raise MetricInputError(f"shape mismatch: {a.shape} vs probabilities {prob.shape}")
        if a.dtype != bool and not _all_finite(a):
            raise MetricInputError(f"input contains {int((~np.isfinite(a)).sum())} NaN/Inf values")


# ----------------------------------------------------------------------------------------- overlap
def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two bool masks with the BraTS empty rules: 1 when both are empty, 0 when only one is."""
    p, t = pred.astype(bool), truth.astype(bool)
    s = int(p.sum()) + int(t.sum())
    if s == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / s


def bbox_slices(mask: np.ndarray, margin: int = 0):
    """Slices of the bounding box of a bool mask grown by ``margin`` voxels (clipped); None if the mask is empty.
    (Each axis is searched inside the range already found on the previous axes.)"""
    sub = np.asarray(mask)
    found = []
    for ax in range(sub.ndim):
        nz = np.flatnonzero(sub.any(axis=tuple(a for a in range(sub.ndim) if a != ax)))
        if nz.size == 0:
            return None
        lo, hi = int(nz[0]), int(nz[-1]) + 1
        found.append((lo, hi))
        sub = sub[(slice(None),) * ax + (slice(lo, hi),)]
    return tuple(slice(max(lo - margin, 0), min(hi + margin, n)) for (lo, hi), n in zip(found, mask.shape))


def _erode_cross(mask: np.ndarray) -> np.ndarray:
    """Binary erosion of an N-D bool array by the cross (face neighbours), outside the array counted as 0: equal to
    ``scipy.ndimage.binary_erosion(mask)`` (default structure and border), by 2 N shifted ANDs."""
    m = np.asarray(mask, bool)
    out = np.zeros(m.shape, bool)
    if m.ndim == 0 or min(m.shape) < 3:
        return out  # every voxel touches the border
    inner = (slice(1, -1),) * m.ndim
    core = out[inner]
    core[...] = m[inner]
    for ax in range(m.ndim):
        for sl in (slice(None, -2), slice(2, None)):
            core &= m[inner[:ax] + (sl,) + inner[ax + 1:]]
    return out


def _dilate_ball(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of a 3-D bool array by the ball of integer offsets with dx^2 + dy^2 + dz^2 <= radius^2,
    outside the array counted as 0: equal to ``scipy.ndimage.binary_dilation(mask, structure=ball)``. The ball is
    split into z-runs: the mask dilated along z by h = 0..radius, then ORed at each (dx, dy) of the disc."""
    u = np.asarray(mask, bool)
    if radius <= 0:
        return u.copy()
    X, Y, Z = u.shape
    runs = [u]
    for h in range(1, radius + 1):  # runs[h] = OR of u shifted by -h..h along z
        d = runs[-1].copy()
        if h < Z:
            d[..., h:] |= u[..., :-h]
            d[..., :-h] |= u[..., h:]
        runs.append(d)
    out = runs[radius].copy()  # dx = dy = 0
    for dx in range(-radius, radius + 1):
        for dy in range(-radius, radius + 1):
            rem = radius * radius - dx * dx - dy * dy
            if (dx == 0 and dy == 0) or rem < 0 or abs(dx) >= X or abs(dy) >= Y:
                continue
            src = runs[math.isqrt(rem)]
            out[max(dx, 0):X + min(dx, 0), max(dy, 0):Y + min(dy, 0)] |= \
                src[max(-dx, 0):X + min(-dx, 0), max(-dy, 0):Y + min(-dy, 0)]
    return out


def _roi_box(union: np.ndarray, brain: np.ndarray, radius: int):
    """(box, roi) for a (X, Y, Z) bool union of prediction and truth: ``box`` the slices of the union's bounding box
    grown by max(radius, 0) + 1 voxels (clipped; None if the union is empty), ``roi`` the ROI inside it (the union
    dilated by the ball of ``radius`` voxels, within the brain; (0, 0, 0) bool if the union is empty)."""
    box = bbox_slices(union, max(radius, 0) + 1)
    if box is None:
        return None, np.zeros((0, 0, 0), bool)
    return box, _dilate_ball(union[box], radius) & brain[box]


def roi_mask(pred: np.ndarray, truth: np.ndarray | None, brain: np.ndarray, radius: int = ROI_RADIUS_VOX) -> np.ndarray:
    """(X,Y,Z) bool: union of prediction and ground truth (any region), dilated by a ball of ``radius`` voxels,
    intersected with the brain. ``pred``/``truth`` are (R, X, Y, Z) bool; truth may be None.

    Computed in the union's bounding box (+ radius + 1), which gives the same mask as dilating the whole volume."""
    u = pred.any(0) if pred.ndim == 4 else np.array(pred, bool)
    if truth is not None:
        u = u | (truth.any(0) if truth.ndim == 4 else truth)
    box, roi = _roi_box(u, brain, radius)
    out = np.zeros(brain.shape, bool)
    if box is not None:
        out[box] = roi
    return out


def _edges(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: mask XOR its binary erosion (scipy's default cross element, outside counted as 0)."""
    m = np.asarray(mask, bool)
    return m ^ _erode_cross(m)


_NEAR_SHELLS = (1.0, 2.0, 3.0)  # local search radii (in units of the smallest spacing) before the k-d tree


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing) -> np.ndarray:
    """(n_a,) float64 mm: Euclidean distance from each voxel of the 3-D bool mask ``a`` to the nearest voxel of ``b``
    (both non-empty, same shape), i.e. the distance transform of ~b read at a.

    Surfaces of a prediction and its ground truth are mostly within a few voxels of each other, so each a-voxel
    first looks at the grid offsets within 1, 2, 3 smallest spacings (in increasing distance; the first offset that
    hits b is the nearest b-voxel, ties being equal distances); the few a-voxels with no b-voxel that close are
    answered exactly by a k-d tree over b's voxel centres."""
    sp = np.asarray(spacing, np.float64)
    reach = int(_NEAR_SHELLS[-1])
    g = np.arange(-reach, reach + 1)
    off = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    dist = np.sqrt(((off * sp) ** 2).sum(1))
    order = np.argsort(dist, kind="stable")
    off, dist = off[order], dist[order]
    bp = np.pad(np.asarray(b, bool), reach)
    strides = np.array([bp.shape[1] * bp.shape[2], bp.shape[2], 1])
    ca = np.stack(np.unravel_index(np.flatnonzero(a), a.shape), 1)  # (n_a, 3) voxel coordinates
    ia = (ca + reach) @ strides  # flat index of each a-voxel in the padded b
    bflat = bp.ravel()
    out = np.empty(len(ca))
    todo = np.arange(len(ca))
    lo = 0
    for shell in _NEAR_SHELLS:
        hi = int(np.searchsorted(dist, shell * sp.min() * (1 + 1e-12), side="right"))
        if hi > lo and todo.size:
            hits = bflat[ia[todo, None] + (off[lo:hi] @ strides)[None, :]]
            first = hits.argmax(1)
            found = hits[np.arange(todo.size), first]
            out[todo[found]] = dist[lo:hi][first[found]]
            todo = todo[~found]
        lo = hi
    if todo.size:
        cb = np.stack(np.unravel_index(np.flatnonzero(b), b.shape), 1)
        out[todo] = cKDTree(cb * sp).query(ca[todo] * sp, k=1)[0]
    return out


def hd95(pred: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0, 1.0), percentile: float = 95.0) -> float:
    """Symmetric percentile Hausdorff distance (mm) between the surfaces of two bool masks, as MONAI's
    ``compute_hausdorff_distance(percentile=95)``: max over both directions of the percentile (linear
    interpolation) of surface-voxel to nearest-surface-voxel Euclidean distances. Both masks empty -> 0.0
    (BraTS convention; MONAI gives NaN); only one empty -> NaN (MONAI gives inf).

    Surfaces are found in the bounding box of the two masks (+1 voxel), which gives the same surface voxels as the
    full volume; the nearest-surface distances come from :func:`_surface_distances` (a local search over grid
    offsets, a k-d tree for the far voxels): the same Euclidean distances as MONAI's distance transform, without
    transforming the box.
    """
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    pa, ta = p.any(), t.any()
    if not pa and not ta:
        return 0.0
    if pa != ta:
        return math.nan
    sl = bbox_slices(p | t, 1)
    return _hd_from_edges(_edges(p[sl]), _edges(t[sl]), spacing, percentile)


def _hd_from_edges(ep: np.ndarray, et: np.ndarray, spacing, percentile: float = 95.0) -> float:
    """Percentile Hausdorff distance (mm) of two non-empty surface masks of the same shape (see :func:`hd95`)."""
    return float(max(np.percentile(_surface_distances(ep, et, spacing), percentile),
                     np.percentile(_surface_distances(et, ep, spacing), percentile)))


# ------------------------------------------------------------------------------------- calibration
def calibration_bins(prob: np.ndarray, truth: np.ndarray, n_bins: int = N_CAL_BINS):
    """Equal-width reliability bins of one region over a voxel set (1-D arrays of the masked voxels).

    Returns (n, sum_prob, sum_true): int64 counts, float64 sums of p and of the 0/1 label per bin.
    """
    p = np.asarray(prob).ravel()
    idx = calibration_bin_index(p, n_bins)
    return _calibration_bins_idx(idx, p, truth, n_bins)


def calibration_bin_index(p: np.ndarray, n_bins: int = N_CAL_BINS) -> np.ndarray:
    """Equal-width bin of each probability: floor(p * n_bins), with p = 1 in the last bin (int64)."""
    return np.minimum((np.asarray(p, np.float64) * n_bins).astype(np.int64), n_bins - 1)


def _calibration_bins_idx(idx, p, truth, n_bins):
    n = np.bincount(idx, minlength=n_bins)
    sp = np.bincount(idx, weights=p, minlength=n_bins)
    st = np.bincount(idx, weights=np.asarray(truth, dtype=np.float64).ravel(), minlength=n_bins)
    return n, sp, st


def calibration_from_bins(n, sum_prob, sum_true) -> dict:
    """ECE, ACE, MCE and the signed gap from (summed) reliability bins.

    ECE = sum_k n_k/N |acc_k - conf_k|; ACE = mean over non-empty bins of |acc_k - conf_k|;
    MCE = max over non-empty bins; gap = sum_k n_k/N (conf_k - acc_k) = mean p - mean y
    (> 0: probabilities too high for the observed frequency). NaN for an empty voxel set.
    """
    n = np.asarray(n, dtype=np.float64)
    N = n.sum()
    if N == 0:
        return {"ece": math.nan, "ace": math.nan, "mce": math.nan, "cal_gap": math.nan}
    ne = n > 0
    conf = np.asarray(sum_prob, np.float64)[ne] / n[ne]
    acc = np.asarray(sum_true, np.float64)[ne] / n[ne]
    gap = np.abs(acc - conf)
    return {
        "ece": float((n[ne] * gap).sum() / N),
        "ace": float(gap.mean()),
        "mce": float(gap.max()),
        "cal_gap": float((np.asarray(sum_prob).sum() - np.asarray(sum_true).sum()) / N),
    }


def brier(prob: np.ndarray, truth: np.ndarray) -> float:
    """Mean squared error of p against the 0/1 label over the given voxels (NaN if none)."""
    p = np.asarray(prob, np.float64).ravel()
    if p.size == 0:
        return math.nan
    return float(np.mean((p - np.asarray(truth, np.float64).ravel()) ** 2))


def nll(prob: np.ndarray, truth: np.ndarray, eps: float = NLL_EPS) -> float:
    """Mean binary negative log-likelihood (nats) with p clipped to [eps, 1 - eps] (NaN if no voxels).

    ``truth`` bool (hard labels) or float in [0, 1] (soft labels, e.g. the raters' mean):
    -mean[y ln p + (1 - y) ln(1 - p)]."""
    p = np.asarray(prob, np.float64).ravel()
    if p.size == 0:
        return math.nan
    if np.asarray(truth).dtype != bool:
        y = np.asarray(truth, np.float64).ravel()
        pc = np.clip(p, eps, 1 - eps)
        return float(-np.mean(y * np.log(pc) + (1 - y) * np.log1p(-pc)))
    y = np.asarray(truth, bool).ravel()
    q = np.clip(np.where(y, p, 1.0 - p), eps, 1 - eps)  # probability given to the true label
    return float(-np.mean(np.log(q)))


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
    NaN when either class is empty.
    """
    ne = np.asarray(n_pos, np.float64)
    nc = np.asarray(n_neg, np.float64)
    P, N = ne.sum(), nc.sum()
    if P == 0 or N == 0:
        return math.nan
    below = np.cumsum(nc) - nc
    return float((ne * (below + 0.5 * nc)).sum() / (P * N))


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


def fp_removal_benefit(n_fp, n_fn, n_tp, t: float) -> float:
    """1.0 if removing the predicted voxels with u >= t raises Dice (paper 002: FPU TP > TPU (TP + FP + FN)), else 0.0.
    NaN when nothing is predicted."""
    b = threshold_bin(t)
    tp, fp, fn = (float(np.sum(x)) for x in (n_tp, n_fp, n_fn))
    if tp + fp == 0:
        return math.nan
    fpu, tpu = float(np.sum(n_fp[b:])), float(np.sum(n_tp[b:]))
    return 1.0 if fpu * tp > tpu * (tp + fp + fn) else 0.0


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


# ------------------------------------------------------------------------------- per-patient suite
def boundary_mask(pred: np.ndarray) -> np.ndarray:
    """Predicted boundary of one region: its surface voxels (mask XOR erosion), computed in its bounding box."""
    out = np.zeros(pred.shape, bool)
    sl = bbox_slices(pred, 1)
    if sl is not None:
        out[sl] = _edges(np.asarray(pred[sl], bool))
    return out


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else math.nan


def epkl_to_unit(epkl: np.ndarray) -> np.ndarray:
    """Map EPKL (bits, >= 0, unbounded) monotonically into [0, 1): u = 1 - 2^-EPKL, so it can use the
    uncertainty bins (AUROC and every ranking are unchanged by a monotone map)."""
    return -np.expm1(-np.asarray(epkl, np.float64) * math.log(2.0))


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


def _positions_in_brain(brain: np.ndarray, brain_idx: np.ndarray, box, sub: np.ndarray) -> np.ndarray:
    """Positions (int64) in ``brain_idx`` (the sorted flat indices of the (X, Y, Z) mask ``brain``) of the voxels of
    ``sub``, a bool mask of the box ``box`` lying inside the brain, in flat order: the brain voxels before each box row
    (a binary search per row) plus a running count along z inside the box."""
    if not sub.any():
        return np.zeros(0, np.int64)
    _, Y, Z = brain.shape
    xs = np.arange(box[0].start, box[0].stop)[:, None]
    ys = np.arange(box[1].start, box[1].stop)[None, :]
    before = np.searchsorted(brain_idx, (xs * Y + ys) * Z + box[2].start)
    rank = np.cumsum(brain[box], axis=2, dtype=np.int64)
    rank += (before - 1)[..., None]
    return rank[sub]


_SMALL_P = 1.0 / 256  # below it a negative voxel's -ln(1 - p) is summed as a series (see _negative_sums)
_CHUNK = 1 << 17  # voxels per chunk in the brain-level loops: the intermediates stay in the core's cache


def _negative_sums(p: np.ndarray, n_bins: int = N_CAL_BINS):
    """Sums over every voxel of a 1-D probability array ``p`` as if every label were 0 (outside the ROI all voxels
    are true negatives). Returns (n, sum_prob, sum_sq, sum_nll): the calibration bins of :func:`calibration_bins`
    (int64 and float64, length ``n_bins``; their sum_true is 0), sum p^2 (Brier numerator) and
    sum -ln clip(1 - p, eps, 1 - eps) (NLL numerator, nats), all float64.

    Only voxels with p >= min(1/256, 0.5/n_bins) are binned and logged one by one. All smaller ones are in bin 0 and
    their -ln(1 - p) = p + p^2/2 + p^3/3 + p^4/4 + R with 0 <= R < 5e-11 p, so their sums come from sum p^k over all
    voxels (k = 1..4) minus the same sums over the large ones (agrees with the voxel-by-voxel sum to 5e-11
    relative, plus < 2.3e-16 per voxel with p < 1.2e-16 where the clip at 1 - eps applies). Runs in chunks of
    :data:`_CHUNK` voxels (float64 sums per chunk)."""
    thr = min(_SMALL_P, 0.5 / n_bins)
    n = np.zeros(n_bins, np.int64)
    sum_prob = np.zeros(n_bins)
    sum_sq = sum_nll = 0.0
    for start in range(0, p.size, _CHUNK):
        c = p[start:start + _CHUNK]
        c64 = c.astype(np.float64)
        sq = c64 * c64
        s1, s2 = float(c64.sum()), float(np.dot(c64, c64))
        series = s1 + s2 / 2 + float(np.dot(sq, c64)) / 3 + float(np.dot(sq, sq)) / 4
        big = c[c >= thr].astype(np.float64)
        n[0] += c.size - big.size
        sum_sq += s2
        if big.size:
            idx = calibration_bin_index(big, n_bins)
            n += np.bincount(idx, minlength=n_bins)
            sum_prob += np.bincount(idx, weights=big, minlength=n_bins)
            big_sq = big * big
            s1b = float(big.sum())
            s1 -= s1b
            series -= s1b + float(np.dot(big, big)) / 2 + float(np.dot(big_sq, big)) / 3 + float(np.dot(big_sq, big_sq)) / 4
            series += float(-np.log(np.clip(1.0 - big, NLL_EPS, 1 - NLL_EPS)).sum())
        sum_prob[0] += s1
        sum_nll += series
    return n, sum_prob, sum_sq, sum_nll


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
    for start in range(0, u.size, _CHUNK):
        c = u[start:start + _CHUNK]
        cell = torch.from_numpy((c.view(np.uint32) >> _CELL_SHIFT32).view(np.int32))
        b = base.index_select(0, cell)
        b_np = b.numpy()  # a view: numpy's in-place add of a bool array is the faster one
        b_np += c >= edge.index_select(0, cell).numpy()
        out += torch.bincount(b, minlength=N_UNC_BINS)
    return out.numpy()


def _mask_rows(name: str, mname: str, st: dict, rows: list, cal_rows: list, unc_rows: list) -> None:
    """Append the rows of one region and voxel set from its stats (see :func:`evaluate_patient`)."""
    rows.append((name, mname, "mean_entropy", st["mean_entropy"]))
    rows.append((name, mname, "uncertain_fraction", st["uncertain_fraction"]))
    for k in ("mean_mi", "mean_epkl"):
        if k in st:
            rows.append((name, mname, k, st[k]))
    rows += [(name, mname, k, v) for k, v in st.get("soft", {}).items()]
    if "cal" not in st:
        return
    n, sp, stt = st["cal"]
    cal = calibration_from_bins(n, sp, stt)
    for k in ("ece", "ace", "mce", "cal_gap"):
        rows.append((name, mname, k, cal[k]))
    rows.append((name, mname, "brier", st["brier"]))
    rows.append((name, mname, "nll", st["nll"]))
    cal_rows += [(name, mname, int(b), int(n[b]), float(sp[b]), float(stt[b])) for b in np.flatnonzero(n)]
    for measure, (fp, fn, tp, tn) in st["unc"].items():
        ne, nc = fp + fn, tp + tn
        rows.append((name, mname, f"auroc_{measure}", auroc_from_bins(ne, nc)))
        if measure == "entropy":
            rows.append((name, mname, "auroc_fp_tp", auroc_from_bins(fp, tp)))
            rows.append((name, mname, "auroc_fn_tn", auroc_from_bins(fn, tn)))
            ueo = ueo_curve(ne, nc)
            best = int(np.nanargmax(ueo)) if np.isfinite(ueo).any() else None
            rows.append((name, mname, "ueo_best", float(ueo[best]) if best is not None else math.nan))
            rows.append((name, mname, "ueo_best_threshold", UEO_THRESHOLDS[best] if best is not None else math.nan))
            rows.append((name, mname, "ueo_t50", float(ueo[UEO_THRESHOLDS.index(0.5)])))
            rows.append((name, mname, "bnf_t50", fp_removal_benefit(fp, fn, tp, 0.5)))
            cap, bueo = budget_curve(ne, nc)
            rows.append((name, mname, "budget_capture_auc", budget_auc(cap)))
            rows.append((name, mname, "budget_ueo_auc", budget_auc(bueo)))
            rows.append((name, mname, "capture_at_5pct", float(cap[-1])))
        nz = np.flatnonzero(ne + nc)
        unc_rows += list(zip([name] * len(nz), [mname] * len(nz), [measure] * len(nz), nz.tolist(),
                             ne[nz].tolist(), nc[nz].tolist(), fp[nz].tolist(), fn[nz].tolist(), tp[nz].tolist()))


def evaluate_patient(prob: np.ndarray, entropy: np.ndarray, mi: np.ndarray | None, truth: np.ndarray | None,
                     brain: np.ndarray, regions=("WT", "TC", "ET"), spacing=(1.0, 1.0, 1.0), threshold: float = 0.5,
                     n_bins: int = N_CAL_BINS, roi_radius: int = ROI_RADIUS_VOX, with_hd95: bool = True,
                     epkl: np.ndarray | None = None, sample_volumes: np.ndarray | None = None,
                     raters: np.ndarray | None = None) -> dict:
    """All per-patient numbers and bins of one prediction (the full suite; metric names in the README).

    Shapes: ``prob``, ``entropy``, ``mi`` (R, X, Y, Z) float (probabilities in [0, 1]; entropy and MI in bits,
    normalised to [0, 1]); ``truth`` (R, X, Y, Z) bool or None; ``brain`` (X, Y, Z) bool; ``spacing`` mm.
    Optional: ``epkl`` (R, X, Y, Z) expected pairwise KL in bits; ``sample_volumes`` (N, R) voxel counts of
    each sample's prediction (volume distribution, CRPS); ``raters`` (K, R, X, Y, Z) bool segmentations of
    K raters (soft-label calibration against their mean, Dice against each rater).

    Returns a dict of three lists of tuples:
    ``metrics`` (region, mask, metric, value); ``calibration_bins`` (region, mask, bin, n, sum_prob, sum_true);
    ``uncertainty_bins`` (region, mask, measure, bin, n_error, n_correct, n_fp, n_fn, n_tp), non-empty bins only.
    ``truth`` None (no ground truth): only uncertainty aggregates and predicted volumes are produced.

    How it stays fast on a BraTS-sized volume (the numbers are those of the voxel-by-voxel definitions):
    every predicted or true voxel lies in the bounding box of their union, so volumes, Dice, HD95, surfaces and the
    ROI are computed in that box; every brain voxel outside the ROI is a true negative of every region, so the
    brain-level bins and sums are "all brain voxels as negatives" (one gather of each array by the brain's flat
    indices: uncertainty counts, :func:`_negative_sums`) corrected by the ROI's error / predicted / true voxels,
    which are evaluated one by one exactly as the ROI itself.
    """
    check_inputs(prob, truth, entropy, mi)
    if epkl is not None:
        if epkl.shape != prob.shape or not _all_finite(epkl):
            raise MetricInputError(f"EPKL map of shape {epkl.shape} with non-finite values or a shape other than {prob.shape}")
    if raters is not None and raters.shape[1:] != prob.shape:
        raise MetricInputError(f"rater segmentations of shape {raters.shape[1:]} do not match {prob.shape}")
    if brain.shape != prob.shape[1:]:
        raise MetricInputError(f"brain mask shape {brain.shape} does not match {prob.shape[1:]}")
    brain = np.asarray(brain, bool)
    if truth is not None and truth.dtype != bool:
        truth = truth != 0  # documented as bool; 0/1 integer masks are accepted
    pred = prob >= threshold
    vox_ml = float(np.prod(spacing)) / 1000.0
    union = pred[0].copy()  # (a chain of in-place ORs: about twice as fast as any(0))
    for m in list(pred[1:]) + (list(truth) if truth is not None else []):
        np.logical_or(union, m, out=union)
    box, roi_box = _roi_box(union, brain, roi_radius)
    if box is None:  # nothing predicted, nothing true: empty crops give the empty-mask values
        box = (slice(0, 0),) * brain.ndim
    brain_idx = np.flatnonzero(brain)
    roi_pos = _positions_in_brain(brain, brain_idx, box, roi_box)  # ROI voxels among the brain voxels (same order)
    n_brain = brain_idx.size

    def gather(a, r):
        return np.ravel(a[r]).take(brain_idx)

    rows, cal_rows, unc_rows = [], [], []
    for r, name in enumerate(regions):
        # ---- everything predicted or true lies in the box; surfaces and means in the region's own tighter box
        pc = pred[r][box]
        tc = truth[r][box] if truth is not None else None
        vp = float(np.count_nonzero(pc)) * vox_ml
        rows.append((name, "brain", "volume_pred_ml", vp))
        # the bounding box of this region's prediction and truth + 1 voxel (or the volume border): the same
        # surface voxels as in the full volume
        tight = bbox_slices(pc | tc if tc is not None else pc, 1) or (slice(0, 0),) * pc.ndim
        pt_, bnd = pc[tight], _edges(pc[tight])

        def region_mean(a, where):
            return _mean(a[r][box][tight][where])
        rows.append((name, "pred", "mean_entropy", region_mean(entropy, pt_)))
        rows.append((name, "boundary", "mean_entropy", region_mean(entropy, bnd)))
        rows.append((name, "pred", "mean_confidence", region_mean(prob, pt_)))
        if mi is not None:
            rows.append((name, "pred", "mean_mi", region_mean(mi, pt_)))
            rows.append((name, "boundary", "mean_mi", region_mean(mi, bnd)))
        if epkl is not None:
            rows.append((name, "pred", "mean_epkl", region_mean(epkl, pt_)))
            rows.append((name, "boundary", "mean_epkl", region_mean(epkl, bnd)))
        if sample_volumes is not None:
            gt_ml = float(np.count_nonzero(tc)) * vox_ml if truth is not None else None
            for k, v in volume_distribution(np.asarray(sample_volumes)[:, r] * vox_ml, gt_ml).items():
                rows.append((name, "brain", k, v))
        if raters is not None:
            rd = [dice(pred[r], raters[k, r]) for k in range(len(raters))]
            rows.append((name, "brain", "rater_dice_mean", float(np.mean(rd))))
            pairs = [dice(raters[a, r], raters[b, r]) for a in range(len(raters)) for b in range(a + 1, len(raters))]
            rows.append((name, "brain", "interrater_dice", float(np.mean(pairs)) if pairs else math.nan))
        if truth is not None:
            vg = float(np.count_nonzero(tc)) * vox_ml
            rows += [(name, "brain", "volume_gt_ml", vg), (name, "brain", "volume_error_ml", vp - vg),
                     (name, "brain", "dice", dice(pt_, tc[tight]))]
            if with_hd95:
                pa, ta = vp > 0, vg > 0
                hd = (0.0 if not pa else _hd_from_edges(bnd, _edges(tc[tight]), spacing)) if pa == ta else math.nan
                rows.append((name, "brain", "hd95", hd))
        # ---- brain voxels: one gather per array; the ROI voxels are a sub-selection of them
        eb = gather(entropy, r)
        mib = gather(mi, r) if mi is not None else None
        epb = gather(epkl, r) if epkl is not None else None
        softb = raters[:, r][:, brain].mean(0) if raters is not None else None
        pb = gather(prob, r) if truth is not None or softb is not None else None
        st_brain, st_roi = {}, {}
        for st, sub in ((st_brain, None), (st_roi, roi_pos)):
            def sel(x):
                return x if sub is None else x.take(sub)
            ent = sel(eb)
            st["mean_entropy"] = _mean(ent)
            st["uncertain_fraction"] = np.count_nonzero(ent >= UNCERTAIN_T) / ent.size if ent.size else math.nan
            if mib is not None:
                st["mean_mi"] = _mean(sel(mib))
            if epb is not None:
                st["mean_epkl"] = _mean(sel(epb))
            if softb is not None:
                st["soft"] = soft_label_metrics(sel(pb), sel(softb), n_bins)
        if truth is not None:
            # ROI: every voxel evaluated one by one
            pm = pb.take(roi_pos)
            tm = truth[r][box][roi_box]
            dm = pm >= threshold
            err = dm != tm
            c_idx = calibration_bin_index(pm, n_bins)
            n, sp, stt = _calibration_bins_idx(c_idx, pm, tm, n_bins)
            st_roi.update(cal=(n, sp, stt), brier=brier(pm, tm), nll=nll(pm, tm), unc={})
            # brain = all brain voxels as negatives, corrected at the ROI's true voxels (the only positives)
            bn, bsp, b_sq, b_nll = _negative_sums(pb, n_bins)
            pt = pm[tm].astype(np.float64)
            with np.errstate(divide="ignore"):
                d_nll = float((np.log(np.clip(1.0 - pt, NLL_EPS, 1 - NLL_EPS))
                               - np.log(np.clip(pt, NLL_EPS, 1 - NLL_EPS))).sum())
            st_brain.update(cal=(bn, bsp, stt), brier=(b_sq + float((1.0 - 2.0 * pt).sum())) / n_brain if n_brain else math.nan,
                            nll=(b_nll + d_nll) / n_brain if n_brain else math.nan, unc={})
            measures = [("entropy", eb), ("mi", mib)] + ([("epkl", epkl_to_unit(epb))] if epb is not None else [])
            for measure, ub in measures:
                if ub is None:
                    continue
                fp, fn, tp, tn = _uncertainty_bins_idx(uncertainty_bin_index(ub.take(roi_pos)), err, dm)
                st_roi["unc"][measure] = (fp, fn, tp, tn)
                st_brain["unc"][measure] = (fp, fn, tp, _unc_counts(ub) - fp - fn - tp)
        _mask_rows(name, "brain", st_brain, rows, cal_rows, unc_rows)
        _mask_rows(name, "roi", st_roi, rows, cal_rows, unc_rows)
    return {"metrics": rows, "calibration_bins": cal_rows, "uncertainty_bins": unc_rows}


def patient_reliability(bins, n_bins: int = N_CAL_BINS):
    """Per-patient reliability from per-patient bins.

    ``bins``: iterable of (patient_id, bin, n, sum_prob, sum_true) rows, or a mapping / data frame with those
    five columns. Returns (acc, conf, count) arrays of shape (P, n_bins) with NaN accuracy/confidence in empty
    bins, and the patient ids in row order.
    """
    names = ("patient_id", "bin", "n", "sum_prob", "sum_true")
    if hasattr(bins, "keys") and all(k in bins for k in names):
        cols = [np.asarray(bins[k]) for k in names]
    else:
        arr = np.array(list(bins), dtype=object).reshape(-1, 5)
        cols = [arr[:, k] for k in range(5)]
    ids, row = np.unique(cols[0].astype(str), return_inverse=True)
    flat = row * n_bins + cols[1].astype(np.int64)
    size = len(ids) * n_bins
    n, sp, st = (np.bincount(flat, weights=cols[k].astype(np.float64), minlength=size).reshape(len(ids), n_bins)
                 for k in (2, 3, 4))
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n > 0, st / n, np.nan)
        conf = np.where(n > 0, sp / n, np.nan)
    return acc, conf, n, ids.tolist()


def reliability_histogram(acc: np.ndarray, n_bins: int = N_CAL_BINS) -> np.ndarray:
    """Dataset reliability histogram (paper 004): (n_bins accuracy rows x n_bins confidence columns) matrix of
    the share of patients whose accuracy in confidence bin k falls in accuracy bin j; each non-empty column
    sums to 1 (patients with an empty bin k are not counted in column k)."""
    out = np.zeros((n_bins, n_bins))
    for k in range(acc.shape[1]):
        a = acc[:, k]
        a = a[np.isfinite(a)]
        if a.size:
            j = np.minimum((a * n_bins).astype(int), n_bins - 1)
            out[:, k] = np.bincount(j, minlength=n_bins) / a.size
    return out
