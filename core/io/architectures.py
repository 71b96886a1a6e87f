"""Networks: MONAI architectures by name, model cards, the demo models, preprocessing and CPU fast paths."""
from __future__ import annotations

import torch
from monai.networks.nets import SegResNet, UNet


ARCHITECTURES = {
    "segresnet": SegResNet,
    "unet_res": UNet,
}


# Demo models: small enough to train and run on 2 CPU cores at 3 mm. ``snapshots``: extra checkpoints of the
# same run (checkpoint ensemble = snapshots + final); ``ensemble``: extra independently trained members
# (deep ensemble = primary + these), each with its own seed and training subset; ``auxiliary``: whether the
# demo trains an auxiliary error network (paper 002) for the model; ``demo_methods``: the methods the demo runs
# for this model (default: all of ``uncertainty.DEMO_METHODS`` it can run).
#
# Recipe (issue 21, the UNet-Res models): train on the whole 56 x 64 x 56 demo volume (the one window they are
# evaluated on, so no crop/inference mismatch) with the Dice term taken over the batch (``dice_batch``). Against
# 48^3 crops with per-crop Dice, same epochs and seed, UNet-Res's test Dice (per region, p >= 0.5) went
# 0.800 / 0.695 / 0.578 -> 0.829 / 0.793 / 0.688 (WT / TC / ET). The demo SegResNet is to move to the architecture of
# MONAI's ``brats_mri_segmentation`` bundle (the same arguments with init_filters 16).
_UNET_RES_ARGS = {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "channels": [16, 32, 64, 128],
                  "strides": [2, 2, 2], "num_res_units": 1, "dropout": 0.1}
DEMO_VOLUME = (56, 64, 56)  # the demo cohort's grid (core.io.demo_cohort.DEMO_SHAPE): the sliding-window size and crop
_RECIPE = {"crop": DEMO_VOLUME, "dice_batch": True}


