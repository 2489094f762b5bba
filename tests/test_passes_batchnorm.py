"""Batch-norm folding against PyTorch's own eval-mode conv → batch-norm."""

import numpy as np
import pytest
import torch
from frontend_nets import randomize_bn
from torch import nn

from tilesparse.ir.capture import capture
from tilesparse.ir.graph import Op
from tilesparse.ir.interpret import run_float
from tilesparse.passes import fold_batchnorm, verify


@pytest.mark.parametrize("bias,affine,groups", [(False, True, 1), (True, True, 1), (True, False, 1),
                                                (False, True, 4)])
def test_fold_into_conv_matches_pytorch(bias, affine, groups):
    torch.manual_seed(1)
    model = randomize_bn(nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=bias, groups=groups),
                                       nn.BatchNorm2d(16, eps=1e-3, affine=affine)))
    g = verify(fold_batchnorm(capture(model, (1, 8, 10, 10))))
    assert not g.of(Op.BATCHNORM) and len(g.of(Op.CONV2D)) == 1
    x = torch.randn(2, 8, 10, 10)  # batch 2: folding is per channel, not per sample
    with torch.no_grad():
        want = model(x)
    got = run_float(g.replace_nodes(_batch(g, 2)), x)["output"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_folded_weights_equal_closed_form():
    torch.manual_seed(2)
    conv, bn = nn.Conv2d(3, 4, 1, bias=True), nn.BatchNorm2d(4)
    randomize_bn(bn)
    g = fold_batchnorm(capture(nn.Sequential(conv, bn).eval(), (1, 3, 4, 4)))
    s = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().numpy()
    w = conv.weight.detach().numpy() * s[:, None, None, None]
    b = (conv.bias.detach().numpy() - bn.running_mean.numpy()) * s + bn.bias.detach().numpy()
    name = g.of(Op.CONV2D)[0].name
    np.testing.assert_allclose(g.param(name, "weight"), w, rtol=1e-6)
    np.testing.assert_allclose(g.param(name, "bias"), b, rtol=1e-5, atol=1e-6)


def test_batchnorm_without_conv_becomes_depthwise_conv():
    """A BN after a pool (or after a conv also read elsewhere) cannot fold: it becomes a 1x1
    depthwise conv, still equal to PyTorch."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 6, 3)
            self.pool = nn.MaxPool2d(2)
            self.bn1, self.bn2 = nn.BatchNorm2d(6), nn.BatchNorm2d(6)

        def forward(self, x):
            y = self.conv(x)
            return self.bn1(self.pool(y)) + self.pool(self.bn2(y)) + self.pool(y)

    model = randomize_bn(Net())
    g = verify(fold_batchnorm(capture(model, (1, 3, 9, 9))))
    dw = [n for n in g.of(Op.CONV2D) if n.attrs.get("from_batchnorm")]
    assert len(dw) == 2 and all(n.attrs["groups"] == 6 for n in dw)
    x = torch.randn(1, 3, 9, 9)
    torch.testing.assert_close(run_float(g, x)["output"], model(x), rtol=1e-5, atol=1e-5)


def _batch(g, n):
    from tilesparse.ir.graph import TensorType

    return [node.with_(out=TensorType((n, *node.out.shape[1:]), node.out.dtype)) for node in g]
