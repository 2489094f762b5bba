"""QDQ import (``tilesparse.ir.onnx_import``): QuantizeLinear / DequantizeLinear pairs and
QLinearConv. A QDQ file that tilesparse exported imports back to the same Program and the same
integer outputs (its power-of-two activation scales fixed, whatever the calibration), with the masks
of its pattern (8x8 blocks, 2:4) read from the zeros of its int8 initializers; scales that are not
powers of two are re-quantized, with one notice naming them."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tilesparse.build import build_graph_from, compile_source
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.errors import UnsupportedOpError
from tilesparse.hw import load_array
from tilesparse.ir.graph import Op
from tilesparse.quant.onnx_export import export_onnx
from tilesparse.quant.reference import IntegerReference

SHAPE = (1, 3, 32, 32)


@pytest.mark.parametrize(("model", "spec", "half_up"), [("resnet18", {"sparsity": 0.5, "block": "8x8"}, True),
                                                       ("mobilenet_v2", {"pattern": "2:4"}, False)])
def test_tilesparse_qdq_file_imports_to_the_same_program_and_integer_outputs(tmp_path, model, spec, half_up):
    g = build_graph_from(model, input_shape=SHAPE, **spec).graph
    f = export_onnx(g, tmp_path / f"{model}.onnx", half_up=half_up)
    back = build_graph_from(str(f), seed=11).graph  # other calibration inputs: the file's scales still rule
    assert {n.name: n.out.scale_exp for n in back} == {n.name: n.out.scale_exp for n in g}
    for n in g.of(Op.CONV2D):  # the pattern's zeros, read back from the int8 initializers, as masks
        assert np.array_equal(back.param(n.name, "weight"), g.param(n.name, "weight")), n.name
        assert np.array_equal(back.param(n.name, "mask"), g.param(n.name, "mask")), n.name
    hw = load_array("4x4")
    p, q = compile_graph(g, hw), compile_graph(back, hw)
    assert np.array_equal(p.weights, q.weights)
    assert p.listing().split("\n", 1)[1] == q.listing().split("\n", 1)[1]
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    a, b = IntegerReference(g).run(x), IntegerReference(back).run(x)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_the_file_scales_are_used_as_given(tmp_path):
    """The QDQ model fixes each activation's exponent: one moved by hand in the file moves in the graph."""
    g = build_graph_from("resnet18", input_shape=SHAPE).graph
    model = onnx.load(export_onnx(g, tmp_path / "r.onnx", half_up=False))
    for t in model.graph.initializer:
        if t.name == "layer1_0_conv1:q.scale":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * np.float32(4), t.name))
    onnx.save(model, str(tmp_path / "moved.onnx"))
    back = build_graph_from(str(tmp_path / "moved.onnx")).graph
    assert back.node("layer1_0_conv1").out.scale_exp == g.node("layer1_0_conv1").out.scale_exp + 2
    assert back.node("layer1_0_conv2").out.scale_exp == g.node("layer1_0_conv2").out.scale_exp
    from tilesparse.frontend import build_graph
    from tilesparse.source import load_model, parse_source
    lifted = load_model(parse_source(str(tmp_path / "moved.onnx"))).model  # the Python front end too
    assert build_graph(lifted, input_shape=SHAPE).node("layer1_0_conv1").out.scale_exp == \
        back.node("layer1_0_conv1").out.scale_exp


