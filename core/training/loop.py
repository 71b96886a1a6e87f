"""The one training loop of the project: segmentation models, deep-ensemble members, snapshots and auxiliary
error networks all train through :func:`fit`.

Each step takes ``batch_size`` random crops of ``crop`` voxels from in-memory (image, target) pairs (centred on
a voxel of target channel 0 with probability ``p_tumour``), random flips on the three spatial axes and, with
``intensity_aug``, a random intensity scale in [0.9, 1.1] and shift in [-0.1, 0.1] per channel. AdamW
(weight decay 1e-5) with cosine learning-rate decay over all steps. Deterministic from the generator on CPU.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def random_crop(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, crop, p_tumour: float):
    """A random crop of an image and its target, at the same place.

    The crop is centred on a random voxel of ``y[0]`` with probability ``p_tumour`` (when it has one), else
    anywhere, and shifted to lie inside the volume.

    Args:
        rng: the generator of the draws.
        x: (C, X, Y, Z) image.
        y: (R, X, Y, Z) target.
        crop: (x, y, z) crop size in voxels, clipped to the volume's shape.
        p_tumour: probability of centring on a voxel of target channel 0.

    Returns:
        (x crop (C, x, y, z), y crop (R, x, y, z)): views of the inputs, not copies.
    """
    shape = np.array(x.shape[1:])
    size = np.minimum(np.array(crop), shape)
    if rng.random() < p_tumour and y[0].any():
        pts = np.argwhere(y[0] > 0)
        c = pts[rng.integers(len(pts))]
    else:
        c = np.array([rng.integers(s) for s in shape])
    lo = np.clip(c - size // 2, 0, shape - size)
    sl = tuple(slice(a, a + s) for a, s in zip(lo, size))
    return x[(slice(None),) + sl], y[(slice(None),) + sl]


def fit(net: torch.nn.Module, data: list[tuple[np.ndarray, np.ndarray]], loss_fn: Callable, *, epochs: int,
        batch_size: int, crop, lr: float, rng: np.random.Generator, p_tumour: float = 0.7,
        intensity_aug: bool = True, on_epoch_end: Callable[[int, list[float], int], None] | None = None,
        bar=None, channels_last: bool = True) -> tuple[list[float], int]:
    """Train ``net`` in place (AdamW, weight decay 1e-5, cosine learning-rate decay over all steps).

    Args:
        net: the network, in train mode on return of every epoch hook.
        data: [(image (C, X, Y, Z) float32, target (R, X, Y, Z) float32)] held in memory.
        loss_fn: ``loss_fn(logits, target) -> scalar tensor`` on (B, R, x, y, z) batches.
        epochs: passes of ``len(data) // batch_size`` steps (at least one step).
        batch_size: crops per step.
        crop: crop size in voxels (x, y, z).
        lr: initial learning rate.
        rng: the generator of the crops, flips and intensity changes (its draws are the loop's only randomness).
        p_tumour: probability that a crop centres on a voxel of target channel 0.
        intensity_aug: random per-channel scale and shift of the crop (segmentation, not error networks).
        on_epoch_end: called as ``on_epoch_end(epoch, losses, steps_per_epoch)`` with the 1-based epoch.
        bar: an optional tqdm bar, advanced per step with the mean of the last 20 losses.
        channels_last: train in ``torch.channels_last_3d`` memory format (the network's weights and every batch),
            which sends PyTorch's CPU 3D convolutions and their gradients to oneDNN: a SegResNet (init_filters 16)
            step on two (2, 4, 48, 48, 48) crops takes 0.57 s instead of 0.67 s, on the whole 56 x 64 x 56 demo
            volume 1.0 s instead of 1.4 s (2 threads). The weights' values do not depend on it beyond float32
            summation order; checkpoints are saved contiguous.

    Returns:
        (the loss of every step, steps per epoch).
    """
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    net.to(memory_format=fmt)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-5)
    steps = max(1, len(data) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    losses: list[float] = []
    for epoch in range(epochs):
        order = rng.permutation(len(data))
        for s in range(steps):
            xs, ys = [], []
            for i in order[s * batch_size:(s + 1) * batch_size]:
                x, y = random_crop(rng, *data[i], crop, p_tumour)
                for ax in range(3):
                    if rng.random() < 0.5:
                        x, y = np.flip(x, ax + 1), np.flip(y, ax + 1)
                if intensity_aug:
                    x = x * rng.uniform(0.9, 1.1, (x.shape[0], 1, 1, 1)) + rng.uniform(-0.1, 0.1, (x.shape[0], 1, 1, 1))
                xs.append(np.ascontiguousarray(x, dtype=np.float32))
                ys.append(np.ascontiguousarray(y))
            xb, yb = torch.from_numpy(np.stack(xs)).to(memory_format=fmt), torch.from_numpy(np.stack(ys))
            loss = loss_fn(net(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, losses, steps)
    net.to(memory_format=torch.contiguous_format)
    return losses, steps
