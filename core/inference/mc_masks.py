"""MC-dropout samples as whole networks: one dropout mask per sample, shared by every sliding window.

With torch's own dropout in train mode, every window of a sliding-window pass draws fresh masks, so one "sample"
is a patchwork of independent sub-networks, and MONAI's Gaussian blending averages two of them wherever windows
overlap: the sample-to-sample spread (MI, EPKL) drops in the overlap zones and the maps carry the window grid.
Here a sample is one network: each dropout layer's keep / drop decision is a deterministic hash of

    (sample seed, layer index, channel, absolute feature position in the volume)

so two windows that see the same place of the volume drop the same units there, and the decision does not depend
on how samples are chunked into forward calls, on the window batch, or on which process runs the patient.

* ``nn.Dropout`` (element-wise, MONAI UNet's ADN): the key includes the feature voxel's position in the volume,
  ``round(window_start * f / roi) + local_index`` per spatial axis (f / roi the layer's scale; exact where the
  window starts are multiples of the layer's stride).
* ``nn.Dropout1d/2d/3d`` (channel-wise, MONAI SegResNet): the key is the channel only: the same channels are
  dropped in the whole volume.
* Other dropout types (AlphaDropout, FeatureAlphaDropout) keep torch's own train-mode sampling (seeded by
  ``torch.manual_seed(sample seed)``): their samples still carry the window grid, and :func:`fixed_mask_layers`
  reports them.

Kept units are scaled by 1 / (1 - p), as torch does. Seeds: :func:`patient_seed` gives one per
(run seed, model, patient); sample t of that patient uses ``sample_seed(patient_seed, t)``.
"""
from __future__ import annotations

import hashlib

import torch

M32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # the multiplier of a well-known 32-bit integer hash (< 2**31: int64 products cannot overflow)


def patient_seed(run_seed: int, model: str, patient_id: str) -> int:
    """The MC-dropout seed of one (run, model, patient): a stable hash (BLAKE2b) of the run's seed, the model name
    and the patient id, in [0, 2**31). The same in every shard, worker and chunk layout; different per patient, so
    the Monte Carlo error averages out over a cohort instead of being shared by all its patients."""
    h = hashlib.blake2b(f"{int(run_seed)}|{model}|{patient_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def sample_seed(seed: int, t: int) -> int:
    """Seed of MC sample ``t`` (0-based) of a prediction seeded with ``seed``, in [0, 2**31)."""
    h = hashlib.blake2b(f"{int(seed)}#{int(t)}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & 0x7FFFFFFF


def _mix(x: torch.Tensor) -> torch.Tensor:
    """32-bit avalanche of int64 tensors holding values in [0, 2**32)."""
    x = ((x >> 16) ^ x) & M32
    x = (x * _MIX) & M32
    x = ((x >> 16) ^ x) & M32
    x = (x * _MIX) & M32
    return ((x >> 16) ^ x) & M32


def _combine(h: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _mix((h ^ ((v + 0x9E3779B9) & M32)) & M32)


def uniform_field(seed: int, layer: int, channels: int, starts: list[int] | None, sizes: list[int],
                  device) -> torch.Tensor:
    """(C, *sizes) float32 uniforms in [0, 1) keyed by (seed, layer, channel, absolute position).

    Args:
        seed: the sample's seed (:func:`sample_seed`).
        layer: the dropout layer's index in the network.
        channels: C.
        starts: per spatial axis, the absolute feature index of local index 0; None: no spatial key (the field is
            constant over ``sizes``, channel dropout).
        sizes: the spatial sizes of the field (all 1 with ``starts=None``).
        device: where to build it.
    """
    h = _mix(torch.tensor([(seed * 1000003 + layer) & M32], dtype=torch.int64, device=device))
    c = torch.arange(channels, dtype=torch.int64, device=device).view(-1, *[1] * len(sizes))
    h = _combine(h.view(1, *[1] * len(sizes)), c)
    if starts is not None:
        for d, (s0, n) in enumerate(zip(starts, sizes)):
            shape = [1] * (1 + len(sizes))
            shape[1 + d] = n
            pos = (torch.arange(n, dtype=torch.int64, device=device) + int(s0) + (1 << 20)).view(shape)
            h = _combine(h, pos)
    h = h.expand(channels, *sizes)
    return (h.to(torch.float64) / 2.0 ** 32).to(torch.float32)


def fixed_mask_layers(model: torch.nn.Module) -> tuple[list[torch.nn.Module], list[torch.nn.Module]]:
    """(layers masked here, active dropout layers left to torch's train-mode sampling)."""
    own, other = [], []
    for m in model.modules():
        if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0:
            (own if type(m) in (torch.nn.Dropout, torch.nn.Dropout1d, torch.nn.Dropout2d, torch.nn.Dropout3d)
             else other).append(m)
    return own, other


class FixedMasks:
    """Context manager: dropout layers of ``model`` apply per-sample fixed masks (see the module doc).

    Inside it the masked layers are in eval mode and a forward hook multiplies their input by the mask of the row's
    sample; other dropout layers are in train mode. Before each network call the caller sets :attr:`rows`: per
    batch row, (sample seed, absolute start per spatial axis of the window, window spatial size).
    On exit the whole model is back in eval mode and the hooks are removed.
    """

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.own, self.other = fixed_mask_layers(model)
        self.rows: list[tuple[int, tuple[int, ...], tuple[int, ...]]] = []
        self._handles = []

    def __enter__(self) -> "FixedMasks":
        self.model.eval()
        for m in self.other:
            m.train()
        for i, m in enumerate(self.own):
            self._handles.append(m.register_forward_hook(self._hook(i)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.model.eval()

    def _hook(self, index: int):
        def hook(module, inputs, output):
            x = inputs[0]
            if len(self.rows) != x.shape[0]:
                raise RuntimeError(f"dropout layer {index}: {x.shape[0]} rows, {len(self.rows)} sample keys set")
            channel_wise = not isinstance(module, torch.nn.Dropout)
            p = float(module.p)
            masks = []
            for seed, starts, roi in self.rows:
                sizes = list(x.shape[2:])
                if channel_wise:
                    u = uniform_field(seed, index, x.shape[1], None, [1] * len(sizes), x.device)
                elif len(sizes) == len(roi):
                    # the layer's scale on each axis: feature size / window size
                    st = [round(s0 * n / r) for s0, n, r in zip(starts, sizes, roi)]
                    u = uniform_field(seed, index, x.shape[1], st, sizes, x.device)
                else:  # non-spatial input: keyed by the flat index
                    u = uniform_field(seed, index, x[0].numel(), None, [], x.device).view(x.shape[1:])
                masks.append(u)
            keep = (torch.stack(masks) >= p).to(x.dtype)
            return x * keep / (1.0 - p)
        return hook
