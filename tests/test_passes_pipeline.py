"""Each pass and the whole ``lower`` pipeline against the PyTorch module (float), plus the
structural facts each pass promises."""

from collections import Counter

import pytest
import torch
from frontend_nets import TinyInception, TinyResNet, TinyVGG, randomize_bn
from torch import nn

from tilesparse.errors import UnsupportedOpError
from tilesparse.ir.capture import capture
from tilesparse.ir.graph import Op, TensorType
from tilesparse.ir.interpret import run_float
from tilesparse.passes import (
    PASSES,
    GraphVerifyError,
    fuse_activations,
    fuse_downsample,
    lower,
    lower_linear,
    mark_buffer_reuse,
    resolve_write_into,
    verify,
)

NETS = [(TinyResNet, (1, 3, 32, 32)), (TinyInception, (1, 3, 16, 16)), (TinyVGG, (1, 3, 12, 12))]


def _same_as_module(model, g, shape):
    x = torch.randn(shape)
    with torch.no_grad():
        want = model(x)
    got = run_float(g, x)["output"].reshape(want.shape)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("net,shape", NETS)
def test_each_pass_preserves_the_function(net, shape):
    torch.manual_seed(3)
    model = randomize_bn(net())
    g = capture(model, shape)
    for p in PASSES:
        g = verify(p(g), after=p.__name__)
        _same_as_module(model, g, shape)
    assert not g.of(Op.BATCHNORM, Op.LINEAR, Op.RELU)
    assert all(len(n.out.shape) == 4 for n in g)


def test_linear_head_becomes_1x1_convs_on_flat_channels():
    g = lower(capture(randomize_bn(TinyVGG()), (1, 3, 12, 12)))
    ops = Counter(n.op for n in g)
    assert ops[Op.ADAPTIVE_AVGPOOL] == 0  # (3, 3) on a 3x3 input is the identity
    flat = g.of(Op.FLATTEN)[0]
    assert flat.out.shape == (1, 16 * 9, 1, 1)
    heads = [n for n in g.of(Op.CONV2D) if n.attrs.get("from_linear")]
    assert [g.param(n.name, "weight").shape for n in heads] == [(32, 144, 1, 1), (32, 32, 1, 1),
                                                                (10, 32, 1, 1)]
    assert g.outputs[0].out.shape == (1, 10, 1, 1)
    # ResNet: global pool -> flatten of C x 1 x 1 is a no-op and disappears
    r = lower(capture(randomize_bn(TinyResNet()), (1, 3, 32, 32)))
    assert not r.of(Op.FLATTEN) and r.node("fc").inputs == ("avg",)


def test_flatten_from_dim_2_is_rejected_by_lowering():
    class Net(nn.Module):
        def forward(self, x):
            return torch.flatten(x, 2)

    with pytest.raises(UnsupportedOpError, match="only flatten\\(x, 1\\)"):
        lower_linear(capture(Net(), (1, 2, 3, 3)))


def test_activation_fused_only_when_sole_reader():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)

        def forward(self, x):
            y = self.b(x)
            return torch.relu(self.a(x)) + torch.nn.functional.relu6(y) + y

    model = Net().eval()
    g = verify(fuse_activations(capture(model, (1, 3, 4, 4))))
    assert g.node("a").attrs["activation"] == "relu"
    assert g.node("b").attrs["activation"] is None and len(g.of(Op.RELU6)) == 1
    _same_as_module(model, g, (1, 3, 4, 4))


class Subsample(nn.Module):
    """conv → 1x1 stride-2 pool (fusable backwards) and 1x1 stride-2 pool → two 1x1 convs
    (fusable forwards), plus a pool feeding a 3x3 conv (not fusable)."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.c1, self.c2 = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = nn.functional.max_pool2d(self.c0(x), 1, 2)
        z = nn.functional.avg_pool2d(y, 1, 2)
        w = nn.functional.max_pool2d(y, 1, 2)
        return torch.cat([self.c1(z) + self.c2(z), self.c3(w)], 1)


def test_downsample_fused_into_stride_exactly():
    torch.manual_seed(4)
    model = Subsample().eval()
    g = verify(fuse_downsample(capture(model, (1, 3, 13, 13))))
    assert g.node("c0").attrs["stride"] == (2, 2)
    assert g.node("c1").attrs["stride"] == (2, 2) and g.node("c1").inputs == ("c0",)
    assert len(g.of(Op.AVGPOOL)) == 0 and len(g.of(Op.MAXPOOL)) == 1  # the 3x3 conv's pool stays
    _same_as_module(model, g, (1, 3, 13, 13))


def test_concat_operands_write_into_slices_nested():
    g = lower(capture(randomize_bn(TinyInception()), (1, 3, 16, 16)))
    cats = g.of(Op.CONCAT)
    outer = max(cats, key=lambda n: len(n.inputs))
    writers = {n.name: n.attrs["write_into"] for n in g if "write_into" in n.attrs}
    offsets = sorted(off for tgt, off in writers.values() if tgt == outer.name)
    assert offsets == [0, 8, 24, 32]  # b1 | b2 (a nested cat) | bp | maxpool
    inner = next(c for c in cats if writers.get(c.name, (None,))[0] == outer.name)
    # the nested cat's second operand lands at channel 8 + 8 of the outer buffer
    assert resolve_write_into(g, inner.inputs[1]) == (outer.name, 16)
    # the first cat of the head reads a maxpool of a conv and a view: views own no buffer
    head = next(c for c in cats if c.out.shape[1] == 24 * 16 + 48)
    assert not any(g.node(i).op is Op.FLATTEN and "write_into" in g.node(i).attrs for i in head.inputs)


def test_add_reuses_a_dead_operand_only():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(4, 4, 1)

        def forward(self, x):
            a, b = self.a(x), self.b(x)
            s = a + b          # a is read later by c: only b is dead here
            return self.c(a) + s  # both dead: the first operand is reused

    g = mark_buffer_reuse(capture(Net(), (1, 3, 4, 4)))
    adds = g.of(Op.ADD)
    assert adds[0].attrs["reuse_input"] == "b" and adds[1].attrs["reuse_input"] == "c"
    # an add over the graph input cannot overwrite it
    class InAdd(nn.Module):
        def forward(self, x):
            return x + x

    assert "reuse_input" not in mark_buffer_reuse(capture(InAdd(), (1, 3, 4, 4))).of(Op.ADD)[0].attrs


def test_verify_names_the_pass_and_the_node():
    g = capture(TinyResNet().eval(), (1, 3, 32, 32))
    bad = g.replace_nodes([n.with_(out=TensorType((1, 99, 1, 1))) if n.name == "pool" else n for n in g])
    with pytest.raises(GraphVerifyError, match=r"after my_pass:[\s\S]*'pool'.*\(1, 99, 1, 1\)"):
        verify(bad, after="my_pass")
    dangling = g.replace_nodes([n for n in g if n.op is not Op.OUTPUT])
    with pytest.raises(GraphVerifyError, match="has no consumer"):
        verify(dangling)
