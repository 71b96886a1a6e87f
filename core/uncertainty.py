"""Inference methods -> mean region probabilities and per-voxel uncertainty maps.

A method name is a base, optionally followed by modifiers, e.g. ``checkpoint_ensemble+tta+ts``:

Bases (names shared by the batch, the database and the app):

* ``deterministic``: one pass of the primary network, eval mode.
* ``mc_dropout``: T passes with only the dropout layers in train mode (norm layers stay in eval mode).
* ``tta``: test-time augmentation: the 8 combinations of flips along the three spatial axes; each output is
  flipped back before averaging (same as ``deterministic+tta``).
* ``ensemble``: deep ensemble, the primary plus its independently trained members (:mod:`core.modelset`).
* ``checkpoint_ensemble``: the snapshots of the primary's training run plus its final weights.
* ``auxiliary``: the primary's deterministic segmentation with the voxel error probability q of an
  auxiliary error network (:mod:`core.auxiliary`, paper 002) turned into a confidence.

Modifiers: ``+tta`` runs every pass of the base on the 8 flips (``mc_dropout+tta``: sample t uses flip
t mod 8); ``+ts`` divides every pass's logits by the model's fitted temperature per region
(:mod:`core.temperature`) before the sigmoid. ``auxiliary`` takes no modifier. Canonical order: base,
``+tta``, ``+ts``.

Every pass i gives logits z_i and p_i = sigmoid(z_i) (R, X, Y, Z); with N passes:

* ``prob``: p = 1/N sum_i p_i
* ``entropy``: normalised binary entropy of the mean, H(p) = -(p ln p + (1-p) ln(1-p)) / ln 2, in [0, 1]
* ``mi``: mutual information H(p) - 1/N sum_i H(p_i), bits, in [0, 1]; None when N = 1
* ``epkl``: expected pairwise KL divergence 1/(N(N-1)) sum_{i != j} KL(p_i || p_j) in bits (>= 0, not
  bounded by 1); for Bernoulli outputs this equals the sample covariance of p_i and z_i (denominator
  N - 1) / ln 2, which is how it is computed, streaming; None when N = 1
* ``sample_volumes``: (N, R) voxel counts of p_i >= 0.5 (the predicted-volume distribution)

Passes of one network are batched through MONAI ``sliding_window_inference`` in chunks; the chunk size is
``mc_batch`` or, with ``"auto"``, chosen per network and input shape by timing a one-pass chunk against a
multi-pass chunk on the first patient (both count as real passes), halving on out-of-memory. Deterministic
passes are cached per patient (``cache``), so e.g. ``deterministic``, ``deterministic+ts``, ``tta`` and
``ensemble`` share the primary's identity pass.
"""
from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from .modelset import ModelSet, as_model_set
from .models import LoadedModel, dropout_modules, preprocess
from .precision import autocast

BASES = ("deterministic", "mc_dropout", "tta", "ensemble", "checkpoint_ensemble", "auxiliary")
MODIFIERS = ("tta", "ts")
# the methods the demo and `python -m core run` use by default
METHODS = ("deterministic", "mc_dropout")
DEMO_METHODS = ("deterministic", "deterministic+ts", "mc_dropout", "tta", "ensemble", "checkpoint_ensemble",
                "checkpoint_ensemble+tta+ts", "auxiliary")
FLIPS = tuple(tuple(d for d, on in zip((2, 3, 4), bits) if on) for bits in itertools.product((0, 1), repeat=3))
LN2 = math.log(2.0)
P_BELOW_HALF = float(np.nextafter(np.float32(0.5), np.float32(0)))  # largest float32 below 0.5
AUX_Q_MAX = 1.0 - 1e-6  # q capped so that a background voxel's confidence stays below 0.5


@dataclass(frozen=True)
class MethodSpec:
    base: str
    tta: bool = False
    ts: bool = False

    @property
    def name(self) -> str:
        return self.base + ("+tta" if self.tta and self.base != "tta" else "") + ("+ts" if self.ts else "")


