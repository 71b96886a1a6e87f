"""Input validation of the metric engine: shapes, finiteness, probability range.

Arrays: ``prob`` (R, X, Y, Z) float in [0, 1]; ``truth`` (R, X, Y, Z) bool; uncertainty maps (R, X, Y, Z) float.
"""
from __future__ import annotations

import math

import numpy as np

CHUNK = 1 << 17  # voxels per chunk in the brain-level loops: the intermediates stay in the core's cache


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


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else math.nan
