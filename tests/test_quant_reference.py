"""The integer reference: hand-computed cases on hand-built quantized graphs, a per-layer error
bound against float PyTorch, and whole networks against their float model."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from frontend_nets import TinyInception, TinyResNet, TinyVGG, randomize_bn

from tilesparse.frontend import build_graph, random_calibration
from tilesparse.ir.graph import Graph, Node, Op, TensorType
from tilesparse.ir.interpret import run_float
from tilesparse.models import get_model
from tilesparse.quant import IntegerReference, QuantizationError, requant_shifts
from tilesparse.quant.rounding import dequantize


def _t(shape, e):
    return TensorType(shape, "int8", e)


def _conv_graph(shift, clamp):
    x = Node("x", Op.INPUT, (), _t((1, 1, 1, 5), -2))
    conv = Node("c", Op.CONV2D, ("x",), _t((1, 1, 1, 5), 0),
                {"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1),
                 "groups": 1, "activation": None, "weight_exp": -2, "shift": shift, "clamp": clamp})
    out = Node("output", Op.OUTPUT, ("c",), conv.out)
    params = {"c.weight": np.full((1, 1, 1, 1), 3, np.int8), "c.bias": np.array([-2], np.int32)}
    return Graph((x, conv, out), params)


X5 = np.array([5, -3, 6, 100, -50]).reshape(1, 1, 1, 5)


@pytest.mark.parametrize("shift,clamp,want", [
    # acc = 3x - 2 = [13, -11, 16, 298, -152]; /4 rounded half up = [3.25, -2.75, 4, 74.5, -38]
    (2, (-128, 127), [3, -3, 4, 75, -38]),
    (2, (0, 127), [3, 0, 4, 75, 0]),                 # relu as a clamp
    (-1, (-128, 127), [26, -22, 32, 127, -128]),     # negative shift = left shift, then saturate
])
def test_conv_requantization_by_hand(shift, clamp, want):
    out = IntegerReference(_conv_graph(shift, clamp)).run(X5, is_int8=True, keep_accumulators=True)
    assert out["c.acc"].ravel().tolist() == [13, -11, 16, 298, -152]
    assert out["c"].ravel().tolist() == want and out["c"].dtype == np.int8


def test_add_concat_avgpool_by_hand():
    a = Node("a", Op.INPUT, (), _t((1, 1, 2, 2), -3))
    b = Node("b", Op.MAXPOOL, ("a",), _t((1, 1, 2, 2), -3),
             {"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1),
              "ceil_mode": False})
    add = Node("s", Op.ADD, ("a", "b"), _t((1, 1, 2, 2), -2),
               {"activation": None, "input_shifts": (1, -1), "clamp": (-128, 127)})
    cat = Node("k", Op.CONCAT, ("s", "a"), _t((1, 2, 2, 2), -2), {"axis": 1, "input_shifts": (0, 1)})
    avg = Node("p", Op.AVGPOOL, ("k",), _t((1, 2, 1, 1), -2),
               {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0), "ceil_mode": False,
                "count_include_pad": True})
    g = Graph((a, b, add, cat, avg, Node("output", Op.OUTPUT, ("p",), avg.out)))
    x = np.array([10, -7, 3, -2]).reshape(1, 1, 2, 2)
    out = IntegerReference(g).run(x, is_int8=True)
    # a >> 1 rounded half up: [5, -3, 2, -1]; b << 1: [20, -14, 6, -4]
    assert out["s"].ravel().tolist() == [25, -17, 8, -5]
    assert out["k"].ravel().tolist() == [25, -17, 8, -5, 5, -3, 2, -1]
    # means 11/4 = 2.75 -> 3 and 3/4 = 0.75 -> 1
    assert out["p"].ravel().tolist() == [3, 1]


def test_avgpool_negative_tie_rounds_up():
    a = Node("a", Op.INPUT, (), _t((1, 2, 2, 2), 0))
    avg = Node("p", Op.ADAPTIVE_AVGPOOL, ("a",), _t((1, 2, 1, 1), 0), {"output_size": (1, 1)})
    g = Graph((a, avg, Node("output", Op.OUTPUT, ("p",), avg.out)))
    x = np.array([-1, 0, 0, -1, 1, 0, 0, 1]).reshape(1, 2, 2, 2)  # means -0.5 and 0.5
    assert IntegerReference(g).run(x, is_int8=True)["p"].ravel().tolist() == [0, 1]


def test_unquantized_graph_rejected():
    g = build_graph(TinyVGG().eval(), input_shape=(1, 3, 12, 12), quantized=False)
    with pytest.raises(QuantizationError, match="not quantized"):
        IntegerReference(g)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("net,shape", [(TinyResNet, (1, 3, 32, 32)), (TinyInception, (1, 3, 16, 16)),
                                       (TinyVGG, (1, 3, 12, 12))])
def test_each_conv_within_its_quantization_error(net, shape, per_channel):
    """For every conv: |int output − float conv of the same int input| ≤ Σ|x̂|·|w − ŵ| + |b − b̂|
    + half an output LSB, wherever the output did not saturate."""
    torch.manual_seed(5)
    model = randomize_bn(net())
    cal = random_calibration(shape, 3, seed=1)
    gf = build_graph(model, input_shape=shape, quantized=False)
    g = build_graph(model, input_shape=shape, calib_inputs=cal, per_channel=per_channel)
    ints = IntegerReference(g).run(random_calibration(shape, 1, seed=7)[0])
    for n in g.of(Op.CONV2D):
        _check_conv_bound(g, gf, n, ints)


def _check_conv_bound(g, gf, n, ints):
    a = n.attrs

    def conv(x, w):
        return F.conv2d(torch.from_numpy(x), torch.from_numpy(w), None, a["stride"], a["padding"],
                        a["dilation"], a["groups"]).numpy()

    e_in = g.node(n.inputs[0]).out.scale_exp
    x = dequantize(ints[n.inputs[0]], e_in)
    w, b = gf.param(n.name, "weight").astype(np.float64), gf.param(n.name, "bias").astype(np.float64)
    e_out = n.out.scale_exp
    e_acc = (e_out - requant_shifts(g, n)).reshape(-1)
    w_hat = dequantize(g.param(n.name, "weight"), (e_acc - e_in).reshape(-1, 1, 1, 1))
    b_hat = dequantize(g.param(n.name, "bias"), e_acc)
    # weights and bias themselves are rounded to nearest: within half an LSB of their exponent
    assert (np.abs(w - w_hat) <= 2.0 ** (e_acc - e_in - 1).reshape(-1, 1, 1, 1)).all(), n.name
    assert (np.abs(b - b_hat) <= 2.0 ** (e_acc - 1)).all(), n.name
    act = {None: lambda v: v, "relu": lambda v: np.maximum(v, 0), "relu6": lambda v: np.clip(v, 0, 6)}
    want = act[a["activation"]](conv(x, w) + b.reshape(1, -1, 1, 1))
    bound = conv(np.abs(x), np.abs(w - w_hat)) + np.abs(b - b_hat).reshape(1, -1, 1, 1) + 2.0 ** (e_out - 1)
    q = ints[n.name]
    free = (q > a["clamp"][0]) & (q < a["clamp"][1]) | ((q == a["clamp"][0]) & (a["clamp"][0] == 0))
    err = np.abs(dequantize(q, e_out) - want)
    assert (err[free] <= bound[free] * (1 + 1e-9)).all(), n.name


@pytest.mark.parametrize("net,shape,tol", [(TinyResNet, (1, 3, 32, 32), 0.06),
                                           (TinyInception, (1, 3, 16, 16), 0.08)])
def test_small_net_output_close_to_float(net, shape, tol):
    torch.manual_seed(6)
    model = randomize_bn(net())
    g = build_graph(model, input_shape=shape, calib_inputs=random_calibration(shape, 4))
    x = random_calibration(shape, 1, seed=11)[0]
    y = IntegerReference(g).dequantized_output(x).reshape(-1)
    f = model(torch.from_numpy(x)).detach().numpy().reshape(-1)
    assert np.linalg.norm(y - f) / np.linalg.norm(f) < tol


@pytest.mark.slow
def test_resnet18_64px_close_to_float():
    shape = (1, 3, 64, 64)
    model = get_model("resnet18")
    g = build_graph(model, input_shape=shape, calib_inputs=random_calibration(shape, 4))
    ref = IntegerReference(g)
    x = random_calibration(shape, 1, seed=12)[0]
    y = ref.dequantized_output(x).reshape(-1)
    f = model(torch.from_numpy(x)).detach().numpy().reshape(-1)
    # 21 int8 layers with power-of-two scales: a few % per layer, ~7 % at the logits
    assert np.linalg.norm(y - f) / np.linalg.norm(f) < 0.15
    assert np.corrcoef(y, f)[0, 1] > 0.99
    # the float graph the quantizer calibrated on agrees with the module
    gf = build_graph(model, input_shape=shape, quantized=False)
    np.testing.assert_allclose(run_float(gf, x)["output"].numpy().reshape(-1), f, rtol=1e-4, atol=1e-4)
