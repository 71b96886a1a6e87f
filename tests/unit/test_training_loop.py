"""The training loop's memory format: channels_last_3d (oneDNN on CPU) trains the same network as the default
layout, up to float32 summation order, and hands the network back contiguous."""
import numpy as np
import pytest
import torch
from monai.networks.nets import UNet

from core.training.loop import fit

pytestmark = pytest.mark.unit


def _run(channels_last: bool):
    torch.manual_seed(0)
    net = UNet(spatial_dims=3, in_channels=2, out_channels=1, channels=(4, 8), strides=(2,), num_res_units=1)
    rng = np.random.default_rng(0)
    data = []
    for _ in range(2):
        x = rng.normal(size=(2, 16, 16, 16)).astype(np.float32)
        y = (x[:1] > 0.5).astype(np.float32)
        data.append((x, y))
    loss_fn = lambda z, y: torch.nn.functional.binary_cross_entropy_with_logits(z, y)  # noqa: E731
    losses, steps = fit(net, data, loss_fn, epochs=3, batch_size=2, crop=(16, 16, 16), lr=1e-2,
                        rng=np.random.default_rng(1), channels_last=channels_last)
    return net, losses, steps


def test_channels_last_trains_the_same_network():
    a, la, sa = _run(False)
    b, lb, sb = _run(True)
    assert sa == sb == 1 and len(la) == len(lb) == 3
    assert la[-1] < la[0]  # it learns
    np.testing.assert_allclose(la, lb, rtol=1e-4)
    # weights: Adam turns float32-order noise in the ~0 gradients of conv biases before a norm layer into
    # steps of up to lr (max weight difference 0.003 after 3 steps at lr 1e-2); the networks' outputs agree
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(1, 2, 16, 16, 16)).astype(np.float32))
    a.eval(), b.eval()
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=2e-2)
    assert all(v.is_contiguous() for v in b.state_dict().values())
