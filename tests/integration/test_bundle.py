"""MONAI bundle folders and plain state dicts with a sidecar: card, channel / region mapping, safety, batch."""
import json
import pickle

import numpy as np
import pytest
import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import SegResNet

from core import store
from core.io.bundle import BundleError
from core.io.checkpoints import load_checkpoint
from core.io.architectures import prefer_onednn, preprocess

ARGS = {"blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 8, "in_channels": 4,
        "out_channels": 3, "dropout_prob": 0.2}
# our canonical order is t1, t1ce, t2, flair / WT, TC, ET; the bundle's is T1c, T1, T2, FLAIR / TC, WT, ET
IN_PERM = [1, 0, 2, 3]   # bundle input k = our channel IN_PERM[k]
OUT_PERM = [1, 0, 2]     # our region k = bundle output OUT_PERM[k]


def _net(seed=0):
    torch.manual_seed(seed)
    return SegResNet(spatial_dims=3, **{k: tuple(v) if isinstance(v, list) else v for k, v in ARGS.items()}).eval()


def _same_kernels(net):
    """The reference net on the kernels a loaded model uses (oneDNN convolutions on CPU, core.models.prefer_onednn),
    so that these comparisons test loading and channel/region order to 1e-6, not float summation order."""
    import copy

    return prefer_onednn(copy.deepcopy(net))


