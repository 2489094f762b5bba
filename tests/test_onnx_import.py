"""ONNX import (``tilesparse.ir.onnx_import``) through the front door: torchvision classifiers
exported with ``torch.onnx.export`` compile to the Programs of the torch path (same listing and
packed weights), the lifted module computes what onnxruntime computes, a program compiled from an
.onnx file simulates bit-exact from its provenance, and what the IR lacks is one line."""

from __future__ import annotations

import re
import sys
import warnings

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from tilesparse.build import build_graph_from, compile_source
from tilesparse.cli.main import main
from tilesparse.errors import ConfigError, UnsupportedOpError
from tilesparse.patterns import prune_oneshot
from tilesparse.program import Program
from tilesparse.program.provenance import file_sha256, provenance_of

PRESERVE = torch.onnx.TrainingMode.PRESERVE  # batch norms stay nodes (eval export folds them in float32)


def _export(m: nn.Module, shape: tuple[int, ...], path, **kw) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m.eval(), (torch.randn(shape),), str(path), dynamo=False, **kw)
    return str(path)


def _vgg16() -> nn.Module:
    """vgg16 with a 1x1 average pool and its first classifier layer resized: at 32x32 its features
    end at 1x1, which the exporter cannot pool to 7x7 (nor can the IR: unequal windows)."""
    m = torchvision.models.vgg16()
    m.avgpool = nn.AdaptiveAvgPool2d(1)
    m.classifier[0] = nn.Linear(512, 4096)
    return m


_MODELS = {
    "resnet18": (lambda: torchvision.models.resnet18(), 32),
    "resnet50": (lambda: torchvision.models.resnet50(), 32),
    "inception_v3": (lambda: torchvision.models.inception_v3(aux_logits=False, init_weights=False), 75),
    "vgg16": (_vgg16, 32),
    "mobilenet_v2": (lambda: torchvision.models.mobilenet_v2(), 32),
}


def _canonical_listing(p: Program, q: Program) -> tuple[str, str]:
    """Both listings below their title line (the graph name: the file's stem, the module's class),
    ``q``'s buffers renamed to ``p``'s in table order: a Concat the exporter merged with the
    concats nested in it (inception's Mixed_7) keeps another counter in its name."""
    assert len(p.buffers) == len(q.buffers)
    rename = {b: a for a, b in zip(p.buffers, q.buffers, strict=True) if a != b}
    text = q.listing()
    if rename:
        text = re.sub(r"\b(" + "|".join(map(re.escape, rename)) + r")\b", lambda m: rename[m.group(1)], text)
    return p.listing().split("\n", 1)[1], text.split("\n", 1)[1]


@pytest.mark.parametrize(("name", "sparsity"), [("resnet18", 0.5), ("resnet50", 0.0), ("inception_v3", 0.5),
                                                ("vgg16", 0.5), ("mobilenet_v2", 0.5)])
def test_exported_torchvision_models_compile_to_the_torch_paths_program(tmp_path, name, sparsity):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    make, res = _MODELS[name]
    m = make().eval()
    if sparsity:  # pruned first: the masks come from the zero blocks of the initializers
        prune_oneshot(m, sparsity, (8, 8), name=name)
    shape = (1, 3, res, res)
    f = _export(m, shape, tmp_path / f"{name}.onnx", training=PRESERVE)
    from_onnx = compile_source(f, "4x4")
    from_torch = compile_source(m, "4x4", input_shape=shape)
    assert [r.name for r in from_onnx.layers] == [r.name for r in from_torch.layers]
    assert np.array_equal(from_onnx.weights, from_torch.weights)
    listing, renamed = _canonical_listing(from_onnx, from_torch)
    assert listing == renamed
    assert provenance_of(from_onnx).input_shape == shape and provenance_of(from_onnx).source_kind == "onnx"


def test_lifted_module_matches_onnxruntime(tmp_path):
    """The independent reference: onnxruntime runs the file (batch norms folded by the exporter)."""
    import onnxruntime as ort

    from tilesparse.source import load_model, parse_source

    torch.manual_seed(1)
    m = torchvision.models.mobilenet_v2().eval()
    f = _export(m, (1, 3, 32, 32), tmp_path / "mb.onnx")
    lm = load_model(parse_source(f))
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    with torch.no_grad():
        got = lm.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert lm.example_shape == (1, 3, 32, 32)


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["tilesparse", *args])
    code = 0
    try:
        main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU6(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 24, 3, stride=2, groups=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(24, 10))


def test_cli_compiles_and_simulates_an_onnx_file_bit_exact(tmp_path, monkeypatch, capsys):
    """The default export (batch norm folded by the exporter); a dynamic batch dimension is 1; the
    provenance records the file and its sha256, so `simulate PROGRAM` rebuilds from it."""
    torch.manual_seed(0)
    f = _export(_tiny(), (1, 3, 16, 16), tmp_path / "tiny.onnx", input_names=["x"],
                dynamic_axes={"x": {0: "batch"}})
    p = tmp_path / "t.tsp"
    code, out, err = run(monkeypatch, capsys, "compile", f, "-a", "4x4", "--sparsity", "0.5", "-o", str(p))
    assert code == 0, err
    prov = provenance_of(Program.load(p))
    assert (prov.source_kind, prov.source_sha256, prov.input_shape) == ("onnx", file_sha256(f), (1, 3, 16, 16))
    code, out, err = run(monkeypatch, capsys, "simulate", str(p))
    assert code == 0 and "bit-exact" in out, (out, err)


