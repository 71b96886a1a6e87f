"""A model as the batch uses it: the primary checkpoint plus what some methods need beside it.

* ``ensemble``: extra independently trained members of the same architecture; the deep ensemble is
  ``[primary] + ensemble`` (method ``ensemble``, at least 3 members in all).
* ``snapshots``: earlier checkpoints of the primary's own training run; the checkpoint ensemble is
  ``snapshots + [primary]`` (method ``checkpoint_ensemble``, paper 003).
* ``auxiliary``: an auxiliary error network (:mod:`core.training.auxiliary`, paper 002) trained for this model.
* ``temperature``: ``{method: (R,) float}``, one temperature per region for each ``+ts`` method, fitted on the
  calibration split on that method's own output (:mod:`core.inference.temperature`), set by the batch; an (R,)
  array set by hand is used by every ``+ts`` method (:func:`core.inference.uncertainty.method_temperature`).
* ``methods``: optional list of method names for this model only (default: the run's methods).
* ``precision``: the forward passes' precision, ``fp32`` / ``bf16`` / ``fp16`` (autocast; set by the batch
  from ``--precision``, :mod:`core.inference.precision`).

A model spec (in a study config or ``run_batch(models=...)``) is either a checkpoint path or a mapping
``{"checkpoint": path, "ensemble": [paths], "snapshots": [paths], "auxiliary": path, "methods": [names]}``; for
a plain state dict ``checkpoint``, ``card`` may give what a sidecar would (arch, arch_args, channels, regions,
spacing_mm, ...). Every path is one of our checkpoints, a MONAI bundle folder or a plain state dict with a
sidecar (:mod:`core.io.bundle`), and loads with ``torch.load(..., weights_only=True)``
(:func:`core.io.checkpoints.load_checkpoint`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from core.inference.methods import canonical_method
from core.io.architectures import DEMO_MODELS, demo_weight_files
from core.io.checkpoints import LoadedModel, load_checkpoint


# card keys that must agree between a primary and its ensemble members / snapshots
_SAME = ("channels", "regions", "output", "spacing_mm", "normalisation", "roi_size")


@dataclass
class ModelSet:
    """A model as the batch uses it: the primary checkpoint and the parts some methods need (see the module doc)."""
    primary: LoadedModel
    ensemble: list[LoadedModel] = field(default_factory=list)
    snapshots: list[LoadedModel] = field(default_factory=list)
    auxiliary: LoadedModel | None = None
    temperature: dict[str, np.ndarray] | np.ndarray | None = None  # +ts method -> (R,), see the module doc
    methods: list[str] | None = None  # this model's methods (None: the run's)
    precision: str = "fp32"  # forward-pass precision (core.precision): fp32, bf16 or fp16 (autocast)

    @property
    def name(self) -> str:
        """The primary's model name."""
        return self.primary.name

    @property
    def card(self) -> dict:
        """The primary's model card."""
        return self.primary.card

    @property
    def path(self) -> str:
        """The primary's checkpoint path."""
        return self.primary.path

    @property
    def model(self) -> torch.nn.Module:
        """The primary network."""
        return self.primary.model

    def files(self) -> dict:
        """Resolved checkpoint paths of every part (stored in the run's config).

    Returns:
        ``{"checkpoint", "ensemble": [...], "snapshots": [...], "auxiliary" (None without one), "methods"}``.
    """
        return {"checkpoint": str(Path(self.primary.path).resolve()),
                "ensemble": [str(Path(m.path).resolve()) for m in self.ensemble],
                "snapshots": [str(Path(m.path).resolve()) for m in self.snapshots],
                "auxiliary": str(Path(self.auxiliary.path).resolve()) if self.auxiliary else None,
                "methods": self.methods}


def as_model_set(m) -> ModelSet:
    """``m`` itself when it is a ModelSet, else a ModelSet with the LoadedModel ``m`` as its primary alone."""
    return m if isinstance(m, ModelSet) else ModelSet(m)


