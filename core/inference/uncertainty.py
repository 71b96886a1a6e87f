"""Inference methods -> mean region probabilities and per-voxel uncertainty maps.

A method name is a base, optionally followed by modifiers, e.g. ``checkpoint_ensemble+tta+ts``:

Bases (names shared by the batch, the database and the app):

* ``deterministic``: one pass of the primary network, eval mode.
* ``mc_dropout``: T passes with dropout active and norm layers in eval mode; each pass is one network: its
  dropout masks are fixed for every sliding window and keyed by (seed, sample, layer, position), so they do not
  depend on the chunk layout (:mod:`core.inference.mc_masks`).
* ``tta``: test-time augmentation: the 8 combinations of flips along the three spatial axes; each output is
  flipped back before averaging (same as ``deterministic+tta``).
* ``ensemble``: deep ensemble, the primary plus its independently trained members (:mod:`core.inference.modelset`).
* ``checkpoint_ensemble``: the snapshots of the primary's training run plus its final weights.
* ``auxiliary``: the primary's deterministic segmentation with the voxel error probability q of an
  auxiliary error network (:mod:`core.training.auxiliary`, paper 002) turned into a confidence.

Modifiers: ``+tta`` runs every pass of the base on the 8 flips (``mc_dropout+tta``: sample t uses flip
t mod 8); ``+ts`` is post-hoc temperature scaling of the base method's output with the temperature fitted
for that method (:mod:`core.inference.temperature`): p_ts = sigmoid(logit(p) / T_r) with p the base's mean
probability, so ``ensemble+ts`` scales the ensemble's mean, not its members; for one pass this is sigmoid(z / T_r).
``auxiliary`` takes no modifier. Canonical order: base, ``+tta``, ``+ts``.

Every pass i gives logits z_i and p_i = sigmoid(z_i) (R, X, Y, Z); with N passes:

* ``prob``: p = 1/N sum_i p_i
* ``entropy``: normalised binary entropy of the mean, H(p) = -(p ln p + (1-p) ln(1-p)) / ln 2, in [0, 1]
* ``mi``: mutual information H(p) - 1/N sum_i H(p_i), bits, in [0, 1]; None when N = 1
* ``epkl``: expected pairwise KL divergence 1/(N(N-1)) sum_{i != j} KL(p_i || p_j) in bits (>= 0, not
  bounded by 1); for Bernoulli outputs this equals the sample covariance of p_i and z_i (denominator
  N - 1) / ln 2, which is how it is computed, streaming; None when N = 1
* ``sample_volumes``: (N, R) voxel counts of p_i >= 0.5 (the predicted-volume distribution)

With ``+ts``, ``prob`` and ``entropy`` are those of p_ts; ``mi``, ``epkl`` and ``sample_volumes`` stay those of the
base's passes (scaling the mean does not change how the passes disagree), MI capped at the scaled entropy.

Passes of one network are batched through MONAI ``sliding_window_inference`` in chunks; the chunk size is
``mc_batch`` or, with ``"auto"``, chosen per network and input shape by timing a one-pass chunk against a
multi-pass chunk on the first patient (both count as real passes), halving on out-of-memory. Deterministic
passes are cached per patient (``cache``), so e.g. ``deterministic``, ``deterministic+ts``, ``tta`` and
``ensemble`` share the primary's identity pass.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from core.inference.forward import LN2, _forward, _run_views, binary_entropy
from core.inference.mc_masks import FixedMasks, sample_seed
from core.inference.methods import FLIPS, MethodSpec, parse_method
from core.inference.modelset import ModelSet, as_model_set
from core.inference.precision import autocast
from core.io.architectures import dropout_modules, preprocess
from core.io.checkpoints import LoadedModel



P_BELOW_HALF = float(np.nextafter(np.float32(0.5), np.float32(0)))  # largest float32 below 0.5


AUX_Q_MAX = 1.0 - 1e-6  # q capped so that a background voxel's confidence stays below 0.5


def unavailable_reason(method: str, ms: ModelSet) -> str | None:
    """Why ``method`` cannot run on this model set (None when it can). Temperatures are checked at run time.

    Args:
        method: a method name (:mod:`core.inference.methods`).
        ms: the model set.

    Returns:
        a sentence naming what is missing (no dropout layer, fewer than 3 ensemble members, no snapshots, no
        auxiliary network), or None.

    Raises:
        ValueError: for an unknown method name.
    """
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
    """One method's output on one image (see the module doc for the definitions).

    Attributes:
        prob: (R, X, Y, Z) float32 mean probability p.
        entropy: (R, X, Y, Z) float32 H(p), bits in [0, 1].
        mi: (R, X, Y, Z) float32 mutual information, bits, or None (one pass).
        n_samples: N, the passes averaged.
        seconds: wall time of the prediction.
        chunk: passes per forward call used.
        epkl: (R, X, Y, Z) float32 expected pairwise KL, bits (>= 0), or None (one pass).
        sample_volumes: (N, R) voxel counts of p_i >= 0.5.
        logit: (R, X, Y, Z) float32 logit of the mean probability before any temperature, log(p / (1 - p))
            computed in log space from the passes (exactly z for one pass); only with ``predict(return_logit=True)``.
    """
    prob: np.ndarray
    entropy: np.ndarray
    mi: np.ndarray | None
    n_samples: int
    seconds: float
    chunk: int = 1
    epkl: np.ndarray | None = None
    sample_volumes: np.ndarray | None = None  # (N, R) voxel counts of p_i >= 0.5
    logit: np.ndarray | None = None  # (R, X, Y, Z) logit of the mean probability before +ts (return_logit=True)


class _Accumulator:
    """Streaming sums over passes: mean p, mean H(p_i), Welford co-moment of (p_i, z_i), volumes."""

    def __init__(self, keep_logit: bool = False):
        self.n = 0
        self.psum = self.hsum = self.pmean = self.zmean = self.comoment = None
        self.volumes = []
        self.keep_logit = keep_logit  # also log sum_i p_i and log sum_i (1 - p_i), for the logit of the mean
        self.lp = self.lq = None

    def add(self, z: torch.Tensor) -> None:
        z = z.float()
        p = torch.sigmoid(z)
        h = binary_entropy(p)
        self.n += 1
        self.volumes.append((p >= 0.5).flatten(1).sum(1).cpu().numpy())
        if self.keep_logit:
            lp, lq = torch.nn.functional.logsigmoid(z), torch.nn.functional.logsigmoid(-z)
            self.lp = lp if self.lp is None else torch.logaddexp(self.lp, lp)
            self.lq = lq if self.lq is None else torch.logaddexp(self.lq, lq)
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

    def mean_logit(self) -> torch.Tensor:
        """logit of the mean probability, log sum_i p_i - log sum_i (1 - p_i) (the 1/N cancels): finite where the
        float32 mean itself rounds to 0 or 1; exactly z for one pass. Needs ``keep_logit``."""
        return self.z_first if self.n == 1 else self.lp - self.lq

    def result(self, temperature: torch.Tensor | None = None) -> tuple:
        """(p, entropy, mi, epkl); with ``temperature`` ((R, 1, 1, 1), +ts) p and the entropy are those of
        sigmoid(logit(p) / T), each voxel kept on its side of 0.5 (TS never changes a segmentation)."""
        p = (self.psum / self.n).clamp_(0, 1)
        if self.n == 1:
            # float32 rounds sigmoid(z) to exactly 0.5 for -6e-8 < z < 0; keep such voxels below 0.5 so the
            # segmentation is exactly z >= 0 whatever the temperature (TS never moves a deterministic voxel)
            p = torch.where(self.z_first < 0, torch.clamp(p, max=P_BELOW_HALF), p)
        raw_ent = binary_entropy(p)
        ent = raw_ent
        if temperature is not None:
            pt = torch.sigmoid(self.mean_logit() / temperature)
            p = torch.where(p >= 0.5, pt.clamp(min=0.5), pt.clamp(max=P_BELOW_HALF))
            ent = binary_entropy(p)
        if self.n == 1:
            return p, ent, None, None
        mi = (raw_ent - self.hsum / self.n).clamp_(min=0.0)
        if temperature is not None:
            mi = torch.minimum(mi, ent)
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
            cache: dict | None = None, return_logit: bool = False) -> Prediction:
    """Run one method on one (C, X, Y, Z) image (channels in the model card's order).

    Args:
        model: a :class:`~core.inference.modelset.ModelSet` or a bare :class:`~core.io.checkpoints.LoadedModel`.
        image: (C, X, Y, Z) float32 on the model grid (normalised here, as the card says).
        method: a method name (:mod:`core.inference.methods`).
        T: passes of ``mc_dropout``.
        mc_batch: passes per forward call, or ``"auto"`` (timed on the first call, halved on out-of-memory).
        overlap: sliding-window overlap.
        device: where to run (default: the model's device).
        seed: seed of the MC-dropout masks (sample t uses :func:`core.inference.mc_masks.sample_seed` (seed, t));
            the batch passes one per (run seed, model, patient) (:func:`core.inference.mc_masks.patient_seed`).
            None: a random one.
        cache: a dict kept for one patient to share deterministic passes between methods.
        return_logit: also return the logit of the mean probability before any temperature
            (:attr:`Prediction.logit`, what a +ts temperature is fitted on).

    Returns:
        the :class:`Prediction` (maps (R, X, Y, Z) on the model grid).

    Raises:
        ValueError: for an unknown method, one the model set cannot run (:func:`unavailable_reason`), or a
            ``+ts`` method without a temperature fitted for it (:func:`method_temperature`).
    """
    ms = as_model_set(model)
    spec = parse_method(method)
    reason = unavailable_reason(spec.name, ms)
    if reason:
        raise ValueError(f"method {spec.name} unavailable: {reason}")
    temperature = method_temperature(ms, spec.name) if spec.ts else None
    device = torch.device(device) if device is not None else next(ms.model.parameters()).device
    t0 = time.perf_counter()
    cache = {} if cache is None else cache
    xkey = ("x", id(image))
    if xkey not in cache:
        cache[xkey] = preprocess(image, ms.card).to(device)
    x = cache[xkey]
    temp = None
    if spec.ts:
        temp = torch.as_tensor(np.asarray(temperature, np.float32), device=device).view(-1, 1, 1, 1)
    acc = _Accumulator(keep_logit=spec.ts or return_logit)
    chunk = 1
    with torch.inference_mode():
        if spec.base == "auxiliary":
            return _predict_auxiliary(ms, x, overlap, cache, t0)
        if spec.base == "mc_dropout":
            if seed is None:
                seed = int(torch.randint(0, 2 ** 31 - 1, ()).item())
            torch.manual_seed(seed)  # only dropout types without fixed masks (mc_masks) draw from torch
            views = [FLIPS[t % len(FLIPS)] if spec.tta else () for t in range(T)]
            seeds = [sample_seed(seed, t) for t in range(T)]
            with FixedMasks(ms.model) as masks:
                for _, z in _run_views(ms.primary, x, views, mc_batch, overlap, stochastic=True,
                                       precision=ms.precision, masks=masks, seeds=seeds):
                    acc.add(z)
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
                    acc.add(cache[(id(lm.model), v)])
    p, ent, mi, epkl = acc.result(temp)
    np_ = (lambda t: None if t is None else t.float().cpu().numpy())
    return Prediction(np_(p), np_(ent), np_(mi), acc.n, time.perf_counter() - t0, chunk, np_(epkl),
                      np.stack(acc.volumes), np_(acc.mean_logit()) if return_logit else None)


def method_temperature(ms: ModelSet, method: str) -> np.ndarray:
    """The (R,) temperatures a ``+ts`` method uses: those fitted for that method (``ms.temperature[method]``,
    as the batch sets them, :mod:`core.batch.plan`), or ``ms.temperature`` itself when it is one (R,) array (set
    by hand: used by every +ts method).

    Raises:
        ValueError: when none was fitted for ``method``.
    """
    t = ms.temperature
    if isinstance(t, dict):
        t = t.get(method)
    if t is None:
        raise ValueError(f"method {method} needs the temperatures of {ms.name} fitted for {method} "
                         f"(on the calibration split)")
    return np.asarray(t, np.float32)


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
