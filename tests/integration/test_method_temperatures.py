"""+ts is fitted for the method it is applied to (issue 20, item 6): post-hoc scaling of the method's own output.

Three diverse, over-sharp members: the former rule (the primary's deterministic temperature applied to every
member before averaging) raises the ensemble's ECE; the temperature fitted on the ensemble's own output
(logit of the mean probability) lowers it, through the same ``predict`` the batch runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from core.batch.plan import base_method, method_logits
from core.inference.modelset import ModelSet
from core.inference.temperature import fit_temperature
from core.inference.uncertainty import method_temperature, predict
from core.io.checkpoints import LoadedModel
from core.metrics.calibration import calibration_bins, calibration_from_bins

SHAPE = (40, 40, 40)
CARD = {"name": "fixed", "channels": ["t1"], "regions": ["WT"], "roi_size": list(SHAPE),
        "normalisation": "nonzero_channelwise_zscore", "spacing_mm": [1, 1, 1]}


class FixedLogits(torch.nn.Module):
    """A 'network' whose output is a fixed (1, X, Y, Z) logit volume whatever the input (one window)."""

    def __init__(self, z: np.ndarray):
        super().__init__()
        self.register_buffer("z", torch.as_tensor(z, dtype=torch.float32)[None, None])
        self.dummy = torch.nn.Parameter(torch.zeros(1))  # predict() asks the model for its device

    def forward(self, x):
        return self.z.expand(x.shape[0], -1, -1, -1, -1).clone()


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def _patient(rng, k=2.0, sd=1.5):
    """Truth y ~ Bernoulli(sigmoid(s)); member i's logits k (s + e_i): over-sharp (k > 1) and diverse (e_i)."""
    s = rng.normal(-2.0, 3.0, SHAPE)
    y = rng.random(SHAPE) < _sigmoid(s)
    members = [k * (s + rng.normal(0.0, sd, SHAPE)) for _ in range(3)]
    ms = ModelSet(primary=LoadedModel(FixedLogits(members[0]), CARD, "p.pt"),
                  ensemble=[LoadedModel(FixedLogits(z), CARD, f"e{i}.pt") for i, z in enumerate(members[1:])])
    return ms, np.stack(members), y


def _ece(p, y):
    return calibration_from_bins(*calibration_bins(p.ravel(), y.ravel()))["ece"]


def test_ensemble_ts_uses_the_ensembles_own_temperature():
    rng = np.random.default_rng(0)
    cal, cal_z, cal_y = _patient(rng)
    test, test_z, test_y = _patient(rng)
    image = np.ones((1, *SHAPE), np.float32)
    assert base_method("checkpoint_ensemble+tta+ts") == "checkpoint_ensemble+tta"
    # the fit's input: logit of the mean probability, computed in log space (finite where the mean rounds to 1)
    z_cal = method_logits(cal, "ensemble+ts", image)
    ref = np.log(_sigmoid(cal_z.astype(np.float64)).mean(0)) - np.log(_sigmoid(-cal_z.astype(np.float64)).mean(0))
    assert np.isfinite(z_cal).all() and np.abs(z_cal[0] - ref).max() < 1e-3
    t_ens = fit_temperature(z_cal, cal_y)["temperature"]
    t_det = fit_temperature(method_logits(cal, "deterministic+ts", image), cal_y)["temperature"]
    assert t_det > t_ens > 1  # one over-sharp member needs more softening than their (already softer) mean

    ece_none = _ece(predict(test, image, "ensemble", mc_batch=1).prob, test_y)
    # the former rule: the primary's deterministic temperature on every member, then the mean
    ece_former = _ece(_sigmoid(test_z / t_det).mean(0), test_y)
    test.temperature = {"ensemble+ts": np.array([t_ens], np.float32)}
    pred = predict(test, image, "ensemble+ts", mc_batch=1)
    ece_own = _ece(pred.prob, test_y)
    print(f"ensemble ECE: none {ece_none:.4f}, former rule (T_det {t_det:.2f} per member) {ece_former:.4f}, "
          f"own temperature (T {t_ens:.2f} on the mean) {ece_own:.4f}")
    assert ece_former > ece_none  # the bug: the deterministic temperature made the ensemble worse
    assert ece_own < ece_none - 0.01
    # post-hoc on the mean: p_ts = sigmoid(logit(mean p) / T); the segmentation (p >= 0.5) is the ensemble's
    plain = predict(test, image, "ensemble", mc_batch=1)
    p_mean = _sigmoid(test_z.astype(np.float64)).mean(0)
    assert np.abs(pred.prob[0] - _sigmoid(np.log(p_mean / (1 - p_mean)) / t_ens)).max() < 1e-4
    assert ((pred.prob >= 0.5) == (plain.prob >= 0.5)).all()
    assert pred.mi is not None and (pred.mi <= pred.entropy + 1e-7).all()
    np.testing.assert_array_equal(pred.sample_volumes, plain.sample_volumes)


def test_deterministic_ts_is_unchanged_and_temperatures_are_per_method():
    """For one pass the post-hoc rule is sigmoid(z / T) exactly (the stored deterministic+ts numbers do not move);
    a method without its own temperature is refused."""
    rng = np.random.default_rng(1)
    ms, z, _ = _patient(rng)
    image = np.ones((1, *SHAPE), np.float32)
    ms.temperature = {"deterministic+ts": np.array([1.7], np.float32)}
    p = predict(ms, image, "deterministic+ts", mc_batch=1).prob[0]
    z0 = method_logits(ms, "deterministic+ts", image)[0]  # the network's logits (through the window blending)
    ref = torch.sigmoid(torch.as_tensor(z0) / torch.tensor(1.7, dtype=torch.float32)).numpy()  # the former rule
    ref = np.where(z0 < 0, np.minimum(ref, np.nextafter(np.float32(0.5), np.float32(0))), ref)
    np.testing.assert_array_equal(p, ref)
    with pytest.raises(ValueError, match="fitted for ensemble\\+ts"):
        predict(ms, image, "ensemble+ts", mc_batch=1)
    assert method_temperature(ModelSet(primary=ms.primary, temperature=np.array([2.0])), "mc_dropout+ts")[0] == 2.0