def make_bundle(root, net=None, target="SegResNet", pixdim=(1.0, 1.0, 1.0), roi=(64, 64, 64), weights=None, args=None):
    """A folder shaped like MONAI's brats_mri_segmentation bundle (configs + models/model.pt state dict)."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    meta = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.5.3", "monai_version": "1.4.0", "name": "BraTS MRI segmentation",
        "task": "Multimodal Brain Tumor segmentation",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "magnitude", "modality": "MRI", "num_channels": 4,
                                 "spatial_shape": [240, 240, 160], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True,
                                 "channel_def": {"0": "T1c", "1": "T1", "2": "T2", "3": "FLAIR"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 3,
                                 "spatial_shape": [240, 240, 160], "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True,
                                 "channel_def": {"0": "Tumor core", "1": "Whole tumor", "2": "Enhancing tumor"}}}},
    }
    inference = {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".", "output_dir": "$@bundle_root + '/eval'",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": target, **(ARGS if args is None else args)},
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": "image", "pixdim": list(pixdim), "mode": "bilinear"},
            {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True},
            {"_target_": "EnsureTyped", "keys": "image"}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(roi), "sw_batch_size": 1, "overlap": 0.5},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": True}]},
    }
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    (root / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    if weights is None:
        weights = (net or _net()).state_dict()
    torch.save(weights, root / "models" / "model.pt")
    return root


# network_def of MONAI's brats_mri_segmentation bundle (configs/inference.json)
BUNDLE_NETWORK_DEF = {"blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "init_filters": 16, "in_channels": 4,
                      "out_channels": 3, "dropout_prob": 0.2}


def test_the_demo_segresnet_is_the_bundles_network(tmp_path):
    """Issue 21: the shipped demo SegResNet has the bundle's architecture, so a bundle's weights drop in where the
    demo model's were: the demo weights, written as a bundle (the bundle's network_def, its channel and region
    order), load through the bundle path and predict what the demo checkpoint predicts."""
    from core.cli import SHIPPED_WEIGHTS
    from core.io.architectures import DEMO_MODELS, demo_weight_files

    spec_args = {k: v for k, v in DEMO_MODELS["SegResNet"]["arch_args"].items() if k != "spatial_dims"}
    assert spec_args == BUNDLE_NETWORK_DEF
    demo = load_checkpoint(SHIPPED_WEIGHTS / demo_weight_files("SegResNet")["checkpoint"])
    assert {k: v for k, v in demo.card["arch_args"].items() if k != "spatial_dims"} == BUNDLE_NETWORK_DEF
    # the demo network in the bundle's order: input channels T1c, T1, T2, FLAIR; outputs TC, WT, ET
    sd = dict(demo.model.state_dict())
    w, b = "convInit.conv.weight", "conv_final.2.conv.weight"
    sd[w] = sd[w][:, IN_PERM]  # bundle input k is our channel IN_PERM[k]
    sd[b] = sd[b][np.argsort(OUT_PERM)]  # bundle output j is our region argsort(OUT_PERM)[j]
    sd["conv_final.2.conv.bias"] = sd["conv_final.2.conv.bias"][np.argsort(OUT_PERM)]
    lm = load_checkpoint(make_bundle(tmp_path / "brats_mri_segmentation", weights=sd, args=BUNDLE_NETWORK_DEF))
    assert lm.card["arch"] == "segresnet" and lm.card["arch_args"]["init_filters"] == 16
    x = torch.randn(1, 4, 32, 32, 32)  # our channel order
    with torch.no_grad():
        torch.testing.assert_close(lm.model(x), demo.model(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("target", ["SegResNet", "monai.networks.nets.SegResNet",
                                    "monai.networks.nets.segresnet.SegResNet"])
def test_bundle_card_and_permuted_prediction(tmp_path, target):
    net = _net()
    lm = load_checkpoint(make_bundle(tmp_path / "brats_mri_segmentation", net, target=target))
    c = lm.card
    assert c["channels"] == ["t1", "t1ce", "t2", "flair"] and c["regions"] == ["WT", "TC", "ET"]
    assert c["spacing_mm"] == [1.0, 1.0, 1.0] and c["roi_size"] == [64, 64, 64]
    assert c["arch"] == "segresnet" and c["arch_args"]["init_filters"] == 8
    assert c["source"]["channels"] == ["T1c", "T1", "T2", "FLAIR"]
    assert c["source"]["regions"] == ["Tumor core", "Whole tumor", "Enhancing tumor"]
    x = torch.randn(1, 4, 32, 32, 32)  # our channel order
    with torch.no_grad():
        want = _same_kernels(net)(x[:, IN_PERM])[:, OUT_PERM]
        assert torch.allclose(lm.model(x), want, atol=1e-6)
    # through the prediction path: normalise (our order) + sliding window = the plain net in its own order
    from core.inference.uncertainty import predict

    rng = np.random.default_rng(0)
    img = np.zeros((4, 40, 36, 32), np.float32)
    img[:, 5:35, 4:32, 3:29] = rng.uniform(1, 5, (4, 30, 28, 26))
    pred = predict(lm, img, "deterministic")
    xb = preprocess(img[IN_PERM], c)
    with torch.no_grad():
        z = sliding_window_inference(xb, (64, 64, 64), 1, net, overlap=0.25, mode="gaussian")[0]
    np.testing.assert_allclose(pred.prob, torch.sigmoid(z[OUT_PERM]).numpy(), atol=1e-5)


@pytest.mark.parametrize("target", ["monai.networks.nets.SwinUNETR", "os.system", "SegResNetDS",
                                    "evil.module.SegResNet"])
def test_unknown_target_refused(tmp_path, target):
    with pytest.raises(BundleError, match="not allowed"):
        load_checkpoint(make_bundle(tmp_path / "b", target=target))


def test_expression_argument_refused(tmp_path):
    b = make_bundle(tmp_path / "b")
    cfg = json.loads((b / "configs" / "inference.json").read_text())
    cfg["network_def"]["init_filters"] = "$__import__('os').system('echo hi')"
    (b / "configs" / "inference.json").write_text(json.dumps(cfg))
    with pytest.raises(BundleError, match="expression"):
        load_checkpoint(b)


class Evil:
    """Not on torch's weights-only allow-list."""


def test_pickled_object_in_model_pt_refused(tmp_path):
    b = make_bundle(tmp_path / "b", weights={"conv.weight": Evil()})
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(b)


