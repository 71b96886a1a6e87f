"""From the patient's grid to the model's grid and back (reorientation to RAS + resampling to the card's spacing).

A model sees its input in RAS orientation at its card's ``spacing_mm``; every metric and every map stays on
the patient's own grid (shape and affine of the NIfTI files, compared with the original ground truth).

:func:`plan` looks at the patient's (4, 4) affine and (X, Y, Z) shape and the card; :class:`GridPlan`

* ``to_model(image)``: (C, X, Y, Z) float32 on the patient grid -> (C, X', Y', Z') float32 on the model grid:
  axes permuted / flipped to RAS (nibabel ``io_orientation``; exact, no interpolation), then, when the
  spacing differs from the card's by more than 1e-3 relative on any axis, trilinear resampling
  (``torch.nn.functional.interpolate``, ``align_corners=False``: the volume's outer voxel edges map onto
  each other, so the field of view is kept; new size = round(size x spacing / model spacing));
* ``to_patient(maps)``: (R, X', Y', Z') -> (R, X, Y, Z), the inverse: trilinear back to the RAS shape at the
  patient's spacing, then the inverse axis permutation / flips.

When the patient is already RAS at the model spacing both are the identity (the same array comes back).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from core.inference.forward import binary_entropy

RTOL = 1e-3
_RAS = nib.orientations.axcodes2ornt(("R", "A", "S"))


@dataclass(frozen=True)
class GridPlan:
    """How one patient's grid maps onto one model's grid (made by :func:`plan`; see the module doc)."""
    patient_shape: tuple  # (X, Y, Z) voxels of the patient grid
    ras_shape: tuple  # the patient grid's shape after reorientation to RAS
    model_shape: tuple  # (X', Y', Z') voxels the model sees
    ornt: np.ndarray  # nibabel orientation transform patient -> RAS
    ras_spacing: tuple  # mm per RAS axis
    model_spacing: tuple  # mm (card spacing_mm)

    @property
    def reorient(self) -> bool:
        """Whether the patient grid is not RAS (its axes are permuted / flipped)."""
        return not np.array_equal(self.ornt, _RAS)

    @property
    def resample(self) -> bool:
        """Whether the RAS shape or spacing differs from the model grid's (relative tolerance :data:`RTOL`)."""
        return self.model_shape != self.ras_shape or not np.allclose(self.ras_spacing, self.model_spacing, rtol=RTOL)

    @property
    def identity(self) -> bool:
        """Whether both grids are the same (no reorientation, no resampling)."""
        return not self.reorient and not self.resample

    @property
    def voxel_ratio(self) -> float:
        """Model voxel volume / patient voxel volume (to turn model-grid voxel counts into patient voxels)."""
        return float(np.prod(self.model_spacing) / np.prod(self.ras_spacing)) if self.resample else 1.0

    def to_model(self, image: np.ndarray) -> np.ndarray:
        """(C, X, Y, Z) patient grid -> (C, X', Y', Z') float32 model grid (RAS, card spacing).

    Returns the same array, unconverted, when the plan is the identity.
    """
        if self.identity:
            return image
        x = _apply(image, self.ornt) if self.reorient else image
        if self.resample:
            x = _interp(x, self.model_shape)
        return np.ascontiguousarray(x, dtype=np.float32)

    def to_patient(self, maps: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
        """(R, X', Y', Z') model grid -> (R, X, Y, Z) float32 patient grid, clipped to [lo, hi] (None: open).

    Returns the same array, unclipped, when the plan is the identity.
    """
        if self.identity:
            return maps
        x = _interp(maps, self.ras_shape) if self.resample else maps
        if lo is not None or hi is not None:
            x = np.clip(x, lo, hi)
        if self.reorient:
            x = _apply(x, _inverse(self.ornt))
        return np.ascontiguousarray(x, dtype=np.float32)


def _inverse(ornt: np.ndarray) -> np.ndarray:
    """The orientation transform undoing ``ornt`` (input axis i -> output axis ornt[i, 0], flipped if -1)."""
    inv = np.zeros_like(ornt)
    for i, (ax, flip) in enumerate(ornt):
        inv[int(ax)] = (i, flip)
    return inv


def _apply(x: np.ndarray, ornt: np.ndarray) -> np.ndarray:
    """Orientation transform on the 3 spatial axes of a (C, X, Y, Z) array."""
    return np.moveaxis(nib.orientations.apply_orientation(np.moveaxis(x, 0, -1), ornt), -1, 0)


def _interp(x: np.ndarray, shape: tuple) -> np.ndarray:
    """Trilinear resampling of (C, X, Y, Z) to (C, *shape) (align_corners=False: outer voxel edges kept)."""
    t = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float32)[None]
    return F.interpolate(t, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)[0].numpy()


def plan(affine: np.ndarray, shape, card: dict) -> GridPlan:
    """The grid plan of a patient for a model card.

    Args:
        affine: (4, 4) voxel-to-world affine of the patient's NIfTI files.
        shape: the patient's (X, Y, Z) shape (or (C, X, Y, Z): the last three axes are used).
        card: the model card; its ``spacing_mm`` (mm per RAS axis) is the model grid's spacing (missing: the
            patient's own spacing, no resampling).

    Returns:
        the plan; the model shape is round(size x spacing / model spacing) per axis (at least 1).
    """
    shape = tuple(int(s) for s in shape[-3:])
    ornt = nib.orientations.io_orientation(affine)
    zooms = nib.affines.voxel_sizes(affine)
    ras_shape, ras_spacing = [0, 0, 0], [0.0, 0.0, 0.0]
    for i in range(3):
        ras_shape[int(ornt[i, 0])] = shape[i]
        ras_spacing[int(ornt[i, 0])] = float(zooms[i])
    target = tuple(float(s) for s in card.get("spacing_mm") or ras_spacing)
    if np.allclose(ras_spacing, target, rtol=RTOL):
        model_shape = tuple(ras_shape)
    else:
        model_shape = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(ras_shape, ras_spacing, target))
    return GridPlan(shape, tuple(ras_shape), model_shape, ornt, tuple(ras_spacing), target)


def prediction_to_patient(pred, grid: GridPlan):
    """A :class:`core.inference.uncertainty.Prediction` on the model grid -> the same on the patient grid.

    ``prob`` and ``mi`` trilinear, clipped to [0, 1]; ``epkl`` trilinear, clipped to >= 0; ``entropy``
    recomputed from the resampled ``prob`` (so it stays H(p), 0 where p is 0 or 1) and ``mi`` capped by it;
    ``sample_volumes`` (voxel counts) rescaled to patient voxels by the voxel-volume ratio.

    Args:
        pred: the prediction, maps (R, X', Y', Z').
        grid: the patient's plan for the model.

    Returns:
        a new Prediction with maps (R, X, Y, Z) float32 (``pred`` itself when the plan is the identity).
    """
    if grid.identity:
        return pred

    prob = grid.to_patient(pred.prob, 0.0, 1.0)
    ent = binary_entropy(torch.from_numpy(prob)).clamp_(0, 1).numpy() if grid.resample else grid.to_patient(pred.entropy)
    mi = None if pred.mi is None else np.minimum(grid.to_patient(pred.mi, 0.0, 1.0), ent)
    epkl = None if pred.epkl is None else grid.to_patient(pred.epkl, 0.0, None)
    vols = None if pred.sample_volumes is None else np.asarray(pred.sample_volumes, np.float64) * grid.voxel_ratio
    return replace(pred, prob=prob, entropy=ent, mi=mi, epkl=epkl, sample_volumes=vols)
