"""Capture of torchvision classifiers and of the small test networks: op counts, shapes, sources,
and the captured graph run in float against the PyTorch module."""

from collections import Counter

import pytest
import torch
from frontend_nets import TinyInception, TinyResNet, TinyVGG, randomize_bn

from tilesparse.ir.capture import capture
from tilesparse.ir.graph import Op
from tilesparse.ir.interpret import run_float
from tilesparse.models import get_model


@pytest.mark.slow
@pytest.mark.parametrize("name,shape,convs,extra", [
    # ResNet50: 53 convs (49 in bottlenecks + 4 downsample + stem), 16 residual adds.
    ("resnet50", (1, 3, 64, 64), 53, {Op.ADD: 16, Op.LINEAR: 1, Op.BATCHNORM: 53}),
    # Inception-v3 main path: 94 BasicConv2d, 15 concats (11 blocks + 4 nested 3x3 splits).
    ("inception_v3", (1, 3, 75, 75), 94, {Op.CONCAT: 15, Op.AVGPOOL: 9, Op.MAXPOOL: 4}),
    # VGG16: 13 convs, 5 max-pools, 3 linears, no batch-norm.
    ("vgg16", (1, 3, 32, 32), 13, {Op.MAXPOOL: 5, Op.LINEAR: 3, Op.BATCHNORM: 0}),
])
def test_torchvision_capture(name, shape, convs, extra):
    model = get_model(name, num_classes=10)
    g = capture(model, shape, name)
    ops = Counter(n.op for n in g)
    assert ops[Op.CONV2D] == convs
    for op, count in extra.items():
        assert ops[op] == count, op
    assert g.inputs[0].out.shape == shape
    assert g.outputs[0].out.shape == (1, 10)
    # Every conv node's shape matches what PyTorch computes for the module on that input.
    outs = run_float(g, torch.randn(shape))
    for n in g.of(Op.CONV2D):
        assert tuple(outs[n.name].shape) == n.out.shape
        assert n.source and "." not in n.name  # module path kept for messages, fx name as id


def test_resnet_sources_and_params():
    g = capture(get_model("resnet18"), (1, 3, 32, 32), "resnet18")
    conv = g.node("layer1_0_conv1")
    assert conv.source == "layer1.0.conv1"
    assert g.param("layer1_0_conv1", "weight").shape == (64, 64, 3, 3)
    assert conv.attrs == {"kernel": (3, 3), "stride": (1, 1), "padding": (1, 1), "dilation": (1, 1),
                          "groups": 1, "activation": None}


@pytest.mark.parametrize("net,shape", [(TinyResNet, (1, 3, 32, 32)), (TinyInception, (1, 3, 16, 16)),
                                       (TinyVGG, (1, 3, 12, 12))])
def test_captured_graph_matches_module(net, shape):
    torch.manual_seed(0)
    model = randomize_bn(net())
    g = capture(model, shape)
    x = torch.randn(shape)
    torch.testing.assert_close(run_float(g, x)["output"], model(x), rtol=1e-5, atol=1e-5)


def test_functional_idioms_map_to_ir_ops():
    g = capture(TinyInception().eval(), (1, 3, 16, 16))
    ops = Counter(n.op for n in g)
    # three cats, dropout gone, both view(size(0), -1) and reshape(shape[0], -1) became flattens
    assert ops[Op.CONCAT] == 3 and ops[Op.FLATTEN] == 2
    assert ops[Op.RELU] == 4 + 1  # four F.relu + the stem's nn.ReLU
    pool = [n for n in g.of(Op.MAXPOOL) if n.attrs["ceil_mode"]]
    assert len(pool) == 1 and pool[0].attrs["kernel"] == (2, 2) and pool[0].attrs["stride"] == (2, 2)
    tv = Counter(n.op for n in capture(TinyVGG().eval(), (1, 3, 12, 12)))
    assert tv[Op.RELU6] == 2 and tv[Op.FLATTEN] == 1 and tv[Op.LINEAR] == 3
