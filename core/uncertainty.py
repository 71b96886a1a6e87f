"""Inference methods -> mean region probabilities and per-voxel uncertainty maps.

Methods (names shared by the batch, the database and the app):

* ``deterministic``: one pass, network in eval mode.
* ``mc_dropout``: T passes with only the dropout layers in train mode (batch norm / instance norm stay in
  eval mode). The T samples are batched through MONAI ``sliding_window_inference`` in chunks; the chunk
  size is ``mc_batch`` or, with ``"auto"``, chosen per model and input shape by timing a one-sample chunk
  against a multi-sample chunk on the first patient (both count towards T), falling back to smaller
  chunks when the device runs out of memory.

Outputs (:class:`Prediction`), all (R, X, Y, Z) float32 with R = 3 regions (WT, TC, ET):

* ``prob``: mean sigmoid probability over the samples, p = 1/T sum_t p_t
* ``entropy``: normalised binary entropy of the mean, H(p) = -(p ln p + (1-p) ln(1-p)) / ln 2, in [0, 1]
* ``mi``: mutual information H(p) - 1/T sum_t H(p_t) in the same units (bits, [0, 1]); None for a single pass
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from .models import LoadedModel, dropout_modules, preprocess

METHODS = ("deterministic", "mc_dropout")
LN2 = math.log(2.0)


@dataclass
class Prediction:
    prob: np.ndarray
    entropy: np.ndarray
    mi: np.ndarray | None
    n_samples: int
    seconds: float
    chunk: int = 1


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Normalised binary entropy (bits) of probabilities; exactly 0 at p = 0 and p = 1."""
    return -(torch.special.xlogy(p, p) + torch.special.xlogy(1 - p, 1 - p)) / LN2


def set_mc_dropout(model: torch.nn.Module) -> int:
    """Eval mode everywhere except dropout layers (train mode). Returns the number of dropout layers."""
    model.eval()
    drops = dropout_modules(model)
    for m in drops:
        m.train()
    return len(drops)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


_CHUNK_CACHE: dict = {}


def _forward_chunk(lm: LoadedModel, x: torch.Tensor, n: int, overlap: float) -> torch.Tensor:
    """n stochastic (or deterministic) sigmoid outputs (n, R, X, Y, Z) for one (1, C, X, Y, Z) input."""
    model = lm.model
    xb = x.expand(n, *x.shape[1:])

    def predictor(t):
        return torch.sigmoid(model(t))

    return sliding_window_inference(xb, tuple(lm.card["roi_size"]), sw_batch_size=n, predictor=predictor,
                                    overlap=overlap, mode="gaussian")


def predict(lm: LoadedModel, image: np.ndarray, method: str = "mc_dropout", T: int = 10, mc_batch="auto",
            overlap: float = 0.25, device: torch.device | str | None = None, seed: int | None = 0) -> Prediction:
    """Run one method on one (C, X, Y, Z) image (channels in the model card's order)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {METHODS}")
    device = torch.device(device) if device is not None else next(lm.model.parameters()).device
    t0 = time.perf_counter()
    x = preprocess(image, lm.card).to(device)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.inference_mode():
        if method == "deterministic":
            lm.model.eval()
            p = _forward_chunk(lm, x, 1, overlap)[0].clamp_(0, 1)
            ent = binary_entropy(p)
            return Prediction(p.float().cpu().numpy(), ent.float().cpu().numpy(), None, 1,
                              time.perf_counter() - t0)
        if set_mc_dropout(lm.model) == 0:
            raise ValueError(f"model {lm.name} has no dropout layer: MC dropout would repeat one prediction")
        try:
            psum, hsum, chunk = _mc_samples(lm, x, T, mc_batch, overlap)
        finally:
            lm.model.eval()
        p = (psum / T).clamp_(0, 1)
        ent = binary_entropy(p)
        mi = (ent - hsum / T).clamp_(min=0.0)
        return Prediction(p.float().cpu().numpy(), ent.float().cpu().numpy(), mi.float().cpu().numpy(), T,
                          time.perf_counter() - t0, chunk)


def _mc_samples(lm: LoadedModel, x: torch.Tensor, T: int, mc_batch, overlap: float):
    """Sum of p_t and of H(p_t) over T samples, batched in chunks."""
    key = (id(lm.model), tuple(x.shape), str(x.device), T)
    psum = hsum = None
    done = 0

    def add(out):
        nonlocal psum, hsum, done
        out = out.clamp_(0, 1)
        s, h = out.sum(0), binary_entropy(out).sum(0)
        psum = s if psum is None else psum + s
        hsum = h if hsum is None else hsum + h
        done += out.shape[0]

    if mc_batch == "auto":
        chunk = _CHUNK_CACHE.get(key)
        if chunk is None and T > 1:
            # time a 1-sample chunk against a k-sample chunk; both are real samples of this prediction
            k = min(T - 1, 8)
            t = time.perf_counter()
            add(_forward_chunk(lm, x, 1, overlap))
            t1 = time.perf_counter() - t
            t = time.perf_counter()
            try:
                add(_forward_chunk(lm, x, k, overlap))
                tk = (time.perf_counter() - t) / k
                chunk = k if tk < t1 else 1
            except torch.OutOfMemoryError:
                chunk = 1
            _CHUNK_CACHE[key] = chunk
        chunk = chunk or 1
    else:
        chunk = max(1, int(mc_batch))
    while done < T:
        n = min(chunk, T - done)
        try:
            add(_forward_chunk(lm, x, n, overlap))
        except torch.OutOfMemoryError:
            if chunk == 1:
                raise
            chunk = max(1, chunk // 2)
            _CHUNK_CACHE[key] = chunk
    return psum, hsum, chunk
