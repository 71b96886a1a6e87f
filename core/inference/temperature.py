"""Temperature scaling (Guo et al. 2017; paper 003): one temperature per (model, method, region).

What ``M+ts`` means: post-hoc temperature scaling of method M's output. Let p be M's mean probability of a
voxel and region (one pass for ``deterministic``, the T samples of ``mc_dropout``, the members of ``ensemble``,
the snapshots x flips of ``checkpoint_ensemble+tta``) and z = logit(p) = log(p / (1 - p)) (computed in log space
from the passes, :meth:`core.inference.uncertainty.Prediction.logit`; z is the network's logit for one pass).
Then ``M+ts`` gives p_ts = sigmoid(z / T_r), with T_r fitted for M itself.

Fit: on the calibration split, M's z (no temperature) and the ground-truth region masks y are gathered over each
patient's voxel set: ``brain`` (default; all non-zero input voxels, as temperature scaling is usually fitted) or
``roi`` (:func:`core.metrics.roi_mask`). On the demo, ROI-fitted temperatures came out far larger (2.2-3.8 for
UNet-Res) and raised the test split's ROI ECE of every region, while brain-fitted ones (1.6-1.8) lowered the WT
and the region-mean ROI ECE (see the README). For each region r the temperature minimises the mean binary NLL

    T_r = argmin_T  mean_i [ softplus(z_i / T) - y_i z_i / T ]      (nats; T in [0.05, 20])

found by a bounded scalar search on log T (scipy). The batch fits one set per (model, +ts method) and stores
it with the method's name (``temperatures.method``, :mod:`core.batch.plan`).

Why the method's own output and not the primary's deterministic temperature applied to every pass (the former
rule): averaging diverse members already softens their over-sharp outputs, so a temperature fitted on one
member over-softens the mean. In ``tests/integration/test_method_temperatures.py`` (three diverse over-sharp
members) the former rule raised the ensemble's ECE (0.043 -> 0.051) where the ensemble's own temperature lowered
it (0.027).

As T > 0, sigmoid(z / T) >= 0.5 exactly when z >= 0, i.e. when p >= 0.5: TS never changes a segmentation (of any
method), hence its Dice.
"""
from __future__ import annotations

import math

import numpy as np
from scipy.optimize import minimize_scalar

from core.metrics.overlap import ROI_RADIUS_VOX, roi_mask
from core.store.schema import MASKS


LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))


def mean_nll(z: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean binary NLL (nats) of sigmoid(z / T) against 0/1 labels.

    Args:
        z: (N,) float64 logits.
        y: (N,) float64 labels in {0, 1}.
        temperature: T > 0.

    Returns:
        mean_i [softplus(z_i / T) - y_i z_i / T]; NaN for empty arrays.
    """
    s = z / temperature
    return float(np.mean(np.logaddexp(0.0, s) - y * s))


def fit_temperature(z: np.ndarray, y: np.ndarray) -> dict:
    """Temperature of one region from its gathered logits and labels (bounded search on log T in [0.05, 20]).

    Args:
        z: the region's logits over the fitting voxels (any shape, flattened).
        y: their 0/1 labels (same size).

    Returns:
        dict of temperature, nll_before (T = 1), nll_after (nats), n_voxels, n_positive. NaN temperature and
        nll_after (and 1.0 used) when there are no voxels or one class only; nll_before is NaN without voxels.
    """
    z = np.asarray(z, np.float64).ravel()
    y = np.asarray(y, np.float64).ravel()
    out = {"n_voxels": int(z.size), "n_positive": int(y.sum())}
    if z.size == 0 or y.min() == y.max():
        return {**out, "temperature": math.nan, "nll_before": mean_nll(z, y) if z.size else math.nan,
                "nll_after": math.nan}
    res = minimize_scalar(lambda lt: mean_nll(z, y, math.exp(lt)), bounds=LOG_T_BOUNDS, method="bounded",
                          options={"xatol": 1e-6})
    t = math.exp(res.x)
    return {**out, "temperature": t, "nll_before": mean_nll(z, y), "nll_after": mean_nll(z, y, t)}


FIT_MASKS = MASKS


def gather_fit_voxels(logits: np.ndarray, truth: np.ndarray, brain: np.ndarray, radius: int | None = None,
                      mask: str = "brain"):
    """One patient's fitting voxels per region: the brain (default, the study config's ``ts_fit_mask``) or the ROI.

    Args:
        logits: (R, X, Y, Z) logits of the method the temperature is fitted for (no temperature).
        truth: (R, X, Y, Z) bool ground-truth regions.
        brain: (X, Y, Z) bool brain mask (non-zero input voxels).
        radius: ROI dilation in voxels (default :data:`core.metrics.overlap.ROI_RADIUS_VOX`).
        mask: ``brain`` or ``roi`` (ground truth or prediction z >= 0 dilated by ``radius`` voxels, within the
            brain).

    Returns:
        ([z_r], [y_r]): per region the 1-D logits and labels of the voxel set.

    Raises:
        ValueError: for a mask other than those of :data:`FIT_MASKS`.
    """

    if mask not in FIT_MASKS:
        raise ValueError(f"temperature fit mask must be one of {FIT_MASKS}, not {mask!r}")
    sel = brain
    if mask == "roi":
        sel = roi_mask(logits >= 0, truth, brain, ROI_RADIUS_VOX if radius is None else radius)
    return [logits[r][sel] for r in range(len(logits))], [truth[r][sel] for r in range(len(logits))]


def fit_region_temperatures(zs: list[list[np.ndarray]], ys: list[list[np.ndarray]]) -> list[dict]:
    """Per region: fit on the concatenation over patients.

    Args:
        zs: ``zs[p][r]``: patient p's logits of region r (:func:`gather_fit_voxels`).
        ys: ``ys[p][r]``: the labels, likewise.

    Returns:
        one :func:`fit_temperature` dict per region (empty for no patients).
    """
    n_regions = len(zs[0]) if zs else 0
    return [fit_temperature(np.concatenate([z[r] for z in zs]), np.concatenate([y[r] for y in ys]))
            for r in range(n_regions)]