class _Sin(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.conv(x))


def test_an_op_outside_the_ir_is_one_line_naming_op_and_node(tmp_path, monkeypatch, capsys):
    f = _export(_Sin(), (1, 3, 8, 8), tmp_path / "sin.onnx")
    with pytest.raises(UnsupportedOpError, match=r"unsupported ONNX op Sin at node '/Sin'"):
        build_graph_from(f)
    code, out, err = run(monkeypatch, capsys, "compile", f, "-o", str(tmp_path / "s.tsp"))
    assert code != 0 and len(err.strip().splitlines()) == 1 and "Sin" in err, err


def test_dynamic_spatial_dims_need_an_input_shape(tmp_path):
    f = _export(_tiny(), (1, 3, 16, 16), tmp_path / "dyn.onnx", input_names=["x"],
                dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}})
    with pytest.raises(ConfigError, match="dynamic dimensions besides the batch.*give the input shape"):
        build_graph_from(f)
    assert build_graph_from(f, input_shape="1,3,24,24").input_shape == (1, 3, 24, 24)


def test_not_an_onnx_file_and_an_old_opset_are_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\xfe not a protobuf at all")
    with pytest.raises(ConfigError, match="not a readable ONNX model"):
        build_graph_from(str(junk))
    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    old = tmp_path / "old.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)]), str(old))
    with pytest.raises(ConfigError, match="opset 9 is too old; export with opset_version >= 11"):
        build_graph_from(str(old))


def test_the_dynamo_exporters_file_names_layers_as_the_torch_path(tmp_path):
    """The default exporter names nodes ``node_Conv_0`` and records module scopes in metadata;
    layers are named from those, and the module computes what onnxruntime computes."""
    import onnxruntime as ort

    from tilesparse.source import load_model, parse_source

    torch.manual_seed(2)
    m = _tiny().eval()
    f = str(tmp_path / "dyn.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.randn(1, 3, 16, 16),), f, dynamo=True, verbose=False)
    from_onnx = compile_source(f, "2x2")
    from_torch = compile_source(m, "2x2", input_shape=(1, 3, 16, 16))
    assert [r.name for r in from_onnx.layers] == [r.name for r in from_torch.layers]
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        got = load_model(parse_source(f)).model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, sess.run(None, {sess.get_inputs()[0].name: x})[0], rtol=1e-4, atol=1e-4)


