"""Checkpoints: save with a model card, load (``weights_only=True``) a checkpoint, a MONAI bundle or a state dict with a sidecar."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from core.io.architectures import build_model, prefer_onednn
from core.io.bundle import load_bundle, load_with_sidecar, sidecar_of


CHECKPOINT_FORMAT = "tumourqa-checkpoint/1"


def save_checkpoint(path: str | Path, model: torch.nn.Module, card: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "card": card, "state_dict": state}, tmp)
    tmp.replace(path)
    return path


@dataclass
class LoadedModel:
    model: torch.nn.Module
    card: dict
    path: str

    @property
    def name(self) -> str:
        return self.card["name"]


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", card: dict | None = None) -> LoadedModel:
    """Load a model safely (``weights_only=True``) and return the network in eval mode.

    ``path``: one of our checkpoints; a MONAI bundle folder (``configs/inference.json`` + ``models/model.pt``);
    or a plain state dict ``X.pt`` with a sidecar ``X.json`` / ``X.toml`` or with ``card`` (the sidecar's keys,
    from a model spec) (:mod:`core.io.bundle`; the network is wrapped so that it takes our channel order and
    returns our region order). Plain 3D convolutions use oneDNN for CPU fp32 inference (:func:`prefer_onednn`).
    """
    path = Path(path)
    if path.is_dir():
        model, card = load_bundle(path)
        return LoadedModel(prefer_onednn(model.to(device).eval()), card, str(path))
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not (isinstance(blob, dict) and "format" in blob):
        if card is not None or sidecar_of(path) is not None:
            model, card = load_with_sidecar(path, card)
            return LoadedModel(prefer_onednn(model.to(device).eval()), card, str(path))
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a {CHECKPOINT_FORMAT} checkpoint (keys: {list(blob)[:5] if isinstance(blob, dict) else type(blob).__name__})")
    card = blob["card"]
    model = build_model(card)
    model.load_state_dict(blob["state_dict"], strict=True)
    prefer_onednn(model.to(device).eval())
    return LoadedModel(model, card, str(path))