def normalise_spec(spec) -> dict:
    """A model spec in its full form.

    Args:
        spec: a checkpoint path, or a mapping with ``checkpoint`` and optionally ``ensemble``, ``snapshots``,
            ``auxiliary``, ``methods``, ``card``.

    Returns:
        ``{"checkpoint", "ensemble": [paths], "snapshots": [paths], "auxiliary" (or None), "methods" (or
        None)}`` with string paths, plus ``card`` (a dict) when the spec gives one.

    Raises:
        ValueError: for a spec that is neither, an unknown key, or a ``card`` that is not a mapping.
    """
    if isinstance(spec, (str, Path)):
        return {"checkpoint": str(spec), "ensemble": [], "snapshots": [], "auxiliary": None, "methods": None}
    if not isinstance(spec, dict) or "checkpoint" not in spec:
        raise ValueError(f"a model is a checkpoint path or a table with a 'checkpoint' key, not {spec!r}")
    keys = {"checkpoint", "ensemble", "snapshots", "auxiliary", "methods", "card"}
    unknown = set(spec) - keys
    if unknown:
        raise ValueError(f"unknown model keys {sorted(unknown)} (known: {', '.join(sorted(keys))})")
    out = {"checkpoint": str(spec["checkpoint"]), "ensemble": [str(p) for p in spec.get("ensemble") or []],
           "snapshots": [str(p) for p in spec.get("snapshots") or []],
           "auxiliary": str(spec["auxiliary"]) if spec.get("auxiliary") else None,
           "methods": [str(m) for m in spec["methods"]] if spec.get("methods") else None}
    if spec.get("card"):
        if not isinstance(spec["card"], dict):
            raise ValueError(f"model key 'card' must be a table (arch, arch_args, channels, regions, spacing_mm), not {spec['card']!r}")
        out["card"] = dict(spec["card"])
    return out


def load_model_set(spec, device: str | torch.device = "cpu") -> ModelSet:
    """Load every checkpoint of a model spec and check that members fit the primary.

    Ensemble members and snapshots must agree with the primary's card on channels, regions, output, spacing,
    normalisation and ROI size; the auxiliary network must be one for the primary (role, regions, channels,
    spacing).

    Args:
        spec: a model spec (:func:`normalise_spec`).
        device: where the networks are loaded.

    Returns:
        the model set (``methods`` canonicalised when the spec lists them).

    Raises:
        ValueError: for an invalid spec, a member that does not fit, or an auxiliary network for another model.
    """
    s = normalise_spec(spec)
    primary = load_checkpoint(s["checkpoint"], device, card=s.get("card"))
    ms = ModelSet(primary,
                  [load_checkpoint(p, device) for p in s["ensemble"]],
                  [load_checkpoint(p, device) for p in s["snapshots"]],
                  load_checkpoint(s["auxiliary"], device) if s["auxiliary"] else None)
    if s["methods"]:
        ms.methods = list(dict.fromkeys(canonical_method(m) for m in s["methods"]))
    for kind, members in (("ensemble member", ms.ensemble), ("snapshot", ms.snapshots)):
        for m in members:
            bad = [k for k in _SAME if m.card.get(k) != primary.card.get(k)]
            if bad:
                raise ValueError(f"{kind} {m.path} does not fit {primary.path}: different {', '.join(bad)}")
    if ms.auxiliary is not None:
        aux = ms.auxiliary.card
        if aux.get("role") != "auxiliary" or aux.get("regions") != primary.card["regions"]:
            raise ValueError(f"{ms.auxiliary.path} is not an auxiliary error network for {primary.name}")
        if aux.get("channels") != primary.card["channels"] or aux.get("spacing_mm") != primary.card["spacing_mm"]:
            raise ValueError(f"auxiliary network {ms.auxiliary.path} expects other channels or spacing than {primary.name}")
    return ms


def demo_model_spec(name: str, weights_dir: str | Path, with_demo_methods: bool = False) -> dict:
    """The model spec of a demo model from the files present in ``weights_dir``.

    Args:
        name: a key of :data:`core.io.architectures.DEMO_MODELS`.
        weights_dir: the folder of the demo weights.
        with_demo_methods: also the model's own demo method list (``DEMO_MODELS[name]["demo_methods"]``).

    Returns:
        ``{"checkpoint": path}`` (always, even when the file is missing) plus ``ensemble``, ``snapshots``,
        ``auxiliary`` and ``methods`` where present (missing parts left out).
    """

    files = demo_weight_files(name)
    d = Path(weights_dir)
    spec = {"checkpoint": str(d / files["checkpoint"])}
    ens = [str(d / f) for f in files["ensemble"] if (d / f).exists()]
    snaps = [str(d / f) for f in files["snapshots"] if (d / f).exists()]
    if ens:
        spec["ensemble"] = ens
    if snaps:
        spec["snapshots"] = snaps
    if files["auxiliary"] and (d / files["auxiliary"]).exists():
        spec["auxiliary"] = str(d / files["auxiliary"])
    if with_demo_methods and DEMO_MODELS[name].get("demo_methods"):
        spec["methods"] = list(DEMO_MODELS[name]["demo_methods"])
    return spec