def parse_method(name: str) -> MethodSpec:
    """``"checkpoint_ensemble+tta+ts"`` -> MethodSpec; raises ValueError naming what is wrong."""
    parts = str(name).strip().split("+")
    base, mods = parts[0], parts[1:]
    if base not in BASES:
        raise ValueError(f"unknown method {name!r}: base must be one of {BASES}")
    bad = [m for m in mods if m not in MODIFIERS]
    if bad or len(set(mods)) != len(mods):
        raise ValueError(f"unknown or repeated modifier in {name!r}: modifiers are +tta and +ts")
    if base == "auxiliary" and mods:
        raise ValueError(f"{name!r}: the auxiliary method takes no modifier")
    tta = base == "tta" or "tta" in mods
    return MethodSpec("tta" if base == "deterministic" and tta else base, tta=tta, ts="ts" in mods)


def canonical_method(name: str) -> str:
    return parse_method(name).name


def unavailable_reason(method: str, ms: ModelSet) -> str | None:
    """Why ``method`` cannot run on this model set (None when it can). Temperatures are checked at run time."""
    spec = parse_method(method)
    if spec.base == "mc_dropout" and not dropout_modules(ms.primary.model):
        return f"{ms.name} has no dropout layer"
    if spec.base == "ensemble" and len(ms.ensemble) < 2:
        return f"{ms.name} has {1 + len(ms.ensemble)} ensemble member(s); a deep ensemble needs at least 3"
    if spec.base == "checkpoint_ensemble" and not ms.snapshots:
        return f"{ms.name} has no training snapshots"
    if spec.base == "auxiliary" and ms.auxiliary is None:
        return f"{ms.name} has no auxiliary error network"
    return None


@dataclass
class Prediction:
    prob: np.ndarray
    entropy: np.ndarray
    mi: np.ndarray | None
    n_samples: int
    seconds: float
    chunk: int = 1
    epkl: np.ndarray | None = None
    sample_volumes: np.ndarray | None = None  # (N, R) voxel counts of p_i >= 0.5


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


def _forward(lm: LoadedModel, x: torch.Tensor, views: list[tuple], overlap: float,
             precision: str = "fp32") -> torch.Tensor:
    """Logits (n, R, X, Y, Z) of one network on the flipped views of a (1, C, X, Y, Z) input, flipped back.

    ``precision``: the network runs under autocast to bf16 / fp16 (:mod:`core.precision`); MONAI's blending
    buffers keep the input's dtype (fp32), so the returned logits are fp32 whatever the precision."""
    xb = torch.cat([torch.flip(x, v) if v else x for v in views]) if len(views) > 1 or views[0] else x
    with autocast(x.device, precision):
        out = sliding_window_inference(xb, tuple(lm.card["roi_size"]), sw_batch_size=len(views),
                                       predictor=lm.model, overlap=overlap, mode="gaussian")
    if any(views):
        out = torch.stack([torch.flip(o, [d - 1 for d in v]) if v else o for o, v in zip(out, views)])
    return out


