"""MONAI bundle directories and plain state dicts with a sidecar, loaded as our model cards (no code executed).

A MONAI bundle (e.g. ``brats_mri_segmentation``) is a folder with ``configs/metadata.json``,
``configs/inference.json`` and ``models/model.pt`` (a plain state dict). The JSON configs are READ, never
evaluated: only ``network_def`` (``_target_`` and its literal arguments), ``inferer.roi_size``, the
``NormalizeIntensityd`` / ``Spacingd`` entries of ``preprocessing`` and the metadata's
``network_data_format`` channel definitions are used. Only the nets of :data:`ALLOWED_TARGETS` are built;
any other ``_target_`` or an argument that is an expression (``$...``, ``@...``) raises :class:`BundleError`.

Channel and region mapping: the bundle's own input order (e.g. T1c, T1, T2, FLAIR) and output order
(e.g. TC, WT, ET) are turned into our canonical ones by :class:`ChannelMapped`, which wraps the network:
``forward(x)`` with x (B, 4, X, Y, Z) in OUR channel order (``t1, t1ce, t2, flair``) feeds the network
``x[:, in_index]`` and returns its logits ``[:, out_index]`` in OUR region order (WT, TC, ET). So the card
of a loaded bundle says ``channels = [t1, t1ce, t2, flair]`` and ``regions = [WT, TC, ET]`` like every
other model and the rest of the code (uncertainty, metrics, maps) needs no change; the bundle's native
orders are kept in ``card["source"]`` for the record. Channel-wise normalisation commutes with the
permutation, so normalising in our order is the same as normalising in the bundle's.

A plain state dict ``X.pt`` with a sidecar ``X.json`` or ``X.toml`` (keys: ``name``, ``arch``
(``segresnet``/``unet_res`` or a MONAI class name), ``arch_args``, ``channels``, ``regions``,
``spacing_mm``, optional ``roi_size``, ``normalisation``, ``output``) loads the same way; the same keys
may instead be given in the model spec as ``card = {...}`` (:mod:`core.inference.modelset`).
All weights load with ``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import json
import tomllib
from pathlib import Path

import torch

from core.io.architectures import build_model
from core.store.schema import REGIONS


# MONAI network class names we build -> our registry key (core.io.architectures.ARCHITECTURES)
ALLOWED_TARGETS = {"SegResNet": "segresnet", "UNet": "unet_res"}
# modality names seen in bundles / BraTS namings -> canonical names (core.io.cohort.CANONICAL_MODALITIES)
CHANNEL_NAMES = {"t1": "t1", "t1n": "t1", "t1w": "t1", "t1native": "t1", "t1c": "t1ce", "t1ce": "t1ce",
                 "t1gd": "t1ce", "t1post": "t1ce", "t2": "t2", "t2w": "t2", "flair": "flair", "t2f": "flair",
                 "t2flair": "flair"}
REGION_NAMES = {"wt": "WT", "wholetumor": "WT", "wholetumour": "WT", "tc": "TC", "tumorcore": "TC",
                "tumourcore": "TC", "et": "ET", "enhancingtumor": "ET", "enhancingtumour": "ET"}
CANONICAL_CHANNELS = ["t1", "t1ce", "t2", "flair"]
CANONICAL_REGIONS = list(REGIONS)


class BundleError(ValueError):
    """A bundle or sidecar that cannot be loaded safely; the message names the file and the problem."""


class ChannelMapped(torch.nn.Module):
    """Wrap a network so that it takes our channel order and returns our region order.

    ``forward(x)``: x (B, C, X, Y, Z) in canonical channel order -> logits (B, R, X, Y, Z) in canonical region
    order, computed as ``net(x[:, in_index])[:, out_index]``.
    """

    def __init__(self, net: torch.nn.Module, in_index: list[int], out_index: list[int]):
        super().__init__()
        self.net = net
        self.register_buffer("in_index", torch.as_tensor(in_index, dtype=torch.long), persistent=False)
        self.register_buffer("out_index", torch.as_tensor(out_index, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.index_select(1, self.in_index)).index_select(1, self.out_index)


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def map_names(names: list[str], table: dict, canonical: list[str], what: str, where) -> list[int]:
    """Native names (bundle order) -> index list ``idx`` with ``native[idx[k]] == canonical[k]``."""
    mapped = []
    for n in names:
        if _key(n) not in table:
            raise BundleError(f"{where}: unknown {what} name {n!r} (known: {sorted(set(table.values()))})")
        mapped.append(table[_key(n)])
    if sorted(mapped) != sorted(canonical):
        raise BundleError(f"{where}: {what}s {names} do not map one to one onto {canonical}")
    return [mapped.index(c) for c in canonical]


def _literal(v, where, key):
    if isinstance(v, str) and (v.startswith("$") or v.startswith("@") or v.startswith("%")):
        raise BundleError(f"{where}: network_def argument {key}={v!r} is an expression; only literal values are read")
    if isinstance(v, list):
        return [_literal(x, where, key) for x in v]
    return v


def parse_network_def(net: dict, where) -> tuple[str, dict]:
    """``{"_target_": "SegResNet", ...}`` -> (our arch key, constructor kwargs); refuses unknown targets."""
    if not isinstance(net, dict) or "_target_" not in net:
        raise BundleError(f"{where}: no network_def with a _target_")
    target = str(net["_target_"])
    short = target.rsplit(".", 1)[-1]
    if short not in ALLOWED_TARGETS or (target != short and not target.startswith("monai.networks.nets.")):
        raise BundleError(f"{where}: network_def _target_ {target!r} is not allowed "
                          f"(allowed: {', '.join(f'monai.networks.nets.{t}' for t in ALLOWED_TARGETS)})")
    args = {k: _literal(v, where, k) for k, v in net.items() if not k.startswith("_")}
    args.setdefault("spatial_dims", 3)
    return ALLOWED_TARGETS[short], args


def _channel_def(meta: dict, io: str) -> list[str] | None:
    fmt = (meta.get("network_data_format") or {}).get(io) or {}
    for v in fmt.values():
        cd = (v or {}).get("channel_def")
        if cd:
            return [cd[k] for k in sorted(cd, key=lambda s: int(s))]
    return None


def _transforms(cfg: dict) -> list[dict]:
    pre = cfg.get("preprocessing") or {}
    ts = pre.get("transforms", []) if isinstance(pre, dict) else []
    return [t for t in ts if isinstance(t, dict)]


def read_bundle_card(bundle_dir: str | Path) -> dict:
    """Our model card for a bundle folder, from its configs only (nothing executed)."""
    d = Path(bundle_dir)
    inf_path, meta_path = d / "configs" / "inference.json", d / "configs" / "metadata.json"
    if not inf_path.exists():
        raise BundleError(f"{d}: not a MONAI bundle (no configs/inference.json)")
    try:
        cfg = json.loads(inf_path.read_text())
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    except json.JSONDecodeError as e:
        raise BundleError(f"{d}: cannot parse bundle config: {e}") from None
    arch, args = parse_network_def(cfg.get("network_def"), inf_path)
    channels = _channel_def(meta, "inputs") or ["T1c", "T1", "T2", "FLAIR"]
    regions = _channel_def(meta, "outputs") or ["TC", "WT", "ET"]
    spacing, norm = [1.0, 1.0, 1.0], None
    for t in _transforms(cfg):
        name = str(t.get("_target_", "")).rsplit(".", 1)[-1]
        if name in ("Spacingd", "Spacing") and isinstance(t.get("pixdim"), list):
            spacing = [float(s) for s in t["pixdim"]]
        if name in ("NormalizeIntensityd", "NormalizeIntensity"):
            norm = "nonzero_channelwise_zscore" if t.get("nonzero") and t.get("channel_wise") else "other"
    if norm != "nonzero_channelwise_zscore":
        raise BundleError(f"{inf_path}: preprocessing must have NormalizeIntensityd(nonzero=True, channel_wise=True)")
    roi = (cfg.get("inferer") or {}).get("roi_size") or [240, 240, 160]
    return _card(d.name, arch, args, channels, regions, spacing, roi, norm, "sigmoid",
                 {"kind": "monai_bundle", "folder": str(d), "version": meta.get("version"), "name": meta.get("name")})


def _card(name, arch, args, channels, regions, spacing, roi, norm, output, source) -> dict:
    if arch in ALLOWED_TARGETS:
        arch = ALLOWED_TARGETS[arch]
    if arch not in set(ALLOWED_TARGETS.values()):
        raise BundleError(f"{source.get('folder') or source.get('file')}: architecture {arch!r} not allowed")
    if output != "sigmoid":
        raise BundleError(f"{name}: only sigmoid outputs are supported, not {output!r}")
    return {"name": name, "arch": arch, "arch_args": dict(args), "channels": list(CANONICAL_CHANNELS),
            "regions": list(CANONICAL_REGIONS), "output": "sigmoid", "spacing_mm": [float(s) for s in spacing],
            "normalisation": norm, "roi_size": [int(r) for r in roi], "training": {},
            "source": {**source, "channels": list(channels), "regions": list(regions)}}


def sidecar_of(path: str | Path) -> Path | None:
    """``X.json`` or ``X.toml`` next to ``X.pt`` (None when there is none)."""
    p = Path(path)
    for ext in (".json", ".toml"):
        s = p.with_suffix(ext)
        if s.exists():
            return s
    return None


def read_sidecar_card(pt_path: str | Path, sidecar: str | Path | dict) -> dict:
    """Our card for a plain state dict from its sidecar file (or a dict of the same keys)."""
    if isinstance(sidecar, dict):
        sc, where = sidecar, f"{pt_path} (card given in the model spec)"
    else:
        where = Path(sidecar)
        sc = tomllib.loads(where.read_text()) if where.suffix == ".toml" else json.loads(where.read_text())
    missing = [k for k in ("arch", "arch_args", "channels", "regions", "spacing_mm") if k not in sc]
    if missing:
        raise BundleError(f"{where}: sidecar misses {', '.join(missing)}")
    return _card(sc.get("name", Path(pt_path).stem), sc["arch"], sc["arch_args"], sc["channels"], sc["regions"],
                 sc["spacing_mm"], sc.get("roi_size", [128, 128, 128]),
                 sc.get("normalisation", "nonzero_channelwise_zscore"), sc.get("output", "sigmoid"),
                 {"kind": "state_dict", "file": str(pt_path), "sidecar": "spec" if isinstance(sidecar, dict) else str(where)})


def load_state_dict_file(path: str | Path) -> dict:
    """A ``.pt`` holding a plain state dict (tensors only), loaded with ``weights_only=True``."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict) and "format" not in sd:
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise BundleError(f"{path}: not a plain state dict of tensors")
    return sd


