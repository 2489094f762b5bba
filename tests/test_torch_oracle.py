"""The second oracle: the module run in float against the simulated, dequantized values, within a
tolerance derived from the quantization steps — passing on correct captures, failing on a capture
that changes the function (which the integer reference, built from the same graph, cannot see)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from frontend_nets import TinyInception, TinyResNet, randomize_bn
from torch import nn
from typer.testing import CliRunner

import tilesparse.ir.capture as capture_mod
from tilesparse.build import build_graph_from
from tilesparse.cli.main import app
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.ir.graph import Graph
from tilesparse.quant import IntegerReference, quantize_input
from tilesparse.quant.error_model import predict_errors
from tilesparse.sim import verify
from tilesparse.sim.torch_oracle import float_check, node_map


def _x(shape, seed=1):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def digits():
    built = build_graph_from("digits_cnn", sparsity=0.5)
    return built, compile_graph(built.graph, "2x2")


def test_digits_within_tolerance_every_layer_compared(digits):
    built, prog = digits
    rep = verify(prog, built.graph, _x(built.input_shape), module=built.module, progress=False)
    fc = rep.float_check
    assert rep.ok and fc.ok and fc.not_compared == []
    assert [c.layer for c in fc.layers] == [r.name for r in prog.layers]
    assert 0.999 < fc.cosine <= 1 and 0 < fc.max_err <= fc.tolerance
    assert rep.summary().startswith("all 8 layers bit-exact; vs PyTorch in float: output within tolerance (cosine ")
    assert fc.summary().endswith("8 of 8 layers within")


def test_layers_map_to_the_value_after_folded_batchnorm_and_fused_relu(digits):
    """features_0 (conv, BN folded, ReLU fused) holds the module's ReLU output features_2."""
    built, _ = digits
    gm = capture_mod.trace(built.module, built.input_shape)
    assert node_map(gm, built.graph) == {"features_0": "features_2", "features_3": "features_5",
                                         "features_6": "features_6", "features_7": "features_9",
                                         "features_10": "features_12", "features_13": "features_13", "pool": "flatten",
                                         "fc": "fc"}


def test_int8_input_is_dequantized_for_the_module(digits):
    built, prog = digits
    q = quantize_input(built.graph, _x(built.input_shape, 3))
    rep = verify(prog, built.graph, q, module=built.module, progress=False, is_int8=True)
    assert rep.ok, rep.summary()


def test_without_module_nothing_changes(digits):
    built, prog = digits
    rep = verify(prog, built.graph, _x(built.input_shape), progress=False)
    assert rep.float_check is None and rep.summary() == "all 8 layers bit-exact"


@pytest.mark.parametrize("net,px", [(TinyResNet, 32), (TinyInception, 16)])
def test_predicted_rms_error_matches_the_measured_one(net, px):
    """The error model (quant.error_model) predicts each layer's RMS error against PyTorch: its
    ratio to the measured one stays near 1 (0.95-1.12 on the zoo networks), so the tolerance
    is neither vacuous nor tight. (Tensors of a few hundred elements and more: the RMS of a
    handful of logits fluctuates from input to input.)"""
    torch.manual_seed(0)
    built = build_graph_from(randomize_bn(net()), input_shape=(1, 3, px, px))
    x = _x(built.input_shape)
    ref = IntegerReference(built.graph).run(quantize_input(built.graph, x).astype(np.int64), is_int8=True,
                                            keep_accumulators=True)
    fc = float_check(built.graph, built.module, x, ref)
    preds = {n.name: p for n, p in predict_errors(built.graph, x, ref)}
    big = [c for c in fc.layers if preds[c.layer].value.size >= 256]
    assert len(big) >= 5
    for c in big:
        predicted = float(np.sqrt(np.mean(preds[c.layer].mean ** 2 + preds[c.layer].var)))
        assert 0.7 < c.rms_err / predicted < 1.4, (c.layer, c.rms_err, predicted)


class InplaceReuse(nn.Module):
    """The issue's model: ``y = conv(x); z = y.relu_(); return conv2(z) + y``."""

    def __init__(self):
        super().__init__()
        self.conv, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        z = y.relu_()
        return self.conv2(z) + y


