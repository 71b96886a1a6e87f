"""Forward passes: MONAI sliding-window inference in chunks of passes, MC-dropout mode, entropy, chunk choice."""
from __future__ import annotations

import math
import time

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from core.inference.modelset import as_model_set
from core.inference.precision import autocast
from core.io.architectures import dropout_modules, network_stride, preprocess
from core.io.checkpoints import LoadedModel


LN2 = math.log(2.0)


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Normalised binary entropy (bits) of probabilities, elementwise.

    Args:
        p: probabilities in [0, 1], any shape.

    Returns:
        H(p) = -(p ln p + (1-p) ln(1-p)) / ln 2 in [0, 1], same shape; exactly 0 at p = 0 and p = 1.
    """
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)) / LN2


def set_mc_dropout(model: torch.nn.Module) -> int:
    """Eval mode everywhere except dropout layers (train mode), in place.

    Args:
        model: the network.

    Returns:
        the number of dropout layers (0: MC dropout is the deterministic pass).
    """
    model.eval()
    drops = dropout_modules(model)
    for m in drops:
        m.train()
    return len(drops)


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_CHUNK_CACHE: dict = {}


def aligned_grid(size, roi, overlap: float, stride: int) -> tuple[list[int], list[float]]:
    """A sliding-window grid whose window starts are multiples of the network's stride.

    On every axis longer than the window, the scan step is the largest multiple of ``stride`` that is at most
    roi * (1 - overlap) (at least ``stride``), and the volume is padded at its end (with zeros, the normalised
    background) so that the last window starts on that step too. Every window then sees the same feature grid at
    every depth of the network: overlapping windows compute the same features at the same place, and a fixed
    MC-dropout mask (:mod:`core.inference.mc_masks`) means the same units in both. Axes no longer than the
    window keep MONAI's single centred window.

    Args:
        size: the volume's spatial shape (voxels).
        roi: the window's spatial shape.
        overlap: the requested overlap fraction.
        stride: :func:`core.io.architectures.network_stride`.

    Returns:
        (pad at the end per axis, overlap per axis for MONAI ``sliding_window_inference``, which gives the step
        int(roi * (1 - overlap))).
    """
    pad, overlaps = [], []
    for n, r in zip(size, roi):
        if n <= r or stride <= 1:
            pad.append(0)
            overlaps.append(float(overlap))
            continue
        step = int(r * (1 - overlap)) // stride * stride
        step = min(max(step, stride), r)
        steps = -(-(n - r) // step)
        pad.append(r + steps * step - n)
        overlaps.append(1.0 - (step + 0.5) / r)  # MONAI's int(r * (1 - o)) is then exactly step
    return pad, overlaps


def _forward(lm: LoadedModel, x: torch.Tensor, views: list[tuple], overlap: float,
             precision: str = "fp32", masks=None, seeds: list[int] | None = None) -> torch.Tensor:
    """Logits (n, R, X, Y, Z) of one network on the flipped views of a (1, C, X, Y, Z) input, flipped back.

    ``precision``: the network runs under autocast to bf16 / fp16 (:mod:`core.inference.precision`); MONAI's blending
    buffers keep the input's dtype (fp32), so the returned logits are fp32 whatever the precision.
    ``masks`` (a :class:`core.inference.mc_masks.FixedMasks` entered on this network) and ``seeds`` (one sample seed
    per view): MC-dropout samples, each one network over all its windows (MONAI passes each window's batch row
    and position to the predictor, ``with_coord=True``)."""
    xb = torch.cat([torch.flip(x, v) if v else x for v in views]) if len(views) > 1 or views[0] else x
    roi = tuple(lm.card["roi_size"])
    size = tuple(xb.shape[2:])
    pad, overlaps = aligned_grid(size, roi, overlap, network_stride(lm.card))
    if any(pad):
        xb = torch.nn.functional.pad(xb, [v for p in reversed(pad) for v in (0, p)])
    if masks is None:
        predictor, coord = lm.model, False
    else:
        def predictor(win, coords):
            masks.rows = [(seeds[c[0].start], tuple(int(s.start) for s in c[2:]), roi) for c in coords]
            return lm.model(win)
        coord = True
    with autocast(x.device, precision):
        out = sliding_window_inference(xb, roi, sw_batch_size=len(views), predictor=predictor, overlap=overlaps,
                                       mode="gaussian", with_coord=coord)
    if any(pad):
        out = out[(slice(None), slice(None)) + tuple(slice(0, n) for n in size)]
    if any(views):
        out = torch.stack([torch.flip(o, [d - 1 for d in v]) if v else o for o, v in zip(out, views)])
    return out


def _run_views(lm: LoadedModel, x: torch.Tensor, views: list[tuple], mc_batch, overlap: float, stochastic: bool,
               precision: str = "fp32", masks=None, seeds: list[int] | None = None):
    """Yield (view, logits (R, X, Y, Z)) for every view, in chunks (auto-sized, halved on out-of-memory).

    ``masks`` / ``seeds`` (one per view): fixed-mask MC-dropout samples (:func:`_forward`); view i is sample i
    whatever the chunk layout."""
    key = (id(lm.model), tuple(x.shape), str(x.device), precision)
    todo = list(views)
    ids = list(range(len(views)))

    def fwd(lo, hi):
        sd = None if masks is None else [seeds[i] for i in ids[lo:hi]]
        return _forward(lm, x, todo[lo:hi], overlap, precision, masks, sd)
    if mc_batch == "auto":
        chunk = _CHUNK_CACHE.get(key)
        if chunk is None and len(todo) > 1:
            # time a 1-pass chunk against a k-pass chunk; both are real passes of this prediction
            k = min(len(todo) - 1, 8)
            t = time.perf_counter()
            out = fwd(0, 1)
            t1 = time.perf_counter() - t
            yield todo[0], out[0]
            t = time.perf_counter()
            try:
                out = fwd(1, 1 + k)
                tk = (time.perf_counter() - t) / k
                chunk = k if tk < t1 else 1
                for v, o in zip(todo[1:1 + k], out):
                    yield v, o
                todo, ids = todo[1 + k:], ids[1 + k:]
            except torch.OutOfMemoryError:
                chunk = 1
                todo, ids = todo[1:], ids[1:]
            _CHUNK_CACHE[key] = chunk
        chunk = chunk or 1
    else:
        chunk = max(1, int(mc_batch))
    while todo:
        n = min(chunk, len(todo))
        try:
            out = fwd(0, n)
        except torch.OutOfMemoryError:
            if n == 1:
                raise
            chunk = max(1, n // 2)
            _CHUNK_CACHE[key] = chunk
            continue
        for v, o in zip(todo[:n], out):
            yield v, o
        todo, ids = todo[n:], ids[n:]
    _run_views.last_chunk = chunk if views else 1


def choose_chunk(model, image: np.ndarray, n_views: int, overlap: float = 0.25, max_chunk: int | None = None,
                 device: torch.device | str | None = None) -> dict:
    """Passes per forward call for a method with ``n_views`` passes of the primary network, fixed for a run.

    Times one warm-up pass, a 1-pass chunk and a k-pass chunk (k halved on out-of-memory) of the primary in
    eval mode on ``image``: chunk = k when the k-pass chunk costs less per pass, else 1. The trial passes are
    thrown away, so every patient of a run (and every shard of it, given the same chunk) draws its MC-dropout
    masks in the same chunk layout: results do not depend on which patient came first in a process (the
    in-``predict`` ``"auto"`` trial counts its passes and so differs on the first patient).

    Args:
        model: a ModelSet or LoadedModel (its precision is used).
        image: (C, X, Y, Z) float32 on the model grid.
        n_views: passes of the primary network one call of the method makes.
        overlap: sliding-window overlap.
        max_chunk: the largest k tried (default 32 on CUDA, 8 on CPU); k = min(n_views, max_chunk).
        device: where to run (default: the model's device).

    Returns:
        ``{"chunk", "k", "s_per_pass_1", "s_per_pass_k"}`` (seconds per pass; None for both when k = 1, where
        nothing is timed).

    Raises:
        torch.OutOfMemoryError: when even a 1-pass chunk does not fit.
    """
    ms = as_model_set(model)
    device = torch.device(device) if device is not None else next(ms.model.parameters()).device
    cap = max_chunk or (32 if device.type == "cuda" else 8)
    k = max(1, min(int(n_views), cap))
    if k == 1:
        return {"chunk": 1, "k": 1, "s_per_pass_1": None, "s_per_pass_k": None}

    def timed(n):
        t = time.perf_counter()
        _forward(ms.primary, x, [()] * n, overlap, ms.precision)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - t) / n

    with torch.inference_mode():
        ms.model.eval()
        x = preprocess(image, ms.card).to(device)
        timed(1)  # warm-up: kernel selection, allocator
        t1 = timed(1)
        while True:
            try:
                tk = timed(k)
                break
            except torch.OutOfMemoryError:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if k == 1:
                    raise
                k = max(1, k // 2)
    return {"chunk": k if tk < t1 else 1, "k": k, "s_per_pass_1": t1, "s_per_pass_k": tk}


def deterministic_logits(model, image: np.ndarray, overlap: float = 0.25, cache: dict | None = None,
                         precision: str | None = None) -> np.ndarray:
    """Logits of the primary network's deterministic pass (eval mode, no temperature).

    The input of TS fitting and of the precision check.

    Args:
        model: a ModelSet or LoadedModel.
        image: (C, X, Y, Z) float32 image in the card's channel order (normalised here).
        overlap: sliding-window overlap.
        cache: per-patient pass cache shared with :func:`core.inference.uncertainty.predict` (keyed by network,
            not by precision: pass a fresh one to compare precisions).
        precision: ``fp32`` / ``bf16`` / ``fp16`` (default: the model set's, :mod:`core.inference.precision`).

    Returns:
        (R, X, Y, Z) float32 logits.
    """
    ms = as_model_set(model)
    cache = {} if cache is None else cache
    device = next(ms.model.parameters()).device
    precision = ms.precision if precision is None else precision
    with torch.inference_mode():
        x = preprocess(image, ms.card).to(device)
        ms.model.eval()
        key = (id(ms.model), ())
        if key not in cache:
            cache[key] = _forward(ms.primary, x, [()], overlap, precision)[0]
        return cache[key].float().cpu().numpy()