def _handmade(path) -> str:
    """Ops the torchvision exports do not use: Clip(0, 6) with bound inputs, AveragePool with pads,
    Concat, Reshape with a 0 (copy that dimension), ReduceMean over H, W without keepdims,
    MatMul + Add of a constant bias (a linear), Constant and Identity of a constant."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)

    def init(name, a):
        return numpy_helper.from_array(np.asarray(a, np.float32) if name != "shape" else np.asarray(a), name)

    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="/conv/Conv", pads=[1, 1, 1, 1], group=2),
        helper.make_node("Constant", [], ["six"], name="six", value=numpy_helper.from_array(np.float32(6))),
        helper.make_node("Identity", ["zero"], ["lo"], name="id"),
        helper.make_node("Clip", ["c", "lo", "six"], ["r"], name="/act/Clip"),
        helper.make_node("AveragePool", ["r"], ["p"], name="/pool/AveragePool", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1], strides=[2, 2], count_include_pad=1),
        helper.make_node("Concat", ["p", "p"], ["cat"], name="/Concat", axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["same"], name="/Reshape"),
        helper.make_node("ReduceMean", ["same"], ["m"], name="/mean/ReduceMean", axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["m", "fc_w"], ["mm"], name="/fc/MatMul"),
        helper.make_node("Add", ["mm", "fc_b"], ["y"], name="/fc/Add"),
    ]
    inits = [init("w", rng.standard_normal((8, 2, 3, 3)) * 0.3), init("b", rng.standard_normal(8)),
             init("zero", 0.0), init("shape", [0, 16, 4, 4]), init("fc_w", rng.standard_normal((16, 5))),
             init("fc_b", rng.standard_normal(5))]
    g = helper.make_graph(nodes, "handmade", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


def test_handmade_ops_match_onnxruntime_and_compile(tmp_path):
    import onnxruntime as ort

    from tilesparse.source import load_model, parse_source

    f = _handmade(tmp_path / "hand.onnx")
    lm = load_model(parse_source(f))
    x = np.random.default_rng(4).standard_normal((2, 4, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        got = lm.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, sess.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    assert lm.example_shape == (1, 4, 8, 8)
    prog = compile_source(f, "2x2")
    assert [r.kind for r in prog.layers][0] == "conv" and prog.layers[-1].name == "fc"


def test_a_checkpoint_sparsified_from_an_onnx_file_compiles_alone(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    f = _export(_tiny(), (1, 3, 16, 16), tmp_path / "tiny.onnx")
    code, _, err = run(monkeypatch, capsys, "sparsify", f, "--sparsity", "0.5", "--data", "none",
                       "-o", str(tmp_path / "run"))
    assert code == 0, err
    p = tmp_path / "s.tsp"
    code, _, err = run(monkeypatch, capsys, "compile", str(tmp_path / "run" / "sparse.pt"), "-a", "2x2", "-o", str(p))
    assert code == 0, err
    assert provenance_of(Program.load(p)).selection == "checkpoint-masks"
    code, out, err = run(monkeypatch, capsys, "simulate", str(p))
    assert code == 0 and "bit-exact" in out, (out, err)


class _Acts(nn.Module):
    """The lookup-table activations as torch.onnx.export writes them: SiLU as Sigmoid + Mul, Sigmoid,
    HardSwish and HardSigmoid (alpha 1/6) nodes."""

    def __init__(self):
        super().__init__()
        self.c1, self.a1 = nn.Conv2d(3, 8, 3, padding=1), nn.SiLU()
        self.c2, self.a2 = nn.Conv2d(8, 8, 3, padding=1), nn.Hardswish()
        self.c3, self.a3 = nn.Conv2d(8, 8, 1), nn.Sigmoid()
        self.c4, self.a4 = nn.Conv2d(8, 8, 1), nn.Hardsigmoid()
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.a4(self.c4(self.a3(self.c3(self.a2(self.c2(self.a1(self.c1(x))))))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def test_lookup_table_activations_import_as_the_torch_path(tmp_path):
    torch.manual_seed(0)
    m = _Acts().eval()
    shape = (1, 3, 8, 8)
    f = _export(m, shape, tmp_path / "acts.onnx")
    import onnx
    ops = {n.op_type for n in onnx.load(f).graph.node}
    assert {"Sigmoid", "Mul", "HardSwish", "HardSigmoid"} <= ops
    from tilesparse.source import load_model, parse_source
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_model(parse_source(f)).model(x), m(x), rtol=1e-5, atol=1e-5)
    g = build_graph_from(f).graph
    assert [n.attrs["fn"] for n in g if n.op.value == "lut"] == ["silu", "hardswish", "sigmoid", "hardsigmoid"]
    from_onnx, from_torch = compile_source(f, "2x2"), compile_source(m, "2x2", input_shape=shape)
    assert np.array_equal(from_onnx.weights, from_torch.weights)
    listing, renamed = _canonical_listing(from_onnx, from_torch)
    assert listing == renamed


class _SqueezeExcite(nn.Module):
    """A squeeze-excitation block as torch.onnx.export writes it: the pool, two 1x1 convs, Sigmoid
    and a Mul of the map by its (N, C, 1, 1) scale; then an element-wise Mul of two maps."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(nn.functional.adaptive_avg_pool2d(y, 1)))))
        y = y * s
        y = torch.relu(self.c2(y)) * y
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))


def test_squeeze_excitation_multiply_imports_as_the_torch_path(tmp_path):
    torch.manual_seed(0)
    m = _SqueezeExcite().eval()
    shape = (1, 3, 8, 8)
    f = _export(m, shape, tmp_path / "se.onnx")
    import onnx
    assert [n.op_type for n in onnx.load(f).graph.node].count("Mul") == 2
    from tilesparse.source import load_model, parse_source
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(load_model(parse_source(f)).model(x), m(x), rtol=1e-5, atol=1e-5)
    g = build_graph_from(f).graph
    assert len([n for n in g if n.op.value == "mul"]) == 2
    from_onnx, from_torch = compile_source(f, "2x2"), compile_source(m, "2x2", input_shape=shape)
    assert np.array_equal(from_onnx.weights, from_torch.weights)
    listing, renamed = _canonical_listing(from_onnx, from_torch)
    assert listing == renamed


def _one_node(path, op: str, inputs: list[str], **attrs) -> str:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="/conv/Conv"),
             helper.make_node(op, inputs, ["y"], name=f"/blk/{op}", **attrs)]
    inits = [numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.ones((1, 4, 1, 1), np.float32), "s")]
    g = helper.make_graph(nodes, "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 4, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.mark.parametrize(("op", "inputs", "attrs", "says"), [
    ("Mul", ["c", "s"], {}, "Mul at node '/blk/Mul': a multiply by a constant"),
    ("Transpose", ["c"], {"perm": [0, 2, 1, 3]}, "Transpose at node '/blk/Transpose'"),
    ("HardSigmoid", ["c"], {}, "'/blk/HardSigmoid' (HardSigmoid) alpha=0.2"),
])
def test_multiply_shuffle_and_onnx_default_hardsigmoid_are_refused_by_name(tmp_path, op, inputs, attrs, says):
    from tilesparse.source import load_model, parse_source

    f = _one_node(tmp_path / "one.onnx", op, inputs, **attrs)
    with pytest.raises(UnsupportedOpError, match=re.escape(says)) as e:
        load_model(parse_source(f))
    assert "\n" not in str(e.value)
