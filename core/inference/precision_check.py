"""The precision choice of a run: a reduced precision is used only where its Dice matches fp32 (the Dice check)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from core.inference.forward import deterministic_logits
from core.inference.precision import DICE_TOLERANCE, auto_candidates, check_precision


@dataclass
class PrecisionChoice:
    """What ``--precision`` resolved to for one model, and the Dice checks behind it (stored in ``run_plan``)."""
    requested: str
    chosen: str
    device: str
    tolerance: float = DICE_TOLERANCE
    patient_id: str | None = None  # the check case
    reason: str = ""
    checks: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The fields as a plain dict (JSON types), as the run's plan stores it."""
        return asdict(self)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """BraTS Dice of two boolean masks (1 when both are empty)."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def dice_check(ms, image: np.ndarray, truth: np.ndarray | None, candidate: str, overlap: float = 0.25,
               reference_logits: np.ndarray | None = None) -> dict:
    """Dice change of the deterministic pass under ``candidate`` against fp32, per region.

    With ground truth, change = |Dice(candidate) - Dice(fp32)| against it; without, the candidate's
    segmentation is compared with the fp32 one: change = 1 - Dice(candidate, fp32).

    Args:
        ms: the model set.
        image: (C, X, Y, Z) on the model grid.
        truth: (R, X, Y, Z) bool on the same grid, or None.
        candidate: ``bf16`` or ``fp16``.
        overlap: sliding-window overlap.
        reference_logits: the fp32 logits (R, X, Y, Z) when already computed.

    Returns:
        ``{"candidate", "reference" ("ground truth" | "fp32 prediction"), "regions": {r: {"dice_fp32", "dice",
        "change"}}, "max_change", "flipped_voxels"}`` (voxels whose segmentation differs in any region).
    """

    z32 = reference_logits if reference_logits is not None else deterministic_logits(ms, image, overlap, precision="fp32")
    zlo = deterministic_logits(ms, image, overlap, precision=candidate)
    p32, plo = z32 >= 0, zlo >= 0
    regions = {}
    for i, r in enumerate(ms.card["regions"]):
        if truth is not None:
            d32, dlo = _dice(p32[i], truth[i]), _dice(plo[i], truth[i])
            change = abs(dlo - d32)
        else:
            d32, dlo = 1.0, _dice(plo[i], p32[i])
            change = 1.0 - dlo
        regions[r] = {"dice_fp32": d32, "dice": dlo, "change": change}
    return {"candidate": candidate, "reference": "ground truth" if truth is not None else "fp32 prediction",
            "regions": regions, "max_change": max(v["change"] for v in regions.values()),
            "flipped_voxels": int((p32 != plo).sum())}


def choose_precision(ms, image: np.ndarray | None, truth: np.ndarray | None, requested: str = "auto",
                     device: torch.device | str | None = None, tolerance: float = DICE_TOLERANCE,
                     candidates: tuple[str, ...] | None = None, patient_id: str | None = None,
                     overlap: float = 0.25) -> PrecisionChoice:
    """Resolve ``requested`` for one model set on one check case.

    ``fp32`` is taken as is; an explicit ``bf16`` / ``fp16`` is kept even when its Dice check fails (the reason
    says so); ``auto`` takes the first candidate whose Dice moves by at most ``tolerance`` in every region,
    else fp32.

    Args:
        ms: the model set.
        image: (C, X, Y, Z) check image on the model grid, or None when no case could be loaded.
        truth: (R, X, Y, Z) bool ground truth on that grid, or None.
        requested: ``auto|fp32|bf16|fp16``.
        device: the run's device (default: the model's).
        tolerance: the largest accepted Dice change.
        candidates: the low precisions ``auto`` tries (default :func:`auto_candidates`: none on CPU); giving
            them explicitly runs the check on any device (the unit tests force bf16 on CPU this way).
        patient_id: the check case's id (recorded).
        overlap: sliding-window overlap.

    Returns:
        the choice, with its reason and the Dice checks run.

    Raises:
        ValueError: for an unknown precision.
    """
    check_precision(requested)
    dev = torch.device(device) if device is not None else next(ms.model.parameters()).device
    out = PrecisionChoice(requested, "fp32", str(dev), tolerance, patient_id)
    if requested == "fp32":
        out.reason = "fp32 requested"
        return out
    if requested != "auto":
        out.chosen = requested
        out.reason = f"{requested} requested"
        if image is not None:
            out.checks.append(dice_check(ms, image, truth, requested, overlap))
            if out.checks[-1]["max_change"] > tolerance:
                out.reason += f" (kept although Dice moved by {out.checks[-1]['max_change']:.4g} > {tolerance})"
        return out
    cands = auto_candidates(dev) if candidates is None else tuple(candidates)
    if not cands:
        out.reason = f"auto on {dev.type}: fp32 (no low precision tried on CPU)"
        return out
    if image is None:
        out.reason = "auto: no check case could be loaded, fp32"
        return out

    z32 = deterministic_logits(ms, image, overlap, precision="fp32")
    for c in cands:
        chk = dice_check(ms, image, truth, c, overlap, reference_logits=z32)
        chk["accepted"] = bool(chk["max_change"] <= tolerance)
        out.checks.append(chk)
        if chk["accepted"]:
            out.chosen = c
            out.reason = f"auto: {c} moves Dice by {chk['max_change']:.4g} <= {tolerance} ({chk['reference']})"
            return out
    out.reason = "auto: every candidate moved Dice by more than " + f"{tolerance}; fp32"
    return out
