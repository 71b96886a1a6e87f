"""Auxiliary error network (paper 002, "auxiliary segm."): predicts where a trained model is wrong.

Input: the model's normalised image channels (C) and its deterministic region probabilities (R), i.e.
(1, C + R, X, Y, Z). Target: the model's voxel errors per region, e_r = [p_r >= 0.5] != y_r. Output: R
error logits; q = sigmoid. Network: a small MONAI UNet with residual units. Trained on the calibration
split (patients the segmentation model never saw, so its errors there are realistic), with random crops
and flips, BCE + Dice on the error maps. The method ``auxiliary`` (:mod:`core.inference.uncertainty`) turns q into a
confidence as paper 002 does: p = y (1 - q/2) + (1 - y) q/2, y the model's binary prediction.

The checkpoint is one of ours (model card with ``role = "auxiliary"``, ``for_model``, ``for_sha256``).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from core.inference.forward import deterministic_logits
from core.inference.modelset import as_model_set
from core.io.architectures import build_model, make_card, preprocess
from core.io.checkpoints import save_checkpoint
from core.io.cohort import discover, labels_to_regions, load_case, read_splits
from core.io.hashing import file_sha256
from core.training.loop import fit


AUX_ARGS = {"spatial_dims": 3, "out_channels": 3, "channels": [8, 16, 32], "strides": [2, 2], "num_res_units": 1}


def error_training_data(model, cohort_dir, patient_ids) -> list[tuple[np.ndarray, np.ndarray]]:
    """The auxiliary network's training pairs: the model's inputs and its voxel errors, one pair per patient.

    Args:
        model: the segmentation model (ModelSet or LoadedModel), run deterministically on each patient.
        cohort_dir: BraTS-layout folder.
        patient_ids: the patients to use (each needs ground truth).

    Returns:
        [(input (C+R, X, Y, Z) float32: normalised channels and region probabilities, errors (R, X, Y, Z)
        float32 in {0, 1}: [p_r >= 0.5] != y_r)], in sorted patient order.

    Raises:
        ValueError: when none of the patients is in the cohort.
        core.io.cohort.CaseError: when a listed patient does not load or has no ground truth.
    """

    ms = as_model_set(model)
    wanted = set(patient_ids)
    out = []
    for files in discover(cohort_dir):
        if files.patient_id not in wanted:
            continue
        case = load_case(files, ms.card["channels"], require_seg=True)
        z = deterministic_logits(ms, case.image)
        p = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
        truth = labels_to_regions(case.seg, case.label_scheme)
        err = ((p >= 0.5) != truth).astype(np.float32)
        x = preprocess(case.image, ms.card)[0].numpy()
        out.append((np.concatenate([x, p.astype(np.float32)]), err))
    if not out:
        raise ValueError(f"no patients with ground truth for the auxiliary network in {cohort_dir}")
    return out


def train_auxiliary(model, cohort_dir, out_path, *, patient_ids=None, epochs: int = 80, batch_size: int = 2,
                    crop=(48, 48, 48), lr: float = 3e-3, seed: int = 0, log=print) -> Path:
    """Train the auxiliary error network of ``model`` and save it to ``out_path``.

    One epoch = one crop per patient. The loss is BCE + Dice (sigmoid) on the model's voxel errors; crops
    centre on an error voxel of region 0 (WT) with probability 0.7; no intensity augmentation.

    Args:
        model: the segmentation model (ModelSet or LoadedModel).
        cohort_dir: BraTS-layout folder.
        out_path: the checkpoint file to write.
        patient_ids: the patients to train on (default: the ``calibration`` split of ``splits.json``).
        epochs: passes over the patients.
        batch_size: crops per step.
        crop: crop size in voxels (X, Y, Z).
        lr: initial learning rate (AdamW, cosine decay).
        seed: seed of torch and of the crops' generator.
        log: where the final message goes.

    Returns:
        the checkpoint path (model card with ``role = "auxiliary"``, ``for_model``, ``for_sha256``).

    Raises:
        ValueError: when there is no calibration split (and no ``patient_ids``), or no usable patient.
    """

    ms = as_model_set(model)
    t0 = time.time()
    if patient_ids is None:
        patient_ids = read_splits(cohort_dir).get("calibration")
        if not patient_ids:
            raise ValueError(f"{cohort_dir}: splits.json has no calibration split to train the auxiliary network on")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = error_training_data(ms, cohort_dir, patient_ids)
    card_p = ms.card
    n_regions = len(card_p["regions"])
    args = {**AUX_ARGS, "in_channels": len(card_p["channels"]) + n_regions, "out_channels": n_regions}
    card = make_card(f"{ms.name} auxiliary", "unet_res", args, spacing_mm=card_p["spacing_mm"],
                     roi_size=card_p["roi_size"], channels=card_p["channels"],
                     training={"cohort": str(cohort_dir), "patients": sorted(patient_ids), "epochs": epochs,
                               "batch_size": batch_size, "crop": list(crop), "lr": lr, "seed": seed,
                               "loss": "BCEWithLogits + DiceLoss(sigmoid) on the model's voxel errors"})
    card.update({"role": "auxiliary", "for_model": ms.name, "for_sha256": file_sha256(ms.path),
                 "regions": list(card_p["regions"])})
    net = build_model(card)
    net.train()
    from monai.losses import DiceLoss

    dice_loss = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)
    bce = torch.nn.BCEWithLogitsLoss()
    # crops centre on errors (target channel 0: WT errors) as often as training crops centre on tumour
    losses, steps = fit(net, data, lambda logits, yb: bce(logits, yb) + dice_loss(logits, yb), epochs=epochs,
                        batch_size=batch_size, crop=crop, lr=lr, rng=rng, p_tumour=0.7, intensity_aug=False)
    card["training"]["final_loss"] = round(float(np.mean(losses[-steps * 5:])), 4)
    card["training"]["seconds"] = round(time.time() - t0, 1)
    net.eval()
    path = save_checkpoint(out_path, net, card)
    log(f"trained auxiliary network of {ms.name}: loss {card['training']['final_loss']}, "
        f"{card['training']['seconds']} s -> {path}")
    return path
