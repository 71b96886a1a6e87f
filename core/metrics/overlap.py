"""Overlap and distance metrics of binary masks: Dice, HD95, bounding boxes, surfaces, the ROI voxel set.

Masks are (X, Y, Z) bool arrays; ``spacing`` is the voxel size in mm; distances are in mm.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.spatial import cKDTree


ROI_RADIUS_VOX = 3  # ROI = (ground truth | prediction) dilated by a ball of this radius, within the brain


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


def hd95_pooled(pred: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> float:
    """95th percentile (linear interpolation) of the surface distances of BOTH directions pooled (mm), the HD95
    of MedPy and panoptica (used for the lesion-wise HD95 of the official BraTS evaluation).

    Args:
        pred, truth: (X, Y, Z) bool masks, both non-empty (else NaN).
        spacing: voxel size in mm.

    Returns:
        float mm; NaN when either mask is empty.
    """
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if not p.any() or not t.any():
        return math.nan
    sl = bbox_slices(p | t, 1)
    ep, et = _edges(p[sl]), _edges(t[sl])
    return float(np.percentile(np.concatenate([_surface_distances(ep, et, spacing),
                                               _surface_distances(et, ep, spacing)]), 95))


def _hd_from_edges(ep: np.ndarray, et: np.ndarray, spacing, percentile: float = 95.0) -> float:
    """Percentile Hausdorff distance (mm) of two non-empty surface masks of the same shape (see :func:`hd95`)."""
    return float(max(np.percentile(_surface_distances(ep, et, spacing), percentile),
                     np.percentile(_surface_distances(et, ep, spacing), percentile)))


NSD_TOLERANCE_MM = 1.0  # default tolerance of the normalised surface Dice (the study config's ``nsd_tolerance_mm``)


def nest_regions(pred: np.ndarray) -> np.ndarray:
    """The BraTS regions of the label map built from per-region masks: ET inside TC inside WT.

    Args:
        pred: (3, X, Y, Z) bool masks of WT, TC, ET (e.g. region probabilities >= 0.5), not necessarily nested.

    Returns:
        (3, X, Y, Z) bool: ET' = ET, TC' = TC | ET, WT' = WT | TC | ET, exactly the regions of
        ``regions_to_labels(pred)`` read back with ``labels_to_regions`` (:mod:`core.io.cohort`), whatever the
        label set.
    """
    p = np.asarray(pred, bool)
    out = p.copy()
    np.logical_or(out[1], out[2], out=out[1])
    np.logical_or(out[0], out[1], out=out[0])
    return out


def nsd(pred: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0, 1.0), tolerance_mm: float = NSD_TOLERANCE_MM) -> float:
    """Normalised surface Dice of two bool masks at a tolerance (Nikolov et al. 2021; MONAI ``compute_surface_dice``).

    Args:
        pred, truth: (X, Y, Z) bool masks.
        spacing: voxel size in mm.
        tolerance_mm: a surface voxel counts when the other surface is within this distance (mm).

    Returns:
        (|S_p within tol of S_t| + |S_t within tol of S_p|) / (|S_p| + |S_t|) in [0, 1], surfaces S being the mask
        voxels whose cross-shaped neighbourhood leaves the mask (as :func:`hd95`); 1.0 when both masks are empty
        (the BraTS empty rule; MONAI gives NaN), 0.0 when only one is.
    """
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    pa, ta = p.any(), t.any()
    if not pa and not ta:
        return 1.0
    if pa != ta:
        return 0.0
    sl = bbox_slices(p | t, 1)
    return nsd_from_edges(_edges(p[sl]), _edges(t[sl]), spacing, tolerance_mm)


def nsd_from_edges(ep: np.ndarray, et: np.ndarray, spacing, tolerance_mm: float) -> float:
    """:func:`nsd` of two surface masks of the same shape (either may be empty: the empty rules of :func:`nsd`)."""
    pa, ta = bool(ep.any()), bool(et.any())
    if not pa and not ta:
        return 1.0
    if pa != ta:
        return 0.0
    d_pt = _surface_distances(ep, et, spacing)
    d_tp = _surface_distances(et, ep, spacing)
    return float((np.count_nonzero(d_pt <= tolerance_mm) + np.count_nonzero(d_tp <= tolerance_mm))
                 / (d_pt.size + d_tp.size))


# ------------------------------------------------------------------------------- per-patient suite
def boundary_mask(pred: np.ndarray) -> np.ndarray:
    """Predicted boundary of one region: its surface voxels (mask XOR erosion), computed in its bounding box."""
    out = np.zeros(pred.shape, bool)
    sl = bbox_slices(pred, 1)
    if sl is not None:
        out[sl] = _edges(np.asarray(pred[sl], bool))
    return out


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