def test_wrong_weights_named(tmp_path):
    net = SegResNet(spatial_dims=3, init_filters=16, in_channels=4, out_channels=3)
    with pytest.raises(BundleError, match="do not fit"):
        load_checkpoint(make_bundle(tmp_path / "b", weights=net.state_dict()))


def test_state_dict_with_sidecar(tmp_path):
    net = _net(1)
    torch.save(net.state_dict(), tmp_path / "brats.pt")
    (tmp_path / "brats.json").write_text(json.dumps({
        "name": "plain", "arch": "SegResNet", "arch_args": {"spatial_dims": 3, **ARGS},
        "channels": ["t1c", "t1n", "t2w", "t2f"], "regions": ["TC", "WT", "ET"], "spacing_mm": [2, 2, 2],
        "roi_size": [32, 32, 32]}))
    lm = load_checkpoint(tmp_path / "brats.pt")
    assert lm.name == "plain" and lm.card["spacing_mm"] == [2.0, 2.0, 2.0] and lm.card["regions"] == ["WT", "TC", "ET"]
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(lm.model(x), _same_kernels(net)(x[:, IN_PERM])[:, OUT_PERM], atol=1e-6)
    # a sidecar naming an unknown modality is refused with the name in the message
    (tmp_path / "brats.json").write_text(json.dumps({
        "arch": "segresnet", "arch_args": {"spatial_dims": 3, **ARGS}, "channels": ["t1c", "t1n", "t2w", "dwi"],
        "regions": ["TC", "WT", "ET"], "spacing_mm": [2, 2, 2]}))
    with pytest.raises(BundleError, match="dwi"):
        load_checkpoint(tmp_path / "brats.pt")


def test_bundle_runs_in_batch_next_to_demo_model(tiny_cohort, tiny_checkpoints, tmp_path):
    from core.batch.pipeline import run_batch

    b = make_bundle(tmp_path / "brats_mri_segmentation", pixdim=(3.0, 3.0, 3.0), roi=(64, 64, 64))
    db = tmp_path / "r.duckdb"
    s = run_batch(tiny_cohort, db, [str(b), str(tiny_checkpoints[1])], methods=["deterministic", "mc_dropout"], T=2,
                  split="calibration", progress=False, echo=lambda *_: None, quality=False)
    assert s["failed"] == 0 and s["ok"] == 4
    con = store.connect(db, read_only=True)
    card = json.loads(con.execute("SELECT card FROM models WHERE model = 'brats_mri_segmentation'").fetchone()[0])
    assert card["source"]["kind"] == "monai_bundle"
    n = con.execute("SELECT count(*) FROM metrics WHERE model = 'brats_mri_segmentation' AND metric = 'dice'").fetchone()[0]
    assert n == 2 * 3  # 2 methods x 3 regions, 1 patient
    con.close()
    s2 = run_batch(tiny_cohort, db, [str(b), str(tiny_checkpoints[1])], methods=["deterministic", "mc_dropout"], T=2,
                   split="calibration", progress=False, echo=lambda *_: None, quality=False)
    assert s2["skipped"] == 4  # same run id: the bundle's hash is stable


def test_state_dict_with_card_in_model_spec(tmp_path):
    from core.inference.modelset import load_model_set

    net = _net(2)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    card = {"name": "from-spec", "arch": "segresnet", "arch_args": {"spatial_dims": 3, **ARGS},
            "channels": ["T1c", "T1", "T2", "FLAIR"], "regions": ["Tumor core", "Whole tumor", "Enhancing tumor"],
            "spacing_mm": [1, 1, 1]}
    ms = load_model_set({"checkpoint": str(tmp_path / "weights.pt"), "card": card})
    assert ms.name == "from-spec" and ms.card["source"]["sidecar"] == "spec"
    x = torch.randn(1, 4, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(ms.model(x), _same_kernels(net)(x[:, IN_PERM])[:, OUT_PERM], atol=1e-6)
    with pytest.raises(ValueError, match="not a tumourqa-checkpoint"):  # no card, no sidecar: refused as before
        load_model_set(str(tmp_path / "weights.pt"))