def _run_views(lm: LoadedModel, x: torch.Tensor, views: list[tuple], mc_batch, overlap: float, stochastic: bool,
               precision: str = "fp32"):
    """Yield (view, logits (R, X, Y, Z)) for every view, in chunks (auto-sized, halved on out-of-memory)."""
    key = (id(lm.model), tuple(x.shape), str(x.device), precision)
    todo = list(views)
    if mc_batch == "auto":
        chunk = _CHUNK_CACHE.get(key)
        if chunk is None and len(todo) > 1:
            # time a 1-pass chunk against a k-pass chunk; both are real passes of this prediction
            k = min(len(todo) - 1, 8)
            t = time.perf_counter()
            out = _forward(lm, x, todo[:1], overlap, precision)
            t1 = time.perf_counter() - t
            yield todo[0], out[0]
            t = time.perf_counter()
            try:
                out = _forward(lm, x, todo[1:1 + k], overlap, precision)
                tk = (time.perf_counter() - t) / k
                chunk = k if tk < t1 else 1
                for v, o in zip(todo[1:1 + k], out):
                    yield v, o
                todo = todo[1 + k:]
            except torch.OutOfMemoryError:
                chunk = 1
                todo = todo[1:]
            _CHUNK_CACHE[key] = chunk
        chunk = chunk or 1
    else:
        chunk = max(1, int(mc_batch))
    while todo:
        n = min(chunk, len(todo))
        try:
            out = _forward(lm, x, todo[:n], overlap, precision)
        except torch.OutOfMemoryError:
            if n == 1:
                raise
            chunk = max(1, n // 2)
            _CHUNK_CACHE[key] = chunk
            continue
        for v, o in zip(todo[:n], out):
            yield v, o
        todo = todo[n:]
    _run_views.last_chunk = chunk if views else 1


def choose_chunk(model, image: np.ndarray, n_views: int, overlap: float = 0.25, max_chunk: int | None = None,
                 device: torch.device | str | None = None) -> dict:
    """Passes per forward call for a method with ``n_views`` passes of the primary network, fixed for a run.

    Times one warm-up pass, a 1-pass chunk and a k-pass chunk (k = min(n_views, max_chunk); max_chunk 32 on
    CUDA, 8 on CPU; k halved on out-of-memory) of the primary in eval mode on ``image`` (C, X, Y, Z, the
    model grid) and returns ``{"chunk", "k", "s_per_pass_1", "s_per_pass_k"}`` (seconds): chunk = k when the
    k-pass chunk costs less per pass, else 1. The trial passes are thrown away, so every patient of a run
    (and every shard of it, given the same chunk) draws its MC-dropout masks in the same chunk layout:
    results do not depend on which patient came first in a process (the in-``predict`` ``"auto"`` trial
    counts its passes and so differs on the first patient)."""
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


class _Accumulator:
    """Streaming sums over passes: mean p, mean H(p_i), Welford co-moment of (p_i, z_i), volumes."""

    def __init__(self):
        self.n = 0
        self.psum = self.hsum = self.pmean = self.zmean = self.comoment = None
        self.volumes = []

    def add(self, z: torch.Tensor) -> None:
        z = z.float()
        p = torch.sigmoid(z)
        h = binary_entropy(p)
        self.n += 1
        self.volumes.append((p >= 0.5).flatten(1).sum(1).cpu().numpy())
        if self.psum is None:
            self.psum, self.hsum, self.pmean, self.zmean = p.clone(), h, p.clone(), z.clone()
            self.z_first = z
            self.comoment = torch.zeros_like(p)
            return
        self.psum += p
        self.hsum += h
        dp = p - self.pmean
        self.pmean += dp / self.n
        self.zmean += (z - self.zmean) / self.n
        self.comoment += dp * (z - self.zmean)

    def result(self) -> tuple:
        p = (self.psum / self.n).clamp_(0, 1)
        if self.n == 1:
            # float32 rounds sigmoid(z) to exactly 0.5 for -6e-8 < z < 0; keep such voxels below 0.5 so the
            # segmentation is exactly z >= 0 whatever the temperature (TS never moves a deterministic voxel)
            p = torch.where(self.z_first < 0, torch.clamp(p, max=P_BELOW_HALF), p)
        ent = binary_entropy(p)
        if self.n == 1:
            return p, ent, None, None
        mi = (ent - self.hsum / self.n).clamp_(min=0.0)
        epkl = (self.comoment / (self.n - 1) / LN2).clamp_(min=0.0)
        return p, ent, mi, epkl


def _members(spec: MethodSpec, ms: ModelSet) -> list[LoadedModel]:
    if spec.base == "ensemble":
        return [ms.primary] + ms.ensemble
    if spec.base == "checkpoint_ensemble":
        return ms.snapshots + [ms.primary]
    return [ms.primary]


def predict(model, image: np.ndarray, method: str = "mc_dropout", T: int = 10, mc_batch="auto",
            overlap: float = 0.25, device: torch.device | str | None = None, seed: int | None = 0,
            cache: dict | None = None) -> Prediction:
    """Run one method on one (C, X, Y, Z) image (channels in the model card's order).

    ``model``: a :class:`~core.modelset.ModelSet` or a bare :class:`~core.models.LoadedModel`.
    ``cache``: a dict kept for one patient to share deterministic passes between methods.
    """
    ms = as_model_set(model)
    spec = parse_method(method)
    reason = unavailable_reason(spec.name, ms)
    if reason:
        raise ValueError(f"method {spec.name} unavailable: {reason}")
    if spec.ts and ms.temperature is None:
        raise ValueError(f"method {spec.name} needs the temperatures of {ms.name} (fitted on the calibration split)")
    device = torch.device(device) if device is not None else next(ms.model.parameters()).device
    t0 = time.perf_counter()
    cache = {} if cache is None else cache
    xkey = ("x", id(image))
    if xkey not in cache:
        cache[xkey] = preprocess(image, ms.card).to(device)
    x = cache[xkey]
    temp = None
    if spec.ts:
        temp = torch.as_tensor(np.asarray(ms.temperature, np.float32), device=device).view(-1, 1, 1, 1)
    acc = _Accumulator()
    chunk = 1
    with torch.inference_mode():
        if spec.base == "auxiliary":
            return _predict_auxiliary(ms, x, overlap, cache, t0)
        if spec.base == "mc_dropout":
            if seed is not None:
                torch.manual_seed(seed)
            views = [FLIPS[t % len(FLIPS)] if spec.tta else () for t in range(T)]
            set_mc_dropout(ms.model)
            try:
                for _, z in _run_views(ms.primary, x, views, mc_batch, overlap, stochastic=True,
                                       precision=ms.precision):
                    acc.add(z / temp if temp is not None else z)
            finally:
                ms.model.eval()
            chunk = getattr(_run_views, "last_chunk", 1)
        else:
            views = list(FLIPS) if spec.tta else [()]
            for lm in _members(spec, ms):
                lm.model.eval()
                missing = [v for v in views if (id(lm.model), v) not in cache]
                if missing:
                    for v, z in _run_views(lm, x, missing, mc_batch, overlap, stochastic=False,
                                           precision=ms.precision):
                        cache[(id(lm.model), v)] = z
                    chunk = getattr(_run_views, "last_chunk", 1)
                for v in views:
                    z = cache[(id(lm.model), v)]
                    acc.add(z / temp if temp is not None else z)
    p, ent, mi, epkl = acc.result()
    np_ = (lambda t: None if t is None else t.float().cpu().numpy())
    return Prediction(np_(p), np_(ent), np_(mi), acc.n, time.perf_counter() - t0, chunk, np_(epkl),
                      np.stack(acc.volumes))


def deterministic_logits(model, image: np.ndarray, overlap: float = 0.25, cache: dict | None = None,
                         precision: str | None = None) -> np.ndarray:
    """(R, X, Y, Z) float32 logits of the primary network (eval mode, no temperature): the input of TS fitting
    and of the precision check. ``precision``: default the model set's (:mod:`core.precision`)."""
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


def _predict_auxiliary(ms: ModelSet, x: torch.Tensor, overlap: float, cache: dict, t0: float) -> Prediction:
    """Paper 002: confidence = y (1 - q/2) + (1 - y) q/2 from the primary's prediction y and the error probability q."""
    key = (id(ms.model), ())
    if key not in cache:
        ms.model.eval()
        cache[key] = _forward(ms.primary, x, [()], overlap, ms.precision)[0]
    p_seg = torch.sigmoid(cache[key].float())
    y = p_seg >= 0.5
    aux = ms.auxiliary
    aux.model.eval()
    inp = torch.cat([x, p_seg.unsqueeze(0)], dim=1)
    with autocast(x.device, ms.precision):
        q = sliding_window_inference(inp, tuple(aux.card["roi_size"]), sw_batch_size=1, predictor=aux.model,
                                     overlap=overlap, mode="gaussian")
    q = torch.sigmoid(q[0].float()).clamp_(0, AUX_Q_MAX)
    prob = torch.where(y, 1 - 0.5 * q, 0.5 * q)
    ent = binary_entropy(prob)
    vols = y.flatten(1).sum(1).cpu().numpy()[None]
    return Prediction(prob.cpu().numpy(), ent.cpu().numpy(), None, 1, time.perf_counter() - t0, 1, None, vols)
