"""Slice viewer helpers: load a patient's images and maps (cached), cut slices, compose RGB overlays.

Arrays: images (C, X, Y, Z) float32; maps (X, Y, Z, 3) for prob / entropy / mi / error, (X, Y, Z) for pred.
A displayed slice is transposed and flipped so that anterior / superior are up (RAS+ input).
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import streamlit as st

from core.io.cohort import CANONICAL_MODALITIES, detect_case, labels_to_regions, load_case


AXES = {"axial": 2, "coronal": 1, "sagittal": 0}
REGION_INDEX = {"WT": 0, "TC": 1, "ET": 2}


@st.cache_data(max_entries=8, show_spinner=False)
def load_patient(folder: str, mtime: float):
    """A patient's images and ground-truth regions, loaded once per folder version (cached).

    Args:
        folder: the patient's BraTS-layout folder.
        mtime: its modification time (part of the cache key only).

    Returns:
        (image (C, X, Y, Z) float32 in the canonical modality order t1, t1ce, t2, flair; regions (3, X, Y, Z)
        bool WT, TC, ET, or None without a segmentation).

    Raises:
        core.io.cohort.CaseError: when the folder is not a usable case.
    """
    case = load_case(detect_case(Path(folder)), CANONICAL_MODALITIES)
    regions = labels_to_regions(case.seg, case.label_scheme) if case.seg is not None else None
    return case.image, regions


@st.cache_data(max_entries=32, show_spinner=False)
def load_map(path: str, mtime: float) -> np.ndarray:
    """A NIfTI map file as float32 ((X, Y, Z, 3) or (X, Y, Z)), cached per path and ``mtime`` (the file's
    modification time, part of the cache key only)."""
    return np.asarray(nib.load(path).get_fdata(dtype=np.float32))


def take(vol: np.ndarray, axis: str, index: int) -> np.ndarray:
    """2-D slice of a (X, Y, Z[, ...]) volume, oriented for display (rows = up-down).

    Args:
        vol: the volume; trailing axes (e.g. the 3 regions of a map) are kept.
        axis: 'axial', 'coronal' or 'sagittal' (:data:`AXES`).
        index: the slice along that axis.

    Returns:
        (H, W[, ...]): the slice transposed and flipped so that anterior / superior are up.
    """
    sl = [slice(None)] * 3
    sl[AXES[axis]] = index
    s = vol[tuple(sl)]
    return np.flipud(np.swapaxes(s, 0, 1))


def best_slice(vol3: np.ndarray, axis: str) -> int:
    """Index along ``axis`` with the largest sum of a non-negative (X, Y, Z) volume.

    Args:
        vol3: the (X, Y, Z) volume (e.g. a 0/1 mask or an uncertainty map).
        axis: 'axial', 'coronal' or 'sagittal'.

    Returns:
        the slice index; the middle slice when the volume sums to zero everywhere.
    """
    ax = AXES[axis]
    other = tuple(a for a in range(3) if a != ax)
    sums = vol3.sum(axis=other)
    return int(np.argmax(sums)) if sums.max() > 0 else vol3.shape[ax] // 2


def window(img2d: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Intensities mapped linearly from [lo, hi] to [0, 1] and clipped (a window narrower than 1e-6 counts as
    1e-6)."""
    return np.clip((img2d - lo) / max(hi - lo, 1e-6), 0, 1)


def volume_window(vol: np.ndarray) -> tuple[float, float]:
    """One intensity window per volume: (1st, 99.5th) percentile of its non-zero voxels; (0, 1) when all are zero."""
    nz = vol[vol != 0]
    if nz.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(nz, [1, 99.5])
    return float(lo), float(hi)


def compose(gray: np.ndarray, overlay: np.ndarray | None, colour, alpha: float) -> np.ndarray:
    """RGB uint8 image: grey background with a coloured overlay.

    Args:
        gray: (H, W) background in [0, 1] (:func:`window`).
        overlay: (H, W) per-pixel weight in [0, 1] (0 = no colour; clipped), or None for the background alone.
        colour: an (r, g, b) in [0, 1], or a callable mapping overlay -> (H, W, 3) in [0, 1].
        alpha: opacity of a weight-1 pixel.

    Returns:
        (H, W, 3) uint8.
    """
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if overlay is not None:
        col = colour(overlay) if callable(colour) else np.broadcast_to(np.asarray(colour, np.float32), rgb.shape)
        a = (alpha * np.clip(overlay, 0, 1))[..., None]
        rgb = rgb * (1 - a) + col * a
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def heat(x: np.ndarray) -> np.ndarray:
    """Black-red-yellow-white colour map: (H, W) values in [0, 1] (clipped) -> (H, W, 3) float in [0, 1]."""
    x = np.clip(x, 0, 1)[..., None]
    return np.concatenate([np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)], axis=2)


def error_colours(err: np.ndarray) -> np.ndarray:
    """Error map codes (H, W) (0 right, 1 FP, 2 FN) -> (H, W, 3) float32: orange for FP, cyan for FN, else black."""
    out = np.zeros(err.shape + (3,), np.float32)
    out[err == 1] = (1.0, 0.55, 0.0)
    out[err == 2] = (0.0, 0.85, 1.0)
    return out
