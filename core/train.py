"""Training of the demo models: MONAI network, Dice + BCE on the three sigmoid region outputs.

Data: the training split of a BraTS-layout cohort, loaded once into memory (normalised as the model card
says). Each step takes ``batch_size`` random crops of ``crop`` voxels (centred on tumour with probability
``p_tumour``), random flips on all three axes and a random intensity scale/shift per channel.
Loss: ``monai.losses.DiceLoss(sigmoid=True)`` + ``torch.nn.BCEWithLogitsLoss`` (equal weights) on the
(B, 3, X, Y, Z) logits against WT/TC/ET targets. AdamW with cosine learning-rate decay. Deterministic
from ``seed`` on CPU.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from .cohort import discover, labels_to_regions, load_case, read_splits
from .models import build_model, make_card, preprocess, save_checkpoint


def load_training_data(cohort_dir, patient_ids, channels) -> list[tuple[np.ndarray, np.ndarray]]:
    """[(image (C,X,Y,Z) float32 normalised, regions (3,X,Y,Z) float32)] for the given patients."""
    wanted = set(patient_ids)
    card_stub = {"normalisation": "nonzero_channelwise_zscore"}
    out = []
    for files in discover(cohort_dir):
        if files.patient_id not in wanted:
            continue
        case = load_case(files, channels, require_seg=True)
        x = preprocess(case.image, card_stub)[0].numpy()
        y = labels_to_regions(case.seg, case.label_scheme).astype(np.float32)
        out.append((x, y))
    if not out:
        raise ValueError(f"no training patients found in {cohort_dir}")
    return out


def _crop(rng, x, y, crop, p_tumour):
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


def train_model(name: str, arch: str, arch_args: dict, cohort_dir, out_path, *, train_ids=None, epochs: int = 40,
                batch_size: int = 2, crop=(48, 48, 48), lr: float = 3e-3, seed: int = 0, p_tumour: float = 0.7,
                spacing_mm=(3.0, 3.0, 3.0), roi_size=(56, 64, 56), channels=("t1", "t1ce", "t2", "flair"),
                progress: bool = True, log=print) -> Path:
    """Train one model and write its checkpoint (with model card) to ``out_path``.

    ``train_ids``: patient ids to train on (default: the ``train`` split of ``splits.json``, else all).
    One epoch = one pass of ``len(train_ids)`` crops. Returns the checkpoint path.
    """
    t0 = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if train_ids is None:
        train_ids = read_splits(cohort_dir).get("train") or [c.patient_id for c in discover(cohort_dir)]
    data = load_training_data(cohort_dir, train_ids, channels)
    card = make_card(name, arch, arch_args, spacing_mm=spacing_mm, roi_size=roi_size, channels=channels,
                     training={"cohort": str(cohort_dir), "n_patients": len(data), "epochs": epochs,
                               "batch_size": batch_size, "crop": list(crop), "lr": lr, "seed": seed,
                               "loss": "DiceLoss(sigmoid) + BCEWithLogits"})
    model = build_model(card)
    model.train()
    from monai.losses import DiceLoss

    dice_loss = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
    bce = torch.nn.BCEWithLogitsLoss()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    steps_per_epoch = max(1, len(data) // batch_size)
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc=f"train {name}", unit="step")
    last = []
    for epoch in range(epochs):
        order = rng.permutation(len(data))
        for s in range(steps_per_epoch):
            xs, ys = [], []
            for i in order[s * batch_size:(s + 1) * batch_size]:
                x, y = _crop(rng, *data[i], crop, p_tumour)
                for ax in range(3):
                    if rng.random() < 0.5:
                        x, y = np.flip(x, ax + 1), np.flip(y, ax + 1)
                x = x * rng.uniform(0.9, 1.1, (x.shape[0], 1, 1, 1)) + rng.uniform(-0.1, 0.1, (x.shape[0], 1, 1, 1))
                xs.append(np.ascontiguousarray(x, dtype=np.float32))
                ys.append(np.ascontiguousarray(y))
            xb, yb = torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))
            logits = model(xb)
            loss = dice_loss(logits, yb) + bce(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            last.append(float(loss.detach()))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(last[-20:]):.3f}")
    if bar is not None:
        bar.close()
    card["training"]["final_loss"] = round(float(np.mean(last[-steps_per_epoch:])), 4)
    card["training"]["seconds"] = round(time.time() - t0, 1)
    model.eval()
    path = save_checkpoint(out_path, model, card)
    log(f"trained {name}: {epochs} epochs, loss {card['training']['final_loss']}, {card['training']['seconds']} s -> {path}")
    return path