DEMO_MODELS = {
    "SegResNet": {
        # the architecture of MONAI's brats_mri_segmentation bundle (a downloaded bundle drops in where this model
        # was), the whole-volume recipe above, and the output bias started at each region's log-odds
        # (``prior_bias``, core.training.segmentation.init_prior_bias: without it the first demo SegResNet's TC / ET
        # head weights all went negative and its probabilities never passed sigmoid(bias) = 0.61 / 0.46)
        "arch": "segresnet",
        "arch_args": {"spatial_dims": 3, "in_channels": 4, "out_channels": 3, "init_filters": 16,
                      "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2},
        "train": {"epochs": 60, "lr": 3e-3, "seed": 1, "prior_bias": True, **_RECIPE},
        "snapshots": [40, 50],
        "ensemble": [{"seed": 2}, {"seed": 3}],
        "auxiliary": True,
        # every method but checkpoint_ensemble+tta+ts (24 passes of 0.2 s per patient on 2 CPU threads: ~4 min of
        # the demo on its own); `--methods` and tests/system/test_claims.py run it
        "demo_methods": ["deterministic", "deterministic+ts", "mc_dropout", "tta", "ensemble", "checkpoint_ensemble",
                         "auxiliary"],
    },
    "UNet-Res": {
        "arch": "unet_res",
        "arch_args": _UNET_RES_ARGS,
        "train": {"epochs": 60, "lr": 3e-3, "seed": 1, **_RECIPE},
        "snapshots": [40, 50],
        # members on the whole train split (seed only): on a random 80 % (22 patients) the deep ensemble lost
        # 0.028 / 0.066 / 0.039 mean Dice against the primary (issue 21, item 3)
        "ensemble": [{"seed": 2}, {"seed": 3}],
        "auxiliary": True,
    },
    "UNet-Res-ACE": {
        "arch": "unet_res",
        "arch_args": _UNET_RES_ARGS,
        "train": {"epochs": 60, "lr": 3e-3, "seed": 1, "calibration_loss": "soft", "calibration_weight": 1.0, **_RECIPE},
        "demo_methods": ["deterministic", "deterministic+ts", "mc_dropout"],
    },
}


def demo_weight_files(name: str) -> dict:
    """File names (in ``weights/``) of a demo model's primary, snapshots, ensemble members and auxiliary net."""
    spec = DEMO_MODELS[name]
    stem = name.lower().replace("-", "_") + "_demo"
    return {
        "checkpoint": f"{stem}.pt",
        "snapshots": [f"{stem}_snap{e}.pt" for e in spec.get("snapshots", [])],
        "ensemble": [f"{stem}_ens{m['seed']}.pt" for m in spec.get("ensemble", [])],
        "auxiliary": f"{stem}_aux.pt" if spec.get("auxiliary") else None,
    }


def make_card(name: str, arch: str, arch_args: dict, spacing_mm=(3.0, 3.0, 3.0), roi_size=DEMO_VOLUME,
              channels=("t1", "t1ce", "t2", "flair"), training: dict | None = None) -> dict:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    return {
        "name": name,
        "arch": arch,
        "arch_args": dict(arch_args),
        "channels": list(channels),
        "regions": ["WT", "TC", "ET"],
        "output": "sigmoid",
        "spacing_mm": [float(s) for s in spacing_mm],
        "normalisation": "nonzero_channelwise_zscore",
        "roi_size": [int(r) for r in roi_size],
        "training": dict(training or {}),
    }


def build_model(card: dict) -> torch.nn.Module:
    """Instantiate the MONAI network described by ``card`` (weights random)."""
    args = dict(card["arch_args"])
    for k in ("blocks_down", "blocks_up", "channels", "strides"):
        if k in args:
            args[k] = tuple(args[k])
    return ARCHITECTURES[card["arch"]](**args)


def network_stride(card: dict) -> int:
    """The network's total down-sampling factor per axis (its coarsest feature grid, in input voxels): UNet the
    product of its strides, SegResNet 2 ** (len(blocks_down) - 1); 1 for anything else."""
    args = card.get("arch_args", {})
    if card.get("arch") == "unet_res":
        out = 1
        for s in args.get("strides", ()):
            out *= int(s) if not isinstance(s, (list, tuple)) else max(int(v) for v in s)
        return out
    if card.get("arch") == "segresnet":
        return 2 ** (len(args.get("blocks_down", (1, 2, 2, 4))) - 1)
    return 1


class _OneDNNConv3d(torch.nn.Conv3d):
    """``nn.Conv3d`` that calls oneDNN (``aten::mkldnn_convolution``) directly for CPU float32 inference.

    On CPU PyTorch 2.13 sends a batch-1 3D convolution of these small networks to its native
    ``slow_conv3d`` (im2col + GEMM) kernel, which is 4-5x slower than oneDNN for the same layer (one
    sliding-window pass of the demo UNet-Res on one thread: 0.93 s -> 0.23 s; SegResNet 2.86 s -> 0.79 s).
    Same weights, same state-dict keys (only the instance's class changes); results differ from the native
    kernel by float32 summation order (max abs logit difference ~2e-5). Everything else (a CUDA tensor,
    autocast, autograd, string or non-zero padding modes, oneDNN unavailable) takes ``nn.Conv3d``'s path."""

    def _conv_forward(self, input, weight, bias):
        if (input.device.type == "cpu" and input.dtype == torch.float32 and weight.dtype == torch.float32
                and self.padding_mode == "zeros" and not isinstance(self.padding, str)
                and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
                and not torch.is_autocast_enabled("cpu")
                and not (torch.is_grad_enabled() and (weight.requires_grad or input.requires_grad))):
            return torch.ops.aten.mkldnn_convolution(input.contiguous(), weight.contiguous(), bias,
                                                     self.padding, self.stride, self.dilation, self.groups)
        return super()._conv_forward(input, weight, bias)


def prefer_onednn(model: torch.nn.Module) -> torch.nn.Module:
    """Make every plain ``nn.Conv3d`` of ``model`` a :class:`_OneDNNConv3d` (in place; returns ``model``)."""
    for m in model.modules():
        if type(m) is torch.nn.Conv3d:
            m.__class__ = _OneDNNConv3d
    return model


def dropout_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """Active dropout layers (p > 0) of a network (torch ``_DropoutNd``: Dropout, Dropout2d/3d, AlphaDropout...)."""
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]


def preprocess(image, card: dict) -> torch.Tensor:
    """(C, X, Y, Z) float array -> (1, C, X, Y, Z) float32 tensor normalised as the card says.

    ``nonzero_channelwise_zscore``: per channel, subtract the mean and divide by the std of the non-zero
    voxels; zero (background) voxels stay 0 (MONAI ``NormalizeIntensity(nonzero=True, channel_wise=True)``).
    """
    from monai.transforms import NormalizeIntensity

    if card.get("normalisation") != "nonzero_channelwise_zscore":
        raise ValueError(f"unsupported normalisation {card.get('normalisation')!r}")
    x = torch.as_tensor(image, dtype=torch.float32)
    x = NormalizeIntensity(nonzero=True, channel_wise=True)(x)
    if hasattr(x, "as_tensor"):  # MONAI MetaTensor -> plain tensor
        x = x.as_tensor()
    return x.unsqueeze(0).contiguous()
