"""Which conv takes a residual add (compiler.fusion): the one reading less input, moved after the
other branch; against both orders compiled on their own, and bit-exact."""

from __future__ import annotations

import pytest
import torch
from sim_helpers import check_bit_exact
from torch import nn
from torchvision.models.resnet import Bottleneck

from tilesparse.build import build_graph_from
from tilesparse.compiler import pipeline
from tilesparse.compiler.fusion import _first, input_pass_bytes
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.ir.graph import Graph


def _bottleneck(cin: int, planes: int, stride: int, px: int) -> Graph:
    """torchvision's ResNet bottleneck with a projection shortcut, 50 % 8×8 block-sparse, int8."""
    torch.manual_seed(0)
    down = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))
    m = nn.Sequential(Bottleneck(cin, planes, stride, downsample=down)).eval()
    return build_graph_from(m, sparsity=0.5, block=(8, 8), input_shape=(1, cin, px, px)).graph


def _in_graph_order(g: Graph, arr: str, monkeypatch):
    """The program with the add where the graph's order puts it (no branch reordering)."""
    with monkeypatch.context() as m:
        m.setattr(pipeline, "order_add_branches", lambda g: g)
        return compile_graph(g, arr)


def _taker(prog) -> str:
    (name,) = [r.name for r in prog.layers if r.fused_add]
    return name


def test_first_moves_a_branch_and_refuses_a_dependent_one():
    g = _bottleneck(128, 32, 2, 16)
    names = [n.name for n in g]
    assert names.index("_0_conv3") < names.index("_0_downsample_0")
    moved = [n.name for n in _first(g, "_0_downsample_0", before="_0_conv3")]
    assert moved == [n for n in names if n != "_0_downsample_0"][:names.index("_0_conv3")] + \
        ["_0_downsample_0"] + [n for n in names[names.index("_0_conv3"):] if n != "_0_downsample_0"]
    assert _first(g, "_0_conv3", before="_0_conv1") is None  # conv3 reads conv1's output


def test_input_pass_by_hand():
    g = _bottleneck(128, 32, 2, 32)  # output map 16 × 16
    assert input_pass_bytes(g, "_0_conv3") == 32 * 16 * 16  # 1×1, stride 1: one position each
    assert input_pass_bytes(g, "_0_downsample_0") == 128 * 16 * 16  # 1×1, stride 2: every other one
    assert input_pass_bytes(g, "_0_conv2") == 32 * 33 * 33  # 3×3, stride 2, padding 1


def test_add_goes_to_the_conv_reading_less(monkeypatch):
    # a strided bottleneck: the downsample reads 128 channels, conv3 32; the residual stream on
    # top of the downsample's makes it the slower place for the add on a 2×2 array
    g = _bottleneck(128, 32, 2, 32)
    keep = _in_graph_order(g, "2x2", monkeypatch)
    nodes = list(g.nodes)  # the other order, written out by hand: downsample, then conv3
    ds = next(n for n in nodes if n.name == "_0_downsample_0")
    nodes.remove(ds)
    nodes.insert([n.name for n in nodes].index("_0_conv3"), ds)
    swap = _in_graph_order(Graph(tuple(nodes), g.params, g.name), "2x2", monkeypatch)
    assert (_taker(keep), _taker(swap)) == ("_0_downsample_0", "_0_conv3")
    assert swap.meta["estimate_s"] < keep.meta["estimate_s"]
    prog = compile_graph(g, "2x2")
    assert _taker(prog) == "_0_conv3"
    assert prog.meta["estimate_s"] == pytest.approx(swap.meta["estimate_s"], rel=1e-12)
    check_bit_exact(g, prog)  # the add inside conv3, against the integer reference


def test_same_shaped_convs_keep_the_graphs_order(monkeypatch):
    # ResNet's first block: conv3 and the downsample are both 64 → 256 1×1 convs on the same map
    g = _bottleneck(64, 64, 1, 8)
    prog = compile_graph(g, "2x2")
    assert _taker(prog) == "_0_downsample_0"
    assert prog.meta["estimate_s"] == _in_graph_order(g, "2x2", monkeypatch).meta["estimate_s"]


def _under(arr: str, rules: str):
    from tilesparse.hw import load_array

    return load_array(arr).model_copy(update={"rules": rules})


def test_paper_rules_keep_adds_as_layers_and_leave_the_scratch_alone():
    # residual_fusion=False, scratch_as_buffer=False (hw.profiles.PAPER): the add is a layer of its
    # own, core.res holds nothing, and the program stays bit-exact
    from tilesparse.estimate.timemodel import estimate_program
    from tilesparse.program.layout import residual_capacity

    g = _bottleneck(128, 32, 2, 16)
    fused = compile_graph(g, _under("2x2", "tilesparse"))
    paper = compile_graph(g, _under("2x2", "paper"))
    assert [r.name for r in fused.layers if r.fused_add] == ["_0_conv3"]
    assert not any(r.fused_add or r.residual for r in paper.layers)
    adds = [r for r in paper.layers if r.kind == "add"]
    assert len(adds) == 1 and len(paper.layers) == len(fused.layers) + 1
    assert {t.buffer for t in adds[0].inputs} == {"_0_conv3", "_0_downsample_0"}
    assert residual_capacity(paper.hw) == 0 and residual_capacity(fused.hw) == 16 * 1024
    # the add's layer reads both operands and writes the sum: slower than fusing it under the same
    # (tilesparse) rules, and the paper's program under the paper's rules slower still
    ours = estimate_program(fused, "tilesparse").total_s
    assert ours < estimate_program(paper, "tilesparse").total_s < estimate_program(paper, "paper").total_s
    # the clocked replay plays the add layer out the same way (the program's own rules: paper)
    from tilesparse.sim.replay import replay

    assert replay(paper).total_s == pytest.approx(estimate_program(paper).total_s, rel=1e-9)
    check_bit_exact(g, paper)


def test_paper_rules_keep_partial_sums_out_of_core_res():
    # a conv split over input channels continues its partial sums in core.res only while that
    # memory is a buffer (layout.acc_slot); under the paper's rules it is the kernel's scratch
    from tilesparse.program.layout import acc_tiles
    from tilesparse.program.records import SubVolume

    g = _bottleneck(128, 32, 2, 16)
    spec = next(s for s in pipeline.lower_layers(g)[0] if s.name == "_0_conv1")
    sub = SubVolume(oc=16, ci=64, h=4, w=4)  # int32 accumulators: 4 · 4 · 16 · 4 B = 1 KB a tile
    ours, paper = (acc_tiles(spec, _under("2x2", r), sub, 2) for r in ("tilesparse", "paper"))
    assert ours - paper == 16 * 1024 // 1024  # the 16 KB of core.res
