"""Training of the demo models: MONAI network, Dice + BCE on the three sigmoid region outputs.

Data: the training split of a BraTS-layout cohort, loaded once into memory (normalised as the model card
says). Each step takes ``batch_size`` random crops of ``crop`` voxels (centred on tumour with probability
``p_tumour``), random flips on all three axes and a random intensity scale/shift per channel.
Loss: ``monai.losses.DiceLoss(sigmoid=True)`` + ``torch.nn.BCEWithLogitsLoss`` (equal weights) on the
(B, 3, X, Y, Z) logits against WT/TC/ET targets, optionally + ``calibration_weight`` x mL1-ACE (paper 004,
:func:`ml1_ace_loss`, hard- or soft-binned). AdamW with cosine learning-rate decay. Deterministic from
``seed`` on CPU.

Ensembles and snapshots: ``subset_fraction`` < 1 trains on a random subset of the training ids (drawn
from ``seed``; deep-ensemble members differ in seed and subset); ``snapshot_epochs`` writes extra
checkpoints ``<out>_snap<E>.pt`` at the end of those epochs of the same run (checkpoint ensemble, paper 003).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from core.io.architectures import DEMO_VOLUME, build_model, make_card, preprocess
from core.io.checkpoints import save_checkpoint
from core.io.cohort import discover, labels_to_regions, load_case, read_splits
from core.training.loop import fit

def load_training_data(cohort_dir, patient_ids, channels) -> list[tuple[np.ndarray, np.ndarray]]:
    """The training pairs of the given patients, loaded into memory.

    Args:
        cohort_dir: BraTS-layout folder.
        patient_ids: the patients to load (each needs ground truth).
        channels: the modality order of the image channels.

    Returns:
        [(image (C, X, Y, Z) float32, non-zero channel-wise z-score normalised; regions (3, X, Y, Z) float32
        WT, TC, ET in {0, 1})], in sorted patient order.

    Raises:
        ValueError: when none of the patients is in the cohort.
        core.io.cohort.CaseError: when a listed patient does not load or has no ground truth.
    """
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


def ml1_ace_loss(logits: torch.Tensor, target: torch.Tensor, n_bins: int = 20, soft: bool = False,
                 empty_weight: float = 0.01, ignore_empty_classes: bool = True) -> torch.Tensor:
    """Marginal L1 average calibration error (mL1-ACE, paper 004), differentiable, per image and region.

    The definition of the authors' reference implementation (cai4cai/Average-Calibration-Losses,
    ``HardL1ACELoss`` / ``SoftL1ACELoss`` with their defaults; read, re-implemented and checked against it):
    for each image b and region r the sigmoid probabilities are binned into ``n_bins`` equal-width bins
    (edges ``linspace(0, 1 + eps32, n_bins + 1)``, right-closed: p in (e_k, e_k+1] is bin k, p = 0 is bin 0);
    per bin the gap is |mean p - mean y| (weighted means over the bin's voxels); ACE_{b,r} = mean gap over the
    non-empty bins; ACE_{b,r} = 0 where region r of image b has no positive voxel (``ignore_empty_classes``: a
    crop without the region teaches nothing about its calibration); the loss is the mean of ACE_{b,r} over all
    images and regions, the zeroed ones included (the reference's ``reduction="mean"``), in [0, 1].

    * hard binning (``soft=False``): a bin is non-empty when it holds a voxel; the assignment carries no
      gradient, the bin means of p do.
    * soft binning (``soft=True``): with the bin centres c_k (the odd points of
      ``linspace(0, 1 + eps32, 2 n_bins + 1)``), a voxel between two centres c_k < p <= c_k+1 gives weight
      (c_k+1 - p) / (c_k+1 - c_k) to bin k and the rest to bin k + 1 (the triangular kernel, differentiable
      through the weights); a voxel below c_0 or above c_(n-1) gives its whole weight 1 to the edge bin (as the
      reference does: no weight is lost at p near 0 or 1, where most voxels lie). A bin is non-empty when its
      total weight is >= ``empty_weight`` (the reference's 0.01). Two scatter-adds per sum: O(N) memory.

    Args:
        logits: (B, R, X, Y, Z) logits.
        target: (B, R, X, Y, Z) targets in {0, 1}.
        n_bins: equal-width bins on [0, 1].
        soft: soft (triangular-kernel) instead of hard binning.
        empty_weight: the total weight below which a soft bin counts as empty.
        ignore_empty_classes: ACE_{b,r} = 0 where the target of (b, r) is empty.

    Returns:
        scalar float32 tensor in [0, 1] (the mean of ACE_{b,r}).
    """
    p = torch.sigmoid(logits.float()).flatten(2)  # (B, R, N)
    y = target.float().flatten(2)
    eps = torch.finfo(torch.float32).eps
    zeros = torch.zeros(*p.shape[:2], n_bins, device=p.device, dtype=p.dtype)
    if soft:
        centres = torch.linspace(0.0, 1.0 + eps, 2 * n_bins + 1, device=p.device)[1::2].contiguous().to(p.dtype)  # (n_bins,)
        j = torch.bucketize(p.detach(), centres, right=False)  # c_(j-1) < p <= c_j; 0 below c_0, n above c_(n-1)
        lo, hi = (j - 1).clamp(0, n_bins - 1), j.clamp(0, n_bins - 1)
        inner = (j > 0) & (j < n_bins)
        c_lo, c_hi = centres[lo], centres[hi]
        w_hi = torch.where(inner, (p - c_lo) / torch.where(inner, c_hi - c_lo, torch.ones_like(c_hi)), torch.ones_like(p))
        parts = ((lo, 1 - w_hi), (hi, w_hi))  # at the edges lo == hi and the weights sum to 1 in one bin
        cnt = sum(zeros.scatter_add(2, i, w) for i, w in parts)
        sp = sum(zeros.scatter_add(2, i, w * p) for i, w in parts)
        sy = sum(zeros.scatter_add(2, i, w * y) for i, w in parts)
        nonempty = cnt >= empty_weight
    else:
        edges = torch.linspace(0.0, 1.0 + eps, n_bins + 1, device=p.device)[1:].to(p.dtype)
        idx = torch.bucketize(p.detach(), edges, right=False).clamp_(0, n_bins - 1)
        cnt = zeros.scatter_add(2, idx, torch.ones_like(p))
        sp, sy = zeros.scatter_add(2, idx, p), zeros.scatter_add(2, idx, y)
        nonempty = cnt > 0
    gap = (sp - sy).abs() / torch.where(nonempty, cnt, torch.ones_like(cnt))
    ace = (gap * nonempty).sum(-1) / nonempty.sum(-1).clamp(min=1)
    if ignore_empty_classes:
        ace = ace * (y.sum(-1) > 0)
    return ace.mean()


def output_layer(model: torch.nn.Module, n_out: int) -> torch.nn.Module:
    """The network's last convolution with ``n_out`` output channels and a bias (its output layer).

    Raises:
        ValueError: when the network has none.
    """
    convs = [m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)
             and m.out_channels == n_out and m.bias is not None]
    if not convs:
        raise ValueError(f"no convolution with {n_out} output channels and a bias in {type(model).__name__}")
    return convs[-1]


def init_prior_bias(model: torch.nn.Module, data: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Set the output layer's bias to the log-odds of each region's voxel share in the training data.

    The demo SegResNet's head is GroupNorm -> ReLU -> 1x1 convolution, so every logit is
    ``bias + sum_c w_c * relu(f_c)`` with ``relu(f_c) >= 0``. From a zero bias the first steps of BCE on the rare
    regions (TC ~0.5 %, ET ~0.4 % of the voxels) push the TC / ET weights negative on every channel; once all
    eight weights of a region were negative (the first demo SegResNet: TC and ET) its probability can never
    exceed sigmoid(bias): 0.608 for TC, 0.461 for ET on every patient. Starting at the prior (logit of the
    share, about -5 for TC) the background costs nothing at step 0 and the gradient goes to the features that
    raise the logit on tumour (the prior initialisation of Lin et al., focal loss, 2017).

    Args:
        model: the network (its output layer is found by :func:`output_layer`).
        data: [(image (C, X, Y, Z), target (R, X, Y, Z) in {0, 1})].

    Returns:
        (R,) the bias set (float64).
    """
    pos = sum(y.reshape(y.shape[0], -1).sum(1, dtype=np.float64) for _, y in data)
    tot = sum(y[0].size for _, y in data)
    share = np.clip(pos / tot, 1e-6, 1 - 1e-6)
    bias = np.log(share / (1 - share))
    with torch.no_grad():
        output_layer(model, len(bias)).bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return bias


def snapshot_path(out_path, epoch: int) -> Path:
    """The snapshot checkpoint of ``out_path`` after ``epoch``: ``weights/x.pt``, 40 -> ``weights/x_snap40.pt``."""
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}_snap{epoch}{out_path.suffix}")


def train_model(name: str, arch: str, arch_args: dict, cohort_dir, out_path, *, train_ids=None, epochs: int = 40,
                batch_size: int = 2, crop=(48, 48, 48), lr: float = 3e-3, seed: int = 0, p_tumour: float = 0.7,
                spacing_mm=(3.0, 3.0, 3.0), roi_size=DEMO_VOLUME, channels=("t1", "t1ce", "t2", "flair"),
                subset_fraction: float = 1.0, snapshot_epochs=(), calibration_loss: str | None = None,
                calibration_weight: float = 1.0, dice_batch: bool = False, prior_bias: bool = False, progress: bool = True, log=print) -> Path:
    """Train one model and write its checkpoint (with model card) to ``out_path``.

    One epoch = one pass of ``len(train_ids)`` crops. The loss is Dice + BCE on the region logits, plus
    ``calibration_weight`` x mL1-ACE (:func:`ml1_ace_loss`) with ``calibration_loss``.

    Args:
        name: the model's name (in its card).
        arch: the architecture name (:func:`core.io.architectures.build_model`).
        arch_args: the architecture's arguments.
        cohort_dir: BraTS-layout folder.
        out_path: the checkpoint file to write.
        train_ids: patient ids to train on (default: the ``train`` split of ``splits.json``, else all).
        epochs: passes over the training patients.
        batch_size: crops per step.
        crop: crop size in voxels (X, Y, Z).
        lr: initial learning rate (AdamW, cosine decay).
        seed: seed of torch, of the crops' generator and of the subset draw.
        p_tumour: probability that a crop centres on a tumour (WT) voxel.
        spacing_mm: the card's voxel spacing (mm).
        roi_size: the card's sliding-window size in voxels.
        channels: the modality order of the input channels.
        subset_fraction: train on that share of ``train_ids`` (at least 2 patients), drawn with ``seed``.
        snapshot_epochs: 1-based epochs after which a snapshot checkpoint ``<stem>_snap<E><suffix>`` is also
            written (:func:`snapshot_path`; not for the last epoch, whose checkpoint is ``out_path``).
        calibration_loss: None, ``"hard"`` or ``"soft"`` (mL1-ACE added with ``calibration_weight``).
        calibration_weight: the weight of the mL1-ACE term.
        dice_batch: Dice over the whole batch per region (``DiceLoss(batch=True)``) instead of per crop: a crop
            without enhancing tumour then does not push the ET output to zero everywhere on its own.
        prior_bias: start the output layer's bias at each region's log-odds (:func:`init_prior_bias`).
        progress: show a progress bar.
        log: where the final message goes.

    Returns:
        the checkpoint path.

    Raises:
        ValueError: for an unknown ``calibration_loss``, or when no training patient is found.
    """
    if calibration_loss not in (None, "hard", "soft"):
        raise ValueError(f"calibration_loss must be None, 'hard' or 'soft', not {calibration_loss!r}")
    t0 = time.time()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if train_ids is None:
        train_ids = read_splits(cohort_dir).get("train") or [c.patient_id for c in discover(cohort_dir)]
    train_ids = sorted(train_ids)
    if subset_fraction < 1.0:
        k = max(2, int(round(subset_fraction * len(train_ids))))
        train_ids = sorted(np.random.default_rng(seed + 10_000).choice(train_ids, k, replace=False).tolist())
    data = load_training_data(cohort_dir, train_ids, channels)
    loss_name = f"DiceLoss(sigmoid{', batch' if dice_batch else ''}) + BCEWithLogits"
    if calibration_loss:
        loss_name += f" + {calibration_weight:g} x mL1-ACE({calibration_loss})"
    card = make_card(name, arch, arch_args, spacing_mm=spacing_mm, roi_size=roi_size, channels=channels,
                     training={"cohort": str(cohort_dir), "n_patients": len(data), "epochs": epochs,
                               "batch_size": batch_size, "crop": list(crop), "lr": lr, "seed": seed,
                               "loss": loss_name, "subset_fraction": subset_fraction,
                               "train_ids": list(train_ids), "prior_bias": bool(prior_bias)})
    model = build_model(card)
    if prior_bias:
        card["training"]["initial_bias"] = [round(float(b), 4) for b in init_prior_bias(model, data)]
    model.train()
    from monai.losses import DiceLoss

    dice_loss = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=dice_batch)
    bce = torch.nn.BCEWithLogitsLoss()

    def loss_fn(logits, yb):
        loss = dice_loss(logits, yb) + bce(logits, yb)
        if calibration_loss:
            loss = loss + calibration_weight * ml1_ace_loss(logits, yb, soft=calibration_loss == "soft")
        return loss

    def snapshot(epoch: int, losses: list[float], steps: int) -> None:
        if epoch in snapshot_epochs and epoch < epochs:
            snap_card = {**card, "training": {**card["training"], "snapshot_epoch": epoch,
                                              "final_loss": round(float(np.mean(losses[-steps:])), 4)}}
            model.eval()
            save_checkpoint(snapshot_path(out_path, epoch), model, snap_card)
            model.train()

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs * max(1, len(data) // batch_size), desc=f"train {name}", unit="step")
    last, steps_per_epoch = fit(model, data, loss_fn, epochs=epochs, batch_size=batch_size, crop=crop, lr=lr, rng=rng,
                                p_tumour=p_tumour, on_epoch_end=snapshot, bar=bar)
    if bar is not None:
        bar.close()
    card["training"]["final_loss"] = round(float(np.mean(last[-steps_per_epoch:])), 4)
    card["training"]["seconds"] = round(time.time() - t0, 1)
    model.eval()
    path = save_checkpoint(out_path, model, card)
    log(f"trained {name}: {epochs} epochs, loss {card['training']['final_loss']}, {card['training']['seconds']} s -> {path}")
    return path
