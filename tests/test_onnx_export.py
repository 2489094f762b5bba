"""QDQ ONNX export: onnx.checker passes, onnxruntime runs it, and its int8 codes agree with the
integer reference (bit-exact with the half-up nudge; within the documented LSB without it)."""

import json

import numpy as np
import onnx
import pytest
import torch
from frontend_nets import TinyInception, TinyVGG, randomize_bn
from onnx import numpy_helper
from torch import nn
from typer.testing import CliRunner

from tilesparse.build import build_graph_from
from tilesparse.cli.main import app
from tilesparse.errors import ConfigError
from tilesparse.frontend import build_graph, random_calibration
from tilesparse.ir.graph import Op
from tilesparse.quant.onnx_check import onnx_agreement, output_agreement, run_onnx
from tilesparse.quant.onnx_export import export_onnx, to_onnx
from tilesparse.quant.reference import IntegerReference

runner = CliRunner()
SHAPE = (1, 3, 16, 16)


class SmallNet(nn.Module):
    """conv+bn+relu, maxpool, a residual add, a concat, relu6, an average pool with uneven
    divisors, adaptive pooling, flatten and linear: every op the exporter writes."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.pool = nn.MaxPool2d(2)
        self.a = nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16))
        self.b = nn.Conv2d(16, 8, 1)
        self.c = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU6())
        self.avg = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.gap = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16 * 4, 10)

    def forward(self, x):
        x = self.pool(self.stem(x))
        x = torch.relu(x + self.a(x))
        x = torch.cat([self.b(x), self.c(x)], 1)
        return self.fc(torch.flatten(self.gap(self.avg(x)), 1))


def _small(per_channel=False):
    torch.manual_seed(0)
    model = randomize_bn(SmallNet().eval())
    with torch.no_grad():
        model.c[0].weight.mul_(40)  # outputs past 6: relu6 clamps below int8's 127 (a Clip in ONNX)
    return build_graph(model, input_shape=SHAPE, per_channel=per_channel)


def _inputs(n=3):
    return random_calibration(SHAPE, n, seed=7)


@pytest.mark.parametrize("per_channel", [False, True])
def test_small_cnn_is_bit_exact_with_half_up(per_channel):
    g = _small(per_channel)
    assert 0 < g.node("c_0").attrs["clamp"][1] < 127
    onnx.checker.check_model(to_onnx(g), full_check=True)
    for optimize in (False, True):
        layers = onnx_agreement(g, _inputs(), optimize=optimize)
        assert {la.op for la in layers} >= {"conv2d", "maxpool", "add", "concat", "avgpool", "adaptive_avgpool",
                                            "flatten"}
        assert all(la.end_to_end == (0, 0) and la.local == (0, 0) for la in layers), layers
        assert output_agreement(g, _inputs(), optimize=optimize)[1:] == (0, 0)


class Pools(nn.Module):
    """ceil_mode pools (PyTorch's divisors at the ragged edge) and adaptive pools with overlapping
    windows (a MatMul with a 0/1 window matrix in ONNX)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 3)
        self.p = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True)
        self.m = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.q = nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)
        self.a = nn.AdaptiveAvgPool2d((3, 5))
        self.b = nn.AdaptiveAvgPool2d(4)

    def forward(self, x):
        return self.b(self.a(self.q(self.m(self.p(self.c(x))))))


@pytest.mark.parametrize("net,shape", [(TinyInception, (1, 3, 16, 16)), (TinyVGG, (1, 3, 16, 16)),
                                       (Pools, (1, 3, 21, 21))])
def test_other_nets_are_bit_exact(net, shape):
    torch.manual_seed(1)
    g = build_graph(randomize_bn(net().eval()), input_shape=shape)
    layers = onnx_agreement(g, random_calibration(shape, 2, seed=4))
    assert all(la.end_to_end == (0, 0) for la in layers), [la for la in layers if la.end_to_end[0]]
    plain = onnx_agreement(g, random_calibration(shape, 2, seed=4), half_up=False)
    assert all(la.local[1] <= (2 if la.op == "add" else 1) for la in plain)


