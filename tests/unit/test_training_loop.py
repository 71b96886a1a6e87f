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


def test_prior_bias_is_the_log_odds_of_each_regions_share():
    """init_prior_bias sets the output layer's bias to logit(voxel share of each region) over all the training
    targets (hand-computed shares), on the demo SegResNet's head (GroupNorm -> ReLU -> 1x1 conv) and on UNet."""
    from monai.networks.nets import SegResNet

    from core.training.segmentation import init_prior_bias, output_layer

    y1 = np.zeros((3, 4, 4, 4), np.float32)
    y1[0, :2] = 1  # WT 32 of 64
    y1[1, 0, 0] = 1  # TC 4 of 64
    y2 = np.zeros((3, 4, 4, 4), np.float32)
    y2[0, 0] = 1  # WT 16 of 64; TC 0; ET 0 in both
    data = [(np.zeros((4, 4, 4, 4), np.float32), y1), (np.zeros((4, 4, 4, 4), np.float32), y2)]
    share = np.array([48 / 128, 4 / 128, 1e-6])  # an empty region is clipped at 1e-6
    expected = np.log(share / (1 - share))
    seg = SegResNet(spatial_dims=3, init_filters=8, in_channels=4, out_channels=3, blocks_down=(1, 2), blocks_up=(1,))
    unet = UNet(spatial_dims=3, in_channels=4, out_channels=3, channels=(4, 8), strides=(2,), num_res_units=1)
    for net in (seg, unet):
        np.testing.assert_allclose(init_prior_bias(net, data), expected, rtol=1e-12)
        np.testing.assert_allclose(output_layer(net, 3).bias.detach().numpy(), expected, rtol=1e-6)
    assert output_layer(seg, 3) is seg.conv_final[2].conv  # the head's 1x1 convolution, not an earlier layer
    # with the weights of the head at zero, the network's output is the prior everywhere
    with torch.no_grad():
        seg.conv_final[2].conv.weight.zero_()
        p = torch.sigmoid(seg.eval()(torch.randn(1, 4, 8, 8, 8)))
    np.testing.assert_allclose(p.mean((0, 2, 3, 4)).numpy(), share, rtol=1e-5)
    with pytest.raises(ValueError, match="no convolution with 5 output channels"):
        output_layer(unet, 5)
