"""Mixed precision per model: autocast to bf16 / fp16 only where it does not move the segmentation.

``precision`` is one of ``auto``, ``fp32``, ``bf16``, ``fp16`` (``--precision``). The network's forward
pass runs under ``torch.autocast(device_type, dtype)`` (convolutions and matrix products in the low
precision, everything else in fp32); MONAI's sliding-window blending buffers stay fp32 (they take the
input's dtype), and every sum over passes (:mod:`core.uncertainty`) is done in fp32 on ``z.float()``.

``auto``: on CUDA, try bf16 (when the GPU supports it), then fp16, on one check case (the first
calibration patient with ground truth, else the first patient); keep the first candidate whose
deterministic Dice moves by at most ``tolerance`` (0.001) in every region against the fp32 pass, else
fp32. On CPU ``auto`` means fp32: CPU autocast to bf16 is functional but usually slower than fp32 on
CPUs without AMX / AVX512-BF16 (measured in ``bench/README.md``), and fp16 conv kernels on CPU are slower
still. An explicit ``bf16`` / ``fp16`` is used as asked; its check is still computed and recorded.

Dice change per region r: with ground truth G, |Dice(P_low, G) - Dice(P_fp32, G)|; without ground truth,
1 - Dice(P_low, P_fp32) (a stricter proxy: it counts every voxel that flips). P = sigmoid(z) >= 0.5, i.e.
z >= 0 on the deterministic logits z (R, X, Y, Z).
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DICE_TOLERANCE = 0.001


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device | str, precision: str):
    """Context manager: ``torch.autocast`` to the precision's dtype on ``device``; a no-op for fp32."""
    if precision in (None, "fp32", "auto"):
        return contextlib.nullcontext()
    dev = torch.device(device)
    return torch.autocast(device_type=dev.type, dtype=DTYPES[check_precision(precision)])


def auto_candidates(device: torch.device | str) -> tuple[str, ...]:
    """The low precisions ``auto`` tries on ``device``, best first: none on CPU (see the module doc)."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return ()
    return ("bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp16",)


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
        return asdict(self)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    """BraTS Dice of two boolean masks (1 when both are empty)."""
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def dice_check(ms, image: np.ndarray, truth: np.ndarray | None, candidate: str, overlap: float = 0.25,
               reference_logits: np.ndarray | None = None) -> dict:
    """Dice change of the deterministic pass under ``candidate`` against fp32, per region.

    ``image``: (C, X, Y, Z) on the model grid; ``truth``: (R, X, Y, Z) bool on the same grid or None;
    ``reference_logits``: the fp32 logits (R, X, Y, Z) when already computed. Returns ``{"candidate",
    "reference" ("ground truth" | "fp32 prediction"), "regions": {r: {"dice_fp32", "dice", "change"}},
    "max_change", "flipped_voxels"}``.
    """
    from .uncertainty import deterministic_logits

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
    """Resolve ``requested`` for one model set on one check case (see the module doc).

    ``candidates``: the low precisions ``auto`` tries (default :func:`auto_candidates`: none on CPU); giving
    them explicitly runs the check on any device (the unit tests force bf16 on CPU this way).
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
    from .uncertainty import deterministic_logits

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
