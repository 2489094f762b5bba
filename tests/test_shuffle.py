"""Channel shuffle and channel slices end to end (issue 21 item 3: torchvision's
shufflenet_v2_x1_0).

Capture recognises torchvision's channel-shuffle idiom (size / floordiv / view to rank 5 /
transpose(1, 2) / contiguous / view back), ``F.channel_shuffle`` and ``nn.ChannelShuffle`` as one
``channel_shuffle`` node, and each piece of ``x.chunk(k, dim=1)`` / ``torch.chunk`` /
``torch.split`` as a ``slice`` (a channel range). The compiler runs a slice as a view of its
producer's buffer (no layer) and a shuffle as ``groups`` copy layers, each writing every
``groups``-th output channel (output ``c_stride``); the simulator must match the integer reference
bit for bit with the time model's bytes and cycles, and the float model stay within the
quantization tolerance of PyTorch's.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sim_check import check_program
from torch import nn

from tilesparse.build import build_graph_from
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.errors import UnsupportedOpError
from tilesparse.ir.capture import capture
from tilesparse.ir.graph import Op, shuffle_source
from tilesparse.ir.interpret import run_float
from tilesparse.models import get_model
from tilesparse.quant.reference import IntegerReference
from tilesparse.sim import verify


def _idiom(x: torch.Tensor, groups: int) -> torch.Tensor:
    """torchvision.models.shufflenetv2.channel_shuffle, written out."""
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


@pytest.mark.parametrize("c,g", [(6, 2), (12, 3), (116, 2), (8, 8), (5, 1)])
def test_shuffle_permutation_is_torchs(c, g):
    x = torch.arange(c, dtype=torch.float32).reshape(1, c, 1, 1).expand(1, c, 2, 3).contiguous()
    src = shuffle_source(c, g)
    assert np.array_equal(x[:, src].numpy(), F.channel_shuffle(x, g).numpy())
    assert np.array_equal(x[:, src].numpy(), _idiom(x, g).numpy())
    assert sorted(src.tolist()) == list(range(c))


def test_shuffle_permutation_by_hand():
    # 6 channels, 2 groups of 3: output j takes input (j mod 2)·3 + j div 2
    assert shuffle_source(6, 2).tolist() == [0, 3, 1, 4, 2, 5]
    assert shuffle_source(6, 3).tolist() == [0, 2, 4, 1, 3, 5]
    with pytest.raises(ValueError, match="groups must divide"):
        shuffle_source(6, 4)


class Block(nn.Module):
    """A ShuffleNetV2 unit in each spelling: chunk, a branch on one half, cat, shuffle."""

    def __init__(self, form: str = "idiom", c: int = 16):
        super().__init__()
        self.form = form
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(c // 2, c // 2, 1), nn.ReLU(), nn.Conv2d(c // 2, c // 2, 3, padding=1,
                                                                                       groups=c // 2))
        self.shuffle = nn.ChannelShuffle(2)
        self.head = nn.Conv2d(c, 8, 1)

    def forward(self, x):
        x = F.relu(self.stem(x))
        if self.form == "torch.chunk":
            x1, x2 = torch.chunk(x, 2, dim=1)
        elif self.form == "split":
            x1, x2 = torch.split(x, x.shape[1] // 2, dim=1)
        else:
            x1, x2 = x.chunk(2, dim=1)
        y = torch.cat((x1, self.branch(x2)), dim=1)
        if self.form == "functional":
            y = F.channel_shuffle(y, 2)
        elif self.form == "module":
            y = self.shuffle(y)
        else:
            y = _idiom(y, 2)
        return self.head(y)


SHAPE = (1, 3, 8, 8)


@pytest.mark.parametrize("form", ["idiom", "torch.chunk", "split", "functional", "module"])
def test_capture_forms(form):
    torch.manual_seed(0)
    net = Block(form).eval()
    g = capture(net, SHAPE)
    slices = g.of(Op.SLICE)
    assert [(n.attrs["start"], n.attrs["stop"]) for n in slices] == [(0, 8), (8, 16)]
    (sh,) = g.of(Op.CHANNEL_SHUFFLE)
    assert sh.attrs["groups"] == 2 and sh.out.shape == (1, 16, 8, 8)
    x = torch.randn(SHAPE)
    want = net(x).detach().numpy()
    got = run_float(g, x)[g.outputs[0].name].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


class Transposed(nn.Module):
    def forward(self, x):
        return torch.transpose(x, 2, 3) + x


class ChunkH(nn.Module):
    def forward(self, x):
        a, b = x.chunk(2, dim=2)
        return a + b


class RankFive(nn.Module):
    def forward(self, x):
        return x.view(1, 3, 1, 8, 8).relu().view(1, 3, 8, 8)


@pytest.mark.parametrize("net,msg", [
    (Transposed(), "transpose outside torchvision's channel-shuffle idiom"),
    (ChunkH(), r"chunk along dim 2 .*only channel pieces"),
    (RankFive(), r"view to rank 5 \(1, 3, 1, 8, 8\) outside torchvision's channel-shuffle idiom"),
])
def test_other_movements_refused_by_name(net, msg):
    with pytest.raises(UnsupportedOpError, match=msg):
        capture(net, SHAPE)


@functools.cache
def _block_build(sparsity):
    torch.manual_seed(0)
    return build_graph_from(Block().eval(), sparsity=sparsity, block=(8, 8), input_shape=SHAPE)


def test_integer_reference_moves_values_only():
    """The shuffle and the slices move int8 values unchanged, at their input's exponent."""
    g = _block_build(None).graph
    vals = IntegerReference(g).run(np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32))
    (sh,) = g.of(Op.CHANNEL_SHUFFLE)
    src = g.node(sh.inputs[0])
    assert sh.out.scale_exp == src.out.scale_exp
    assert np.array_equal(vals[sh.name], vals[src.name][:, shuffle_source(16, 2)])
    for s in g.of(Op.SLICE):
        assert np.array_equal(vals[s.name], vals[s.inputs[0]][:, s.attrs["start"]:s.attrs["stop"]])