def build_from_card(card: dict, state_dict: dict) -> torch.nn.Module:
    """The network of ``card`` with ``state_dict`` loaded (strict), wrapped by :class:`ChannelMapped`."""

    net = build_model(card)
    try:
        net.load_state_dict(state_dict, strict=True)
    except RuntimeError as e:
        raise BundleError(f"{card['name']}: weights do not fit {card['arch']} {card['arch_args']}: {e}") from None
    src = card["source"]
    in_idx = map_names(src["channels"], CHANNEL_NAMES, CANONICAL_CHANNELS, "input channel", card["name"])
    out_idx = map_names(src["regions"], REGION_NAMES, CANONICAL_REGIONS, "output region", card["name"])
    return ChannelMapped(net, in_idx, out_idx)


def load_bundle(bundle_dir: str | Path):
    """(network wrapped to our channel / region order, card, weights path) of a bundle folder."""
    d = Path(bundle_dir)
    card = read_bundle_card(d)
    weights = d / "models" / "model.pt"
    if not weights.exists():
        raise BundleError(f"{d}: no models/model.pt")
    return build_from_card(card, load_state_dict_file(weights)), card


def load_with_sidecar(pt_path: str | Path, sidecar=None):
    """(wrapped network, card) of a plain state dict ``.pt`` and its sidecar."""
    sc = sidecar if sidecar is not None else sidecar_of(pt_path)
    if sc is None:
        raise BundleError(f"{pt_path}: a plain state dict needs a sidecar {Path(pt_path).with_suffix('.json').name}")
    card = read_sidecar_card(pt_path, sc)
    return build_from_card(card, load_state_dict_file(pt_path)), card
