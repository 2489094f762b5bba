"""build_graph end to end: the graph the back end and the simulator consume."""

import numpy as np
import pytest
import torch
from frontend_nets import TinyInception, randomize_bn

from tilesparse.frontend import build_graph, default_input_shape
from tilesparse.ir.capture import capture
from tilesparse.ir.graph import Op
from tilesparse.quant import QuantizationError, quantize


@pytest.mark.slow
def test_resnet50_default_build_is_fully_quantized():
    g = build_graph("resnet50")
    assert g.inputs[0].out.shape == (1, 3, 224, 224)
    assert not g.of(Op.BATCHNORM, Op.LINEAR, Op.RELU, Op.FLATTEN)
    assert all(n.out.dtype == "int8" and isinstance(n.out.scale_exp, int) for n in g)
    for n in g.of(Op.CONV2D):
        assert g.param(n.name, "weight").dtype == np.int8
        assert g.param(n.name, "bias").dtype == np.int32
        assert g.param(n.name, "mask").dtype == bool and isinstance(n.attrs["shift"], int)
    assert len(g.of(Op.CONV2D)) == 54 and all("reuse_input" in n.attrs for n in g.of(Op.ADD))


def test_inception_default_shape_and_concat_contract():
    assert default_input_shape("inception_v3") == (1, 3, 299, 299)
    assert default_input_shape(None) == (1, 3, 224, 224)
    g = build_graph(randomize_bn(TinyInception()), input_shape=(1, 3, 16, 16))
    for cat in g.of(Op.CONCAT):
        for name, shift in zip(cat.inputs, cat.attrs["input_shifts"], strict=True):
            src = g.node(name)
            # operands that requantize anyway are produced at the concat's exponent: no shift
            if src.op in (Op.CONV2D, Op.ADD, Op.CONCAT) and "write_into" in src.attrs:
                assert shift == 0 and src.out.scale_exp == cat.out.scale_exp
            assert shift == cat.out.scale_exp - src.out.scale_exp


def test_build_is_deterministic_and_per_channel_option():
    model = randomize_bn(TinyInception())
    a = build_graph(model, input_shape=(1, 3, 16, 16), seed=3)
    b = build_graph(model, input_shape=(1, 3, 16, 16), seed=3)
    assert a.nodes == b.nodes and all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    pc = build_graph(model, input_shape=(1, 3, 16, 16), per_channel=True)
    conv = pc.of(Op.CONV2D)[1]
    assert conv.attrs["shift"] is None and pc.param(conv.name, "shifts").shape == (conv.out.shape[1],)


def test_quantize_needs_lowered_graph_and_calibration():
    g = capture(randomize_bn(TinyInception()), (1, 3, 16, 16))
    with pytest.raises(QuantizationError, match="run passes.lower first"):
        quantize(g, [np.zeros((1, 3, 16, 16), np.float32)])
    lowered = build_graph(randomize_bn(TinyInception()), input_shape=(1, 3, 16, 16), quantized=False)
    with pytest.raises(QuantizationError, match="at least one calibration input"):
        quantize(lowered, [])
    # tensors work as calibration inputs too
    q = quantize(lowered, [torch.zeros(1, 3, 16, 16)])
    assert q.inputs[0].out.scale_exp == 0  # all-zero input: the zero-tensor exponent


def test_bias_too_large_for_int32_raises_the_weight_exponent():
    """Tiny activations and weights with an O(1) bias: at e_in + e_w the bias would need ~2^50;
    the weight exponent is raised so the bias fits int32 and stays within half an LSB."""
    from tilesparse.frontend import build_graph
    from tilesparse.quant import IntegerReference
    from tilesparse.quant.rounding import dequantize

    model = torch.nn.Conv2d(4, 2, 1).eval()
    with torch.no_grad():
        model.weight.mul_(1e-6)
        model.bias.copy_(torch.tensor([0.75, -0.3]))
    x = np.random.default_rng(0).standard_normal((1, 4, 3, 3)).astype(np.float32) * 1e-6
    g = build_graph(model, input_shape=(1, 4, 3, 3), calib_inputs=[x])
    conv = g.of(Op.CONV2D)[0]
    e_acc = g.inputs[0].out.scale_exp + conv.attrs["weight_exp"]
    bias = g.param(conv.name, "bias")
    assert np.abs(bias).max() <= 2**31 - 1
    np.testing.assert_allclose(dequantize(bias, e_acc), [0.75, -0.3], atol=2.0 ** (e_acc - 1))
    y = IntegerReference(g).dequantized_output(x)
    np.testing.assert_allclose(y, model(torch.from_numpy(x)).detach().numpy(),
                               atol=2.0 ** (conv.out.scale_exp - 1) + 1e-9)