def _qlinear(path, act_scale: float, w_scale) -> str:
    """x -> Q -> QLinearConv(8 -> 16, 3x3, bias) -> DQ -> Relu -> Q -> DQ -> GlobalAveragePool -> Flatten
    -> Gemm."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (16, 8, 3, 3)).astype(np.int8)
    ws = np.asarray(w_scale, np.float32)
    init = [numpy_helper.from_array(v, k) for k, v in {
        "xs": np.float32(2.0 ** -5), "z": np.int8(0), "w": w, "ws": ws, "wz": np.zeros(ws.shape, np.int8),
        "ys": np.float32(act_scale), "b": rng.integers(-500, 500, 16).astype(np.int32),
        "fc_w": rng.standard_normal((4, 16)).astype(np.float32), "fc_b": np.zeros(4, np.float32)}.items()]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "z"], ["xq"], name="/in/Q"),
        helper.make_node("QLinearConv", ["xq", "xs", "z", "w", "ws", "wz", "ys", "z", "b"], ["cq"],
                         name="/conv/QLinearConv", pads=[1, 1, 1, 1]),
        helper.make_node("DequantizeLinear", ["cq", "ys", "z"], ["c"], name="/conv/DQ"),
        helper.make_node("Relu", ["c"], ["r"], name="/relu/Relu"),
        helper.make_node("QuantizeLinear", ["r", "ys", "z"], ["rq"], name="/relu/Q"),
        helper.make_node("DequantizeLinear", ["rq", "ys", "z"], ["rd"], name="/relu/DQ"),
        helper.make_node("GlobalAveragePool", ["rd"], ["p"], name="/pool/GlobalAveragePool"),
        helper.make_node("Flatten", ["p"], ["fl"], name="/Flatten"),
        helper.make_node("Gemm", ["fl", "fc_w", "fc_b"], ["y"], name="/fc/Gemm", transB=1),
    ]
    g = helper.make_graph(nodes, "qlin", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], init)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


def test_qlinearconv_with_power_of_two_scales_is_used_as_given(tmp_path):
    import onnxruntime as ort

    from tilesparse.source import load_model, parse_source

    f = _qlinear(tmp_path / "q.onnx", 2.0 ** -3, 2.0 ** -9)
    built = build_graph_from(f)
    assert built.notices == []
    g = built.graph
    conv = g.of(Op.CONV2D)[0]
    assert g.node(conv.inputs[0]).out.scale_exp == -5
    assert conv.out.scale_exp == -3 and conv.attrs["weight_exp"] == -9
    w = numpy_helper.to_array(next(t for t in onnx.load(f).graph.initializer if t.name == "w"))
    assert np.array_equal(g.param(conv.name, "weight"), w)  # the file's int8 codes, as given
    x = np.random.default_rng(1).standard_normal((1, 8, 8, 8)).astype(np.float32)
    import torch
    with torch.no_grad():
        got = load_model(parse_source(f)).model(torch.from_numpy(x)).numpy()
    ref = ort.InferenceSession(f, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # the lifted float module skips the file's roundings: within a few of its steps of onnxruntime
    assert np.abs(got - ref).max() < 0.05 * np.abs(ref).max() + 0.5
    prog = compile_source(f, "2x2")
    assert [r.kind for r in prog.layers][0] == "conv"


def test_other_scales_are_requantized_with_one_notice(tmp_path):
    f = _qlinear(tmp_path / "q.onnx", 0.1, [2.0 ** -9] * 8 + [0.003] * 8)
    built = build_graph_from(f)
    assert len(built.notices) == 1
    note = built.notices[0]
    assert "not powers of two" in note and "'ws' scale 0.003 (nearest 2**-8) and 15 other channels" in note
    assert "'cq' scale 0.1 (nearest 2**-3)" in note and "'c' scale 0.1" not in note
    g = built.graph
    assert g.of(Op.CONV2D)[0].out.scale_exp is not None  # calibrated instead


def test_a_nonzero_zero_point_is_refused_by_node(tmp_path):
    f = _qlinear(tmp_path / "q.onnx", 2.0 ** -3, 2.0 ** -9)
    model = onnx.load(f)
    model.graph.initializer.append(numpy_helper.from_array(np.int8(3), "z3"))
    model.graph.node[0].input[2] = "z3"
    onnx.save(model, f)
    with pytest.raises(UnsupportedOpError, match=r"node '/in/Q' \(QuantizeLinear\): zero point \[3\]"):
        build_graph_from(f)