def test_plain_qdq_differs_only_on_ties_within_the_documented_bound():
    """Without the nudge ONNX rounds ties to even: a layer adds at most 1 LSB (2 for an add, whose
    two operands each round), and the ties are real (some codes do differ)."""
    g = _small()
    layers = onnx_agreement(g, _inputs(), half_up=False)
    assert sum(la.local[0] for la in layers) > 0
    for la in layers:
        assert la.local[1] <= (2 if la.op == "add" else 1), la
    assert all(la.local == (0, 0) for la in layers if la.op in ("input", "maxpool", "flatten"))


def test_real_output_is_the_reference_dequantized_for_any_batch():
    """The model's input takes the input node's name and real values; the batch is free."""
    g = _small()
    model = to_onnx(g)
    assert [i.name for i in model.graph.input] == [g.inputs[0].name]
    xs = _inputs(2)
    got = run_onnx(model.SerializeToString(), np.concatenate(xs))[g.outputs[0].name]
    for k, x in enumerate(xs):
        np.testing.assert_array_equal(got[k:k + 1].astype(np.float64), IntegerReference(g).dequantized_output(x))


@pytest.fixture(scope="module")
def resnet18():
    return build_graph_from("resnet18", sparsity=0.5, block="8x8", input_shape=(1, 3, 32, 32)).graph


def test_pruned_resnet18_exports_with_its_zero_blocks_and_is_bit_exact(resnet18, tmp_path):
    g = resnet18
    path = export_onnx(g, tmp_path / "r18.onnx")
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    pruned = 0
    for n in g.of(Op.CONV2D):
        w, mask = inits[f"{n.name}.weight"], g.param(n.name, "mask")
        assert w.dtype == np.int8 and np.array_equal(w, g.param(n.name, "weight"))
        assert inits[f"{n.name}.bias"].dtype == np.int32
        bo, bi = n.attrs["block"]
        for o, i in zip(*np.nonzero(~mask), strict=True):
            assert not w[o * bo:(o + 1) * bo, i * bi:(i + 1) * bi].any()
            pruned += 1
    assert pruned > 0
    scales = [numpy_helper.to_array(t) for t in model.graph.initializer if t.name.endswith(("scale", ":scale"))]
    assert all(np.all(np.frexp(s)[0] == 0.5) for s in scales)  # every scale a power of two
    xs = random_calibration((1, 3, 32, 32), 2, seed=3)
    assert all(la.end_to_end == (0, 0) for la in onnx_agreement(g, xs))
    assert output_agreement(g, xs, optimize=True)[1:] == (0, 0)


def test_plain_qdq_resnet18_layers_within_the_bound(resnet18):
    layers = onnx_agreement(resnet18, random_calibration((1, 3, 32, 32), 1, seed=3), half_up=False)
    assert max(la.local[1] for la in layers if la.op != "add") <= 1
    assert max(la.local[1] for la in layers) <= 2


def test_unsupported_nodes_are_refused_by_name():
    g = _small()
    pool = g.of(Op.MAXPOOL)[0]
    bad = g.replace_nodes([n.with_(op=Op.BATCHNORM) if n is pool else n for n in g])
    with pytest.raises(ConfigError, match=f"{pool.name}.*batchnorm.*no ONNX export"):
        to_onnx(bad)
    sdq = g.replace_nodes([n.with_(attrs={**n.attrs, "sdq": {}}) if n.op is Op.CONV2D else n for n in g])
    with pytest.raises(ConfigError, match="SDQ layer"):
        to_onnx(sdq)
    unquantized = build_graph(randomize_bn(SmallNet().eval()), input_shape=SHAPE, quantized=False)
    with pytest.raises(Exception, match="not int8"):
        to_onnx(unquantized)


def test_cli_export_onnx_end_to_end(tmp_path):
    out, js = tmp_path / "r18.onnx", tmp_path / "r.json"
    r = runner.invoke(app, ["export-onnx", "resnet18", "--input-shape", "1,3,32,32", "--pattern", "8x8@0.5",
                            "-o", str(out), "--verify", "1", "--json", str(js)])
    assert r.exit_code == 0, r.output
    assert "bit-exact" in r.output
    onnx.checker.check_model(onnx.load(out))
    summary = json.loads(js.read_text())
    assert summary["agreement"]["layers"]["differing"] == 0
    assert summary["agreement"]["output_optimized"]["differing"] == 0
