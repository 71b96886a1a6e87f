"""The per-patient metric suite: every number and bin of one prediction (metric names in docs/metrics.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from core.metrics.calibration import CAL_METRICS, NLL_EPS, N_CAL_BINS, _calibration_bins_idx, _negative_sums, brier, calibration_bin_index, calibration_from_bins, nll
from core.metrics.distribution import soft_label_metrics, volume_distribution
from core.metrics.lesions import lesion_metrics
from core.metrics.overlap import NSD_TOLERANCE_MM, nest_regions, nsd_from_edges, ROI_RADIUS_VOX, _edges, _hd_from_edges, _positions_in_brain, _roi_box, bbox_slices, dice
from core.metrics.uncertainty import UEO_THRESHOLDS, UNCERTAIN_T, _unc_counts, _uncertainty_bins_idx, auroc_from_bins, budget_auc, budget_curve, epkl_to_unit, fp_removal_benefit, ueo_curve, uncertainty_bin_index
from core.metrics.validation import MetricInputError, _all_finite, _mean, check_inputs


@dataclass
class PatientEvaluation:
    """Every number and bin of one prediction (:func:`evaluate_patient`), as three row lists.

    Attributes:
        metrics: rows (region, mask, metric, value); value a float, NaN where undefined.
        calibration_bins: rows (region, mask, bin, n, sum_prob, sum_true), non-empty bins only.
        uncertainty_bins: rows (region, mask, measure, bin, n_error, n_correct, n_fp, n_fn, n_tp), non-empty
            bins only.
    """
    metrics: list
    calibration_bins: list
    uncertainty_bins: list

    METRIC_COLUMNS = ("region", "mask", "metric", "value")
    CALIBRATION_COLUMNS = ("region", "mask", "bin", "n", "sum_prob", "sum_true")
    UNCERTAINTY_COLUMNS = ("region", "mask", "measure", "bin", "n_error", "n_correct", "n_fp", "n_fn", "n_tp")

    def values(self) -> dict[tuple[str, str, str], float]:
        """{(region, mask, metric): value} of every metric row."""
        return {(r, m, k): v for r, m, k, v in self.metrics}

    def value(self, region: str, mask: str, metric: str) -> float:
        """One metric; raises KeyError when the suite did not produce it (e.g. HD95 without ground truth)."""
        return self.values()[(region, mask, metric)]


def _mask_rows(name: str, mname: str, stats: dict, rows: list, cal_rows: list, unc_rows: list) -> None:
    """Append the rows of one region and voxel set from its stats (see :func:`evaluate_patient`)."""
    rows.append((name, mname, "mean_entropy", stats["mean_entropy"]))
    rows.append((name, mname, "uncertain_fraction", stats["uncertain_fraction"]))
    for k in ("mean_mi", "mean_epkl"):
        if k in stats:
            rows.append((name, mname, k, stats[k]))
    rows += [(name, mname, k, v) for k, v in stats.get("soft", {}).items()]
    if "cal" not in stats:
        return
    n, sum_prob, sum_true = stats["cal"]
    cal = calibration_from_bins(n, sum_prob, sum_true)
    for k in CAL_METRICS:
        rows.append((name, mname, k, cal[k]))
    rows.append((name, mname, "brier", stats["brier"]))
    rows.append((name, mname, "nll", stats["nll"]))
    cal_rows += [(name, mname, int(b), int(n[b]), float(sum_prob[b]), float(sum_true[b])) for b in np.flatnonzero(n)]
    for measure, (fp, fn, tp, tn) in stats["unc"].items():
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
                     raters: np.ndarray | None = None, segmentation: np.ndarray | None = None,
                     nsd_tolerance_mm: float = NSD_TOLERANCE_MM) -> PatientEvaluation:
    """All per-patient numbers and bins of one prediction (the full suite; metric names in the README).

    Shapes: ``prob``, ``entropy``, ``mi`` (R, X, Y, Z) float (probabilities in [0, 1]; entropy and MI in bits,
    normalised to [0, 1]); ``truth`` (R, X, Y, Z) bool or None; ``brain`` (X, Y, Z) bool; ``spacing`` mm.
    Optional: ``epkl`` (R, X, Y, Z) expected pairwise KL in bits; ``sample_volumes`` (N, R) voxel counts of
    each sample's prediction (volume distribution, CRPS); ``raters`` (K, R, X, Y, Z) bool segmentations of
    K raters (soft-label calibration against their mean, Dice against each rater).

    Returns a :class:`PatientEvaluation`: ``metrics`` (region, mask, metric, value); ``calibration_bins``
    (region, mask, bin, n, sum_prob, sum_true); ``uncertainty_bins`` (region, mask, measure, bin, n_error,
    n_correct, n_fp, n_fn, n_tp), non-empty bins only.
    ``truth`` None (no ground truth): only uncertainty aggregates and predicted volumes are produced.

    One segmentation: every overlap and distance metric (volumes, Dice, HD95, NSD, Dice against raters, the
    lesion-wise metrics) is computed from ``segmentation``, the region masks of the label map the batch exports
    (R, X, Y, Z) bool; by default the nested regions of ``prob >= threshold`` (:func:`nest_regions`: ET inside
    TC inside WT, as the BraTS label map holds them). The calibration and uncertainty metrics keep the region
    probabilities and their own threshold (a voxel is predicted where p >= ``threshold``).

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
    if segmentation is None:
        segmentation = nest_regions(pred) if tuple(regions) == ("WT", "TC", "ET") else pred
    elif segmentation.shape != prob.shape:
        raise MetricInputError(f"segmentation of shape {segmentation.shape} does not match {prob.shape}")
    seg = np.asarray(segmentation, bool)
    vox_ml = float(np.prod(spacing)) / 1000.0
    union = pred[0].copy()  # (a chain of in-place ORs: about twice as fast as any(0))
    for m in list(pred[1:]) + list(seg) + (list(truth) if truth is not None else []):
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
        sc = seg[r][box]
        tc = truth[r][box] if truth is not None else None
        vp = float(np.count_nonzero(sc)) * vox_ml
        rows.append((name, "brain", "volume_pred_ml", vp))
        # the bounding box of this region's prediction, segmentation and truth + 1 voxel (or the volume border):
        # the same surface voxels as in the full volume
        tight = bbox_slices(pc | sc | tc if tc is not None else pc | sc, 1) or (slice(0, 0),) * pc.ndim
        pt_, bnd = pc[tight], _edges(pc[tight])
        seg_t = sc[tight]
        seg_edges = _edges(seg_t)

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
            rd = [dice(seg[r], raters[k, r]) for k in range(len(raters))]
            rows.append((name, "brain", "rater_dice_mean", float(np.mean(rd))))
            pairs = [dice(raters[a, r], raters[b, r]) for a in range(len(raters)) for b in range(a + 1, len(raters))]
            rows.append((name, "brain", "interrater_dice", float(np.mean(pairs)) if pairs else math.nan))
        if truth is not None:
            vg = float(np.count_nonzero(tc)) * vox_ml
            rows += [(name, "brain", "volume_gt_ml", vg), (name, "brain", "volume_error_ml", vp - vg),
                     (name, "brain", "dice", dice(seg_t, tc[tight]))]
            if with_hd95:
                pa, ta = vp > 0, vg > 0
                truth_edges = _edges(tc[tight])
                hd = (0.0 if not pa else _hd_from_edges(seg_edges, truth_edges, spacing)) if pa == ta else math.nan
                rows.append((name, "brain", "hd95", hd))
                rows.append((name, "brain", "nsd", nsd_from_edges(seg_edges, truth_edges, spacing, nsd_tolerance_mm)))
                rows += [(name, "brain", k, v) for k, v in lesion_metrics(seg_t, tc[tight], spacing).items()]
        # ---- brain voxels: one gather per array; the ROI voxels are a sub-selection of them
        eb = gather(entropy, r)
        mib = gather(mi, r) if mi is not None else None
        epb = gather(epkl, r) if epkl is not None else None
        softb = raters[:, r][:, brain].mean(0) if raters is not None else None
        pb = gather(prob, r) if truth is not None or softb is not None else None
        stats_brain, stats_roi = {}, {}
        for stats, sub in ((stats_brain, None), (stats_roi, roi_pos)):
            def sel(x):
                return x if sub is None else x.take(sub)
            ent = sel(eb)
            stats["mean_entropy"] = _mean(ent)
            stats["uncertain_fraction"] = np.count_nonzero(ent >= UNCERTAIN_T) / ent.size if ent.size else math.nan
            if mib is not None:
                stats["mean_mi"] = _mean(sel(mib))
            if epb is not None:
                stats["mean_epkl"] = _mean(sel(epb))
            if softb is not None:
                stats["soft"] = soft_label_metrics(sel(pb), sel(softb), n_bins)
        if truth is not None:
            # ROI: every voxel evaluated one by one
            prob_roi = pb.take(roi_pos)
            truth_roi = truth[r][box][roi_box]
            pred_roi = prob_roi >= threshold
            err = pred_roi != truth_roi
            c_idx = calibration_bin_index(prob_roi, n_bins)
            n, sum_prob, sum_true = _calibration_bins_idx(c_idx, prob_roi, truth_roi, n_bins)
            stats_roi.update(cal=(n, sum_prob, sum_true), brier=brier(prob_roi, truth_roi), nll=nll(prob_roi, truth_roi), unc={})
            # brain = all brain voxels as negatives, corrected at the ROI's true voxels (the only positives)
            bn, bsp, b_sq, b_nll = _negative_sums(pb, n_bins)
            pt = prob_roi[truth_roi].astype(np.float64)
            with np.errstate(divide="ignore"):
                d_nll = float((np.log(np.clip(1.0 - pt, NLL_EPS, 1 - NLL_EPS))
                               - np.log(np.clip(pt, NLL_EPS, 1 - NLL_EPS))).sum())
            stats_brain.update(cal=(bn, bsp, sum_true), brier=(b_sq + float((1.0 - 2.0 * pt).sum())) / n_brain if n_brain else math.nan,
                            nll=(b_nll + d_nll) / n_brain if n_brain else math.nan, unc={})
            measures = [("entropy", eb), ("mi", mib)] + ([("epkl", epkl_to_unit(epb))] if epb is not None else [])
            for measure, ub in measures:
                if ub is None:
                    continue
                fp, fn, tp, tn = _uncertainty_bins_idx(uncertainty_bin_index(ub.take(roi_pos)), err, pred_roi)
                stats_roi["unc"][measure] = (fp, fn, tp, tn)
                stats_brain["unc"][measure] = (fp, fn, tp, _unc_counts(ub) - fp - fn - tp)
        _mask_rows(name, "brain", stats_brain, rows, cal_rows, unc_rows)
        _mask_rows(name, "roi", stats_roi, rows, cal_rows, unc_rows)
    return PatientEvaluation(rows, cal_rows, unc_rows)
