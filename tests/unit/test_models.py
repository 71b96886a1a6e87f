import pickle

import numpy as np
import pytest
import torch

from core.io.architectures import DEMO_MODELS, build_model, dropout_modules, make_card, prefer_onednn, preprocess
from core.io.checkpoints import load_checkpoint, save_checkpoint
from core.cli import SHIPPED_WEIGHTS, demo_checkpoint_name

CARD_KEYS = {"name", "arch", "arch_args", "channels", "regions", "output", "spacing_mm", "normalisation", "roi_size", "training"}


@pytest.mark.parametrize("name", list(DEMO_MODELS))
def test_checkpoint_roundtrip_weights_only(tmp_path, name):
    spec = DEMO_MODELS[name]
    card = make_card(name, spec["arch"], spec["arch_args"])
    torch.manual_seed(0)
    model = build_model(card).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, card)
    blob = torch.load(path, weights_only=True)  # must not need unpickling of arbitrary objects
    assert set(blob["card"]) == CARD_KEYS
    lm = load_checkpoint(path)
    assert lm.card["channels"] == ["t1", "t1ce", "t2", "flair"] and lm.card["regions"] == ["WT", "TC", "ET"]
    x = torch.randn(1, 4, 16, 16, 16)
    with torch.no_grad():
        assert torch.allclose(prefer_onednn(model)(x), lm.model(x))
    assert len(dropout_modules(lm.model)) >= 1


@pytest.mark.parametrize("name", list(DEMO_MODELS))
def test_onednn_convolutions_match_native(name):
    """prefer_onednn: same state dict, same outputs as nn.Conv3d's own kernel to float32 rounding (inference),
    and autograd still takes nn.Conv3d's path (training is untouched)."""
    spec = DEMO_MODELS[name]
    card = make_card(name, spec["arch"], spec["arch_args"])
    torch.manual_seed(0)
    native = build_model(card).eval()
    fast = prefer_onednn(build_model(card).eval())
    fast.load_state_dict(native.state_dict())
    assert list(fast.state_dict()) == list(native.state_dict())
    assert any(type(m).__name__ == "_OneDNNConv3d" for m in fast.modules())
    x = torch.randn(2, 4, 24, 32, 16)
    with torch.inference_mode():
        a, b = native(x), fast(x)
    assert a.shape == b.shape
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)
    fast.train()
    torch.manual_seed(1)
    out = fast(x)
    out.sum().backward()  # grad path: nn.Conv3d's kernel, gradients reach every conv weight
    assert all(m.weight.grad is not None for m in fast.modules() if isinstance(m, torch.nn.Conv3d))


def test_unet_has_residual_units():
    card = make_card("UNet-Res", DEMO_MODELS["UNet-Res"]["arch"], DEMO_MODELS["UNet-Res"]["arch_args"])
    assert card["arch_args"]["num_res_units"] >= 1
    m = build_model(card)
    assert any(type(x).__name__ == "ResidualUnit" for x in m.modules())


def test_rejects_foreign_checkpoint(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a tumourqa-checkpoint"):
        load_checkpoint(tmp_path / "x.pt")


class Evil:
    """Any class outside torch's allow-list: weights_only loading must refuse to build it."""


def test_rejects_pickled_objects(tmp_path):
    torch.save({"format": "tumourqa-checkpoint/1", "card": Evil(), "state_dict": {}}, tmp_path / "evil.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tmp_path / "evil.pt")


def test_preprocess_nonzero_zscore():
    img = np.zeros((4, 6, 6, 6), np.float32)
    img[:, 1:5, 1:5, 1:5] = np.random.default_rng(0).uniform(10, 20, (4, 4, 4, 4))
    x = preprocess(img, {"normalisation": "nonzero_channelwise_zscore"})[0].numpy()
    assert x.shape == img.shape
    inside = img[0] != 0
    for c in range(4):
        assert abs(x[c][inside].mean()) < 1e-5 and abs(x[c][inside].std() - 1) < 1e-3
        assert (x[c][~inside] == 0).all()


@pytest.mark.parametrize("name", list(DEMO_MODELS))
def test_shipped_weights_load(name):
    """Every demo model ships with all of its parts (snapshots, ensemble members, auxiliary network)."""
    from core.inference.modelset import demo_model_spec, load_model_set
    from core.io.architectures import demo_weight_files

    files = demo_weight_files(name)
    for f in [files["checkpoint"], *files["snapshots"], *files["ensemble"]] + ([files["auxiliary"]] if files["auxiliary"] else []):
        assert (SHIPPED_WEIGHTS / f).exists(), f"{f} is not shipped"
    ms = load_model_set(demo_model_spec(name, SHIPPED_WEIGHTS))
    spec = DEMO_MODELS[name]
    assert ms.name == name and ms.card["training"]["epochs"] >= 1
    assert len(ms.snapshots) == len(spec.get("snapshots", [])) and len(ms.ensemble) == len(spec.get("ensemble", []))
    assert [s.card["training"]["snapshot_epoch"] for s in ms.snapshots] == spec.get("snapshots", [])
    seeds = {ms.card["training"]["seed"]} | {m.card["training"]["seed"] for m in ms.ensemble}
    assert len(seeds) == 1 + len(ms.ensemble), "ensemble members are independently seeded"
    assert (ms.auxiliary is not None) == bool(spec.get("auxiliary"))
    if ms.auxiliary is not None:
        assert ms.auxiliary.card["for_model"] == name
