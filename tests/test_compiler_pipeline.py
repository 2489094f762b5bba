"""The back end end to end on torchvision networks (reduced resolution) and on bad input."""

import pytest
from compiler_helpers import small_graph
from torch import nn

from tilesparse.build import build_graph_from
from tilesparse.compiler.memory import Buffer, check_allocation
from tilesparse.compiler.pipeline import compile_graph, lower_layers
from tilesparse.errors import ConfigError, UnsupportedOpError
from tilesparse.estimate.bounds import program_bounds
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.frontend import build_graph
from tilesparse.ir.graph import Graph, Node, Op, TensorType
from tilesparse.patterns import prune_oneshot


@pytest.fixture(scope="module")
def resnet_graphs():
    return tuple(build_graph_from("resnet18", sparsity=s, input_shape=(1, 3, 64, 64), quantized=False).graph
                 for s in (0.0, 0.5))


@pytest.mark.parametrize("arr", ["5x5", "8x2"])
def test_resnet_compiles_everywhere_and_sparsity_pays(resnet_graphs, arr):
    dense, sparse = (compile_graph(g, arr) for g in resnet_graphs)
    for p in (dense, sparse):
        est = estimate_program(p)
        assert est.total_s == pytest.approx(p.meta["estimate_s"], rel=1e-9)
        assert all(pk <= cap for pk, cap in zip(p.meta["memtile_peak"], p.meta["memtile_capacity"], strict=True))
        for (name, _, secs), b in zip(est.layers, program_bounds(p), strict=True):
            assert secs >= b.bound_s * (1 - 1e-9), name  # nothing beats its lower bound
    assert sparse.meta["estimate_s"] < dense.meta["estimate_s"]
    d, s = (sum(r.packed_weight_bytes for r in p.layers) for p in (dense, sparse))
    assert s / d < 0.53


def test_comp_never_exceeds_peak(resnet_graphs):
    p = compile_graph(resnet_graphs[1], "3x3")
    per_cycle = p.hw.macs_per_cycle("int8") * p.hw.n_cores
    for ins in p.instrs:
        if ins.op == "COMP":
            assert ins.nbytes <= p.iter_values(ins).sum() * per_cycle  # MACs <= cycles x peak


def test_inception_at_reduced_resolution_compiles():
    g = build_graph("inception_v3", input_shape=(1, 3, 75, 75), quantized=False)
    p = compile_graph(g, "7x7")
    kinds = {r.kind for r in p.layers}
    assert {"conv", "avgpool", "maxpool"} <= kinds
    assert p.meta["estimate_s"] > 0


def test_quantized_graph_program_is_executable():
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU())
    p = compile_graph(build_graph(m, input_shape=(1, 3, 8, 8), n_calib=1), "2x2")
    assert p.quantized and p.layers[1].attrs.get("shift") is not None


def test_unknown_array_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown array 'huge'"):
        compile_graph(small_graph(), "huge")


def test_invalid_yaml_field_is_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("rows: 4\ncols: 4\ncore:\n  macs_per_cycle: {int8: 256}\n  weight_buffer_byte: 1\n")
    with pytest.raises(ConfigError, match="core.weight_buffer_byte: unknown field"):
        compile_graph(small_graph(), str(f))


def test_graph_without_a_conv_is_rejected():
    t = TensorType((1, 8, 4, 4), "int8", -4)
    nodes = (Node("x", Op.INPUT, (), t), Node("r", Op.RELU, ("x",), t), Node("o", Op.OUTPUT, ("r",), t))
    g = Graph(nodes, {}, "noconv")
    with pytest.raises(UnsupportedOpError, match="no convolution"):
        compile_graph(g, "2x2")


def test_batchnorm_left_in_the_graph_is_named():
    t = TensorType((1, 8, 4, 4), "int8", -4)
    nodes = (Node("x", Op.INPUT, (), t), Node("bn", Op.BATCHNORM, ("x",), t, {"eps": 1e-5}),
             Node("o", Op.OUTPUT, ("bn",), t))
    with pytest.raises(UnsupportedOpError, match="layer 'bn'.*batchnorm"):
        lower_layers(Graph(nodes, {}, "bn"))


def test_model_without_sparsifiable_layer():
    with pytest.raises(ConfigError, match="no sparsifiable layer"):
        prune_oneshot(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU()), 0.5, name="one_conv")


def test_spilled_buffers_respect_capacity():
    p = compile_graph(build_graph_from("resnet18", input_shape=(1, 3, 128, 128), quantized=False).graph, "1x1")
    bufs = [Buffer(n, b["nbytes"], b["live"][0], b["live"][1], b["graph_io"]) for n, b in p.buffers.items()]
    from tilesparse.compiler.memory import Allocation, Placement

    alloc = Allocation({n: Placement(b["memory"], b["offset"], b["part_bytes"]) for n, b in p.buffers.items()},
                       tuple(p.meta["memtile_capacity"]), tuple(p.meta["memtile_peak"]))
    check_allocation(bufs, alloc)
    assert all(p.buffers[n]["memory"] == "ddr" for n in ("x",))


def test_grouped_and_depthwise_convs_compile():
    m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, groups=16),
                      nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.ReLU(), nn.Conv2d(32, 24, 1))
    g = build_graph(m, input_shape=(1, 3, 12, 12), quantized=False)
    for arr in ("3x3", "2x5"):
        p = compile_graph(g, arr)  # the compiler asserts exact coverage of every layer
        assert [r.geometry.groups for r in p.layers] == [1, 16, 4, 1]