_check = check_program


@pytest.mark.parametrize("array", ["4x4", "4x2"])
@pytest.mark.parametrize("sparsity", [None, 0.5])
def test_block_bit_exact(sparsity, array):
    prog = _check(_block_build(sparsity), array, SHAPE)
    shuffle = [r for r in prog.layers if r.output.c_stride > 1]
    assert [r.name for r in shuffle] == ["view_1.copy_0", "view_1.copy_1"]  # after cat's copy of x1
    assert [(r.output.c_offset, r.output.c_stride, r.inputs[0].c_offset) for r in shuffle] == [(0, 2, 0), (1, 2, 8)]
    assert all(r.geometry.co == 8 and r.kept_macs == 8 * 8 * 8 for r in shuffle)  # one move per element
    # the branch reads its half of the stem's buffer in place: no layer for the slices
    by = {r.name: r for r in prog.layers}
    assert (by["branch_0"].inputs[0].buffer, by["branch_0"].inputs[0].c_offset) == ("stem", 8)
    assert (by["cat.copy_getitem"].inputs[0].buffer, by["cat.copy_getitem"].inputs[0].c_offset) == ("stem", 0)
    assert by["head"].inputs[0].buffer == "view_1"


SHUFFLE_PX = 32


# Dense on one array, 50 % 8x8 on the other (8-12 CPU-s each): the shuffle's copies run on all four
# combinations in test_block_bit_exact, the rest of the network is the same layers again.
@pytest.mark.parametrize("sparsity,array", [(None, "4x4"), (0.5, "4x2")])
def test_shufflenet_v2_bit_exact(sparsity, array):
    built = build_graph_from(get_model("shufflenet_v2_x1_0", seed=0), sparsity=sparsity, block=(8, 8),
                             input_shape=(1, 3, SHUFFLE_PX, SHUFFLE_PX))
    prog = _check(built, array, (1, 3, SHUFFLE_PX, SHUFFLE_PX))
    assert len(built.graph.of(Op.CHANNEL_SHUFFLE)) == 16
    strided = [r for r in prog.layers if r.output.c_stride == 2]
    assert len(strided) == 32 and all(r.kind == "copy" for r in strided)


def test_strided_output_survives_save_and_load(tmp_path):
    """Format 8 stores the output c_stride; the loaded program simulates bit-exact too."""
    from tilesparse.program import Program

    built = _block_build(None)
    prog = compile_graph(built.graph, "4x4")
    back = Program.load(prog.save(tmp_path / "p.tsp"))
    assert [r.output for r in back.layers] == [r.output for r in prog.layers]
    assert sum(r.output.c_stride == 2 for r in back.layers) == 2
    x = np.random.default_rng(4).standard_normal(SHAPE).astype(np.float32)
    assert verify(back, built.graph, x, progress=False).ok


def test_onnx_export_of_the_shuffle_block_is_bit_exact():
    """ONNX Slice and Gather (axis 1) for the slices and the shuffle: onnxruntime's int8 values
    equal the integer reference's at every node."""
    pytest.importorskip("onnxruntime")
    from tilesparse.frontend import random_calibration
    from tilesparse.quant.onnx_check import onnx_agreement
    from tilesparse.quant.onnx_export import to_onnx

    g = _block_build(None).graph
    ops = {nd.op_type for nd in to_onnx(g).graph.node}
    assert {"Slice", "Gather"} <= ops
    layers = onnx_agreement(g, random_calibration(SHAPE, 2, seed=4))
    assert {la.op for la in layers} >= {"slice", "channel_shuffle"}
    assert all(la.end_to_end == (0, 0) for la in layers), [la for la in layers if la.end_to_end[0]]


class ShuffleOut(nn.Module):
    """Four groups, the shuffle as the graph output."""

    def __init__(self):
        super().__init__()
        self.c, self.d = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        a, b = F.relu(self.c(x)).chunk(2, 1)
        return F.channel_shuffle(torch.cat((self.d(a), b), 1), 4)


