"""Lesion-wise metrics as the official BraTS evaluation computes them (the panoptica-based ``brats-evaluation``
package, glioma config): each 26-connected component of a region mask is a lesion; reference and predicted
lesions are matched one-to-one by maximum bipartite matching on their Dice (the assignment minimising the sum
of 1 - Dice, scipy's ``linear_sum_assignment``), a pair being eligible when its Dice is >= 1e-6 (any overlap).

Definitions (per region, see docs/metrics.md):

* ``lesion_tp``: matched pairs; ``lesion_fp``: predicted lesions left unmatched; ``lesion_fn``: reference
  lesions left unmatched.
* ``lesion_rq`` (recognition quality, detection F1) = TP / (TP + (FP + FN) / 2).
* ``lesion_sq_dice`` (segmentation quality) = mean Dice of the matched pairs; ``lesion_pq_dice`` (panoptic
  quality) = SQ x RQ; ``lesion_sq_hd95`` = mean over the matched pairs of their HD95 (mm), the 95th percentile
  of the pooled surface distances of both directions (MedPy's and panoptica's definition; the region-level
  ``hd95`` is MONAI's, the larger of the two directed percentiles).
* Edge cases, as the official glioma config: no lesion in either mask -> every count 0 and RQ, SQ, PQ, HD95 NaN;
  lesions but no match -> RQ = SQ = PQ = 0 and HD95 undefined (the official package returns inf; stored as
  NULL / NaN).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from core.metrics.overlap import hd95_pooled

CONNECTIVITY = 26  # 3-D neighbours that join two voxels into one lesion (26: faces, edges and corners)
MATCH_THRESHOLD = 1e-6  # a (reference, prediction) pair is eligible when its Dice is >= this (official: 1e-6)
LESION_METRICS = ("lesion_tp", "lesion_fp", "lesion_fn", "lesion_rq", "lesion_sq_dice", "lesion_pq_dice",
                  "lesion_sq_hd95")


def label_lesions(mask: np.ndarray, connectivity: int = CONNECTIVITY) -> tuple[np.ndarray, int]:
    """Connected components of a 3-D bool mask.

    Args:
        mask: (X, Y, Z) bool.
        connectivity: 6, 18 or 26.

    Returns:
        ((X, Y, Z) int32 lesion labels 1..n, 0 outside; n).
    """
    rank = {6: 1, 18: 2, 26: 3}[connectivity]
    lab, n = ndimage.label(np.asarray(mask, bool), structure=ndimage.generate_binary_structure(3, rank))
    return lab.astype(np.int32, copy=False), int(n)


def match_lesions(ref_labels: np.ndarray, n_ref: int, pred_labels: np.ndarray, n_pred: int,
                  threshold: float = MATCH_THRESHOLD) -> tuple[list[tuple[int, int, float]], np.ndarray]:
    """Maximum bipartite matching of reference and predicted lesions by Dice.

    Args:
        ref_labels, pred_labels: (X, Y, Z) int lesion labels (0 = background) of the same shape.
        n_ref, n_pred: number of lesions in each.
        threshold: minimum Dice of a matched pair.

    Returns:
        (matches [(ref label, pred label, Dice)] of the one-to-one assignment minimising the summed cost,
        1 - Dice for a pair with Dice >= threshold and 1 + 1e-6 for any other (so it maximises the summed Dice
        of eligible pairs), the (n_ref + 1, n_pred + 1) voxel-overlap matrix).
    """
    flat = ref_labels.astype(np.int64).ravel() * (n_pred + 1) + pred_labels.astype(np.int64).ravel()
    overlap = np.bincount(flat, minlength=(n_ref + 1) * (n_pred + 1)).reshape(n_ref + 1, n_pred + 1)
    if n_ref == 0 or n_pred == 0:
        return [], overlap
    size_ref, size_pred = overlap[1:].sum(1), overlap[:, 1:].sum(0)
    d = 2.0 * overlap[1:, 1:] / (size_ref[:, None] + size_pred[None, :])
    eligible = d >= threshold
    cost = np.where(eligible, 1.0 - d, 1.0 + 1e-6)  # an ineligible pair costs more than any eligible one
    rows, cols = linear_sum_assignment(cost)
    matches = [(int(r) + 1, int(c) + 1, float(d[r, c])) for r, c in zip(rows, cols) if eligible[r, c]]
    return matches, overlap


def lesion_metrics(pred: np.ndarray, truth: np.ndarray, spacing=(1.0, 1.0, 1.0), connectivity: int = CONNECTIVITY,
                   threshold: float = MATCH_THRESHOLD) -> dict[str, float]:
    """The lesion-wise metrics of one region (names :data:`LESION_METRICS`, definitions in the module docstring).

    Args:
        pred, truth: (X, Y, Z) bool masks of the region (the label map's region and the reference's).
        spacing: voxel size in mm (for HD95).
        connectivity, threshold: lesion connectivity and matching threshold (Dice).

    Returns:
        {metric: value}: counts as floats, RQ / SQ / PQ in [0, 1], HD95 in mm; NaN where undefined.
    """
    ref_lab, n_ref = label_lesions(truth, connectivity)
    pred_lab, n_pred = label_lesions(pred, connectivity)
    matches, _ = match_lesions(ref_lab, n_ref, pred_lab, n_pred, threshold)
    tp = len(matches)
    fp, fn = n_pred - tp, n_ref - tp
    nan = math.nan
    rq = tp / (tp + 0.5 * (fp + fn)) if (tp + fp + fn) else nan
    any_lesion = (tp + fp + fn) > 0
    sq = float(np.mean([m[2] for m in matches])) if matches else (0.0 if any_lesion else nan)
    if matches:
        objs_ref, objs_pred = ndimage.find_objects(ref_lab), ndimage.find_objects(pred_lab)
        hds = []
        for r, p, _ in matches:
            box = tuple(slice(max(min(a.start, b.start) - 1, 0), max(a.stop, b.stop) + 1)
                        for a, b in zip(objs_ref[r - 1], objs_pred[p - 1]))
            hds.append(hd95_pooled(pred_lab[box] == p, ref_lab[box] == r, spacing))
        sq_hd = float(np.mean(hds))
    else:
        sq_hd = nan
    pq = sq * rq if any_lesion else nan
    return {"lesion_tp": float(tp), "lesion_fp": float(fp), "lesion_fn": float(fn), "lesion_rq": rq,
            "lesion_sq_dice": sq, "lesion_pq_dice": pq, "lesion_sq_hd95": sq_hd}
