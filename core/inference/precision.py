"""Forward precision: names, autocast contexts and the candidates per device."""
from __future__ import annotations

import contextlib

import torch


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


DICE_TOLERANCE = 0.001


def check_precision(precision: str) -> str:
    """``precision`` itself when it is one of :data:`PRECISIONS`; raises ValueError otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device | str, precision: str):
    """Context manager: ``torch.autocast`` to the precision's dtype on ``device``; a no-op for fp32.

    Args:
        device: the device the forward pass runs on.
        precision: ``bf16`` / ``fp16``; ``fp32``, ``auto`` and None give a no-op.

    Raises:
        ValueError: for an unknown precision.
    """
    if precision in (None, "fp32", "auto"):
        return contextlib.nullcontext()
    dev = torch.device(device)
    return torch.autocast(device_type=dev.type, dtype=DTYPES[check_precision(precision)])


def auto_candidates(device: torch.device | str) -> tuple[str, ...]:
    """The low precisions ``auto`` tries on ``device``, best first.

    Returns:
        ``()`` on CPU (``auto`` stays fp32); on CUDA ``("bf16", "fp16")`` where bf16 is supported, else
        ``("fp16",)``.
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return ()
    return ("bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp16",)