class ShuffleIn(nn.Module):
    """The shuffle of the graph input; the two halves of a conv added (an add reading slices)."""

    def __init__(self):
        super().__init__()
        self.c, self.e = nn.Conv2d(4, 16, 1), nn.Conv2d(8, 8, 1)

    def forward(self, x):
        a, b = self.c(F.channel_shuffle(x, 2)).chunk(2, 1)
        return self.e(a + b)


class ThreeChunks(nn.Module):
    """Three pieces of a residual sum, concatenated in another order."""

    def __init__(self):
        super().__init__()
        self.c, self.d, self.e = nn.Conv2d(3, 24, 1), nn.Conv2d(24, 24, 1), nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.c(x)
        y = y + self.d(y)
        a, b, c = y.chunk(3, 1)
        return torch.cat((self.e(b), a, c), 1)


@pytest.mark.parametrize("net,shape", [(ShuffleOut, (1, 3, 8, 8)), (ShuffleIn, (1, 4, 8, 8)),
                                       (ThreeChunks, (1, 3, 8, 8))])
@pytest.mark.parametrize("sparsity,array", [(None, "4x4"), (0.5, "4x2")])
def test_edge_placements_bit_exact(net, shape, sparsity, array):
    torch.manual_seed(0)
    built = build_graph_from(net().eval(), sparsity=sparsity, block=(8, 8), input_shape=shape)
    prog = _check(built, array, shape)
    groups = {ShuffleOut: 4, ShuffleIn: 2, ThreeChunks: 0}[net]  # one strided copy per group
    assert [r.output.c_stride for r in prog.layers if r.output.c_stride > 1] == [groups] * groups


def _shuffle_onnx(path, split_sizes: bool) -> str:
    """Conv 3 -> 8, Split in two along the channels, a conv on the second half, Concat, the channel
    shuffle as Reshape (1, 2, 4, H, W) / Transpose (0, 2, 1, 3, 4) / Reshape back, Conv 8 -> 4."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    split_in = ["c0", "sizes"] if split_sizes else ["c0"]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c0"], name="/c0/Conv", pads=[1, 1, 1, 1]),
             helper.make_node("Split", split_in, ["a", "b"], name="/split/Split", axis=1),
             helper.make_node("Conv", ["b", "w1"], ["b1"], name="/c1/Conv"),
             helper.make_node("Concat", ["a", "b1"], ["cat"], name="/cat/Concat", axis=1),
             helper.make_node("Reshape", ["cat", "s5"], ["r5"], name="/sh/Reshape"),
             helper.make_node("Transpose", ["r5"], ["t5"], name="/sh/Transpose", perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t5", "s4"], ["sh"], name="/sh/Reshape_1"),
             helper.make_node("Conv", ["sh", "w2"], ["y"], name="/c2/Conv")]
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3, "w0"),
             numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32) * 0.5, "w1"),
             numpy_helper.from_array(rng.standard_normal((4, 8, 1, 1)).astype(np.float32) * 0.4, "w2"),
             numpy_helper.from_array(np.array([1, 2, 4, 8, 8], np.int64), "s5"),
             numpy_helper.from_array(np.array([1, -1, 8, 8], np.int64), "s4"),
             numpy_helper.from_array(np.array([4, 4], np.int64), "sizes")]
    g = helper.make_graph(nodes, "shuf", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return str(path)


@pytest.mark.parametrize("split_sizes", [False, True])
def test_onnx_split_and_shuffle_import(tmp_path, split_sizes):
    """ONNX Split (equal pieces or sizes) and the Reshape / Transpose / Reshape shuffle lift to the
    forms capture reads: the module equals onnxruntime, and the program simulates bit-exact."""
    ort = pytest.importorskip("onnxruntime")
    from tilesparse.build import build_graph_from
    from tilesparse.source import load_model, parse_source

    f = _shuffle_onnx(tmp_path / "shuf.onnx", split_sizes)
    lm = load_model(parse_source(f))
    x = np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32)
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": x})[0]
    with torch.no_grad():
        got = lm.model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    built = build_graph_from(lm.model, input_shape=(1, 3, 8, 8))
    assert len(built.graph.of(Op.CHANNEL_SHUFFLE)) == 1 and len(built.graph.of(Op.SLICE)) == 2
    _check(built, "4x4", (1, 3, 8, 8))


def test_onnx_transpose_outside_a_shuffle_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from tilesparse.source import load_model, parse_source

    nodes = [helper.make_node("Transpose", ["x"], ["y"], name="/t/Transpose", perm=[0, 1, 3, 2])]
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "t.onnx"))
    with pytest.raises(UnsupportedOpError, match=r"Transpose at node '/t/Transpose' \(perm \[0, 1, 3, 2\]\)"):
        load_model(parse_source(str(tmp_path / "t.onnx")))
