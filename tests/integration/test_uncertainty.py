import numpy as np
import pytest
import torch

from core.io.cohort import discover, labels_to_regions, load_case
from core.metrics import dice
from core.io.architectures import DEMO_MODELS, build_model, make_card
from core.io.checkpoints import load_checkpoint
from core.inference.forward import binary_entropy, set_mc_dropout
from core.inference.uncertainty import predict
from core.cli import SHIPPED_WEIGHTS, demo_checkpoint_name


@pytest.fixture(scope="module")
def case(tiny_cohort):
    return load_case(discover(tiny_cohort)[0])


def test_binary_entropy_edges():
    p = torch.tensor([0.0, 1.0, 0.5, 0.1])
    h = binary_entropy(p)
    assert h[0] == 0 and h[1] == 0 and torch.isclose(h[2], torch.tensor(1.0))
    assert torch.isclose(h[3], torch.tensor(-(0.1 * np.log(0.1) + 0.9 * np.log(0.9)) / np.log(2), dtype=torch.float32))


def test_only_dropout_in_train_mode(tiny_checkpoints):
    lm = load_checkpoint(tiny_checkpoints[1])
    n = set_mc_dropout(lm.model)
    assert n >= 1
    for m in lm.model.modules():
        is_drop = isinstance(m, torch.nn.modules.dropout._DropoutNd)
        if is_drop or len(list(m.children())) == 0:
            assert m.training == is_drop, type(m).__name__


@pytest.mark.parametrize("idx", [0, 1])
def test_mc_dropout_samples_differ_and_mean_is_probability(tiny_checkpoints, case, idx):
    lm = load_checkpoint(tiny_checkpoints[idx])
    det = predict(lm, case.image, "deterministic")
    mc = predict(lm, case.image, "mc_dropout", T=4, mc_batch=2, seed=1)
    mc2 = predict(lm, case.image, "mc_dropout", T=4, mc_batch=2, seed=2)
    assert mc.prob.shape == (3,) + case.image.shape[1:] and mc.n_samples == 4
    for a in (mc.prob, mc.entropy, mc.mi):
        assert np.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert det.mi is None
    assert not np.allclose(mc.prob, mc2.prob), "different dropout masks must give different samples"
    assert not np.allclose(mc.prob, det.prob)
    assert mc.mi.max() > 0
    # MI <= entropy of the mean (mean of entropies is >= 0)
    assert (mc.mi <= mc.entropy + 1e-6).all()
    # same seed -> same result; model left in eval mode
    again = predict(lm, case.image, "mc_dropout", T=4, mc_batch=2, seed=1)
    assert np.allclose(again.prob, mc.prob)
    assert not any(m.training for m in lm.model.modules())


def test_batched_equals_loop_in_distribution(tiny_checkpoints, case):
    """Chunked (batched) and one-by-one MC sampling estimate the same mean probability."""
    lm = load_checkpoint(tiny_checkpoints[1])
    a = predict(lm, case.image, "mc_dropout", T=8, mc_batch=8, seed=3)
    b = predict(lm, case.image, "mc_dropout", T=8, mc_batch=1, seed=4)
    auto = predict(lm, case.image, "mc_dropout", T=8, mc_batch="auto", seed=5)
    assert auto.chunk in (1, 7)
    assert np.abs(a.prob - b.prob).mean() < 0.05


def test_deterministic_matches_plain_forward(tiny_checkpoints, case):
    lm = load_checkpoint(tiny_checkpoints[0])
    det = predict(lm, case.image, "deterministic")
    from core.io.architectures import preprocess

    with torch.no_grad():
        ref = torch.sigmoid(lm.model(preprocess(case.image, lm.card)))[0].numpy()
    assert np.allclose(det.prob, ref, atol=1e-5)


def test_model_without_dropout_refuses_mc(case):
    spec = DEMO_MODELS["UNet-Res"]
    card = make_card("NoDrop", spec["arch"], {**spec["arch_args"], "dropout": 0.0})
    from core.io.checkpoints import LoadedModel

    lm = LoadedModel(build_model(card).eval(), card, "-")
    with pytest.raises(ValueError, match="no dropout"):
        predict(lm, case.image, "mc_dropout", T=2)


@pytest.mark.parametrize("name", list(DEMO_MODELS))
def test_shipped_weights_segment_the_demo(name, tiny_cohort):
    """The shipped demo weights segment an unseen typical demo patient well (seed 7 is not the demo seed)."""
    path = SHIPPED_WEIGHTS / demo_checkpoint_name(name)
    if not path.exists():
        pytest.skip("weights not shipped")
    lm = load_checkpoint(path)
    c = load_case(discover(tiny_cohort)[0])  # kind 'typical'
    p = predict(lm, c.image, "deterministic")
    assert dice(p.prob[0] >= 0.5, labels_to_regions(c.seg)[0]) > 0.7