def _ignore_inplace(gm, name, where):
    """The capture before functionalisation: every reader of y reads the conv, not its relu."""
    gm.graph.eliminate_dead_code()
    gm.recompile()


def test_a_capture_that_changes_the_function_fails_the_float_check(monkeypatch):
    """Captured wrongly on purpose: bit-exact against the integer reference (built from the same
    wrong graph), outside the float tolerance, naming the first layer off."""
    monkeypatch.setattr(capture_mod, "functionalize", _ignore_inplace)
    torch.manual_seed(0)
    built = build_graph_from(InplaceReuse().eval(), input_shape=(1, 3, 16, 16))
    assert built.graph.node("add").inputs == ("conv2", "conv") and built.graph.node("conv").attrs["activation"] is None
    prog = compile_graph(built.graph, "2x2")
    rep = verify(prog, built.graph, _x(built.input_shape), module=built.module, progress=False)
    fc = rep.float_check
    assert all(c.ok for c in rep.checks) and not fc.ok and not rep.ok
    assert fc.max_err > 2 * fc.tolerance and fc.cosine < 0.9
    assert fc.first_failure.layer == "add" and [c.ok for c in fc.layers] == [True, True, True, False]
    assert "vs PyTorch in float: output OUTSIDE tolerance" in rep.summary()
    assert "first outside: 'add'" in rep.summary()


def test_a_wrong_weight_is_named_as_the_first_layer_off(digits):
    """A graph whose third conv has its weights negated: the program and the reference agree bit
    for bit, the float check fails from that layer on."""
    built, _ = digits
    g = built.graph
    params = dict(g.params)
    params["features_7.weight"] = -params["features_7.weight"]
    bad = Graph(g.nodes, params, g.name)
    rep = verify(compile_graph(bad, "2x2"), bad, _x(built.input_shape), module=built.module, progress=False)
    assert all(c.ok for c in rep.checks) and not rep.ok
    assert [c.layer for c in rep.float_check.layers if not c.ok][0] == "features_7"
    assert [c.ok for c in rep.float_check.layers][:3] == [True, True, True]


INPLACE_PY = '''
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        z = y.relu_()
        return self.conv2(z) + y


def make():
    return Net()
'''


def _simulate(tmp_path, *extra):
    (tmp_path / "net.py").write_text(INPLACE_PY)
    out = tmp_path / "sim.json"
    res = CliRunner().invoke(app, ["simulate", f"{tmp_path / 'net.py'}:make", "--input-shape", "1,3,16,16",
                                   "-a", "2x2", "--json", str(out), *extra])
    return res, json.loads(out.read_text())


def test_cli_prints_the_float_comparison(tmp_path):
    res, js = _simulate(tmp_path)
    assert res.exit_code == 0, res.output
    assert "vs PyTorch in float: output within tolerance (cosine 0.99" in res.output
    assert "3 of 3 layers within" in res.output
    f = js["float_check"]
    assert f["ok"] and js["ok"] and js["bit_exact"] and f["max_err"] <= f["tolerance"] and f["cosine"] > 0.99
    # program layers: conv (its relu fused: the module's relu_ value), conv2 with the add fused
    assert [(layer["layer"], layer["float"]["torch_node"]) for layer in js["layers"]] == [("conv", "relu_"),
                                                                                       ("conv2", "add")]


def test_cli_exit_code_1_when_the_float_check_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(capture_mod, "functionalize", _ignore_inplace)
    res, js = _simulate(tmp_path)
    assert res.exit_code == 1, res.output
    assert "reference: all 3 layers bit-exact" in res.output
    assert "vs PyTorch in float: output OUTSIDE tolerance" in res.output
    assert js["bit_exact"] and not js["ok"] and not js["float_check"]["ok"]


def test_cli_program_file_is_checked_against_its_rebuilt_module(tmp_path):
    """A program with provenance: the module is rebuilt from it and compared in float too."""
    (tmp_path / "net.py").write_text(INPLACE_PY)
    prog = tmp_path / "p.tsp"
    runner = CliRunner()
    res = runner.invoke(app, ["compile", f"{tmp_path / 'net.py'}:make", "--input-shape", "1,3,16,16", "-a", "2x2",
                              "-o", str(prog)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["simulate", str(prog)])
    assert res.exit_code == 0, res.output
    assert "vs PyTorch in float: output within tolerance" in res.output
