"""benchmarks/paper_timelines.py on a reduced-resolution ResNet50 and on hand-built layer lists: the
paper's layer names found in a compiled program, and the table built from its time model."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import paper_timelines as pt  # noqa: E402

WANT = {"conv1": "conv1", "layer1.0.conv3": "layer1_0_conv3", "layer1.1.conv1": "layer1_1_conv1",
        "layer1.0.conv2": "layer1_0_conv2", "layer2.0.conv2": "layer2_0_conv2", "layer3.1.conv2": "layer3_1_conv2",
        "layer4.0.conv2": "layer4_0_conv2", "maxpool": "maxpool"}


@pytest.fixture(scope="module")
def r50():
    """ResNet50 at 64x64 on 4x4 under the paper's rules, with its time model (a few seconds)."""
    import torch

    from tilesparse.build import build_graph_from
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.estimate.timemodel import estimate_program
    from tilesparse.hw import load_array

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    g = build_graph_from("resnet50", sparsity=0.5, block=(8, 8), input_shape=(1, 3, 64, 64), quantized=False,
                         seed=0).graph
    torch.set_num_threads(old)
    prog = compile_graph(g, load_array("4x4").model_copy(update={"rules": "paper"}))
    return prog, estimate_program(prog)


def test_norm_spells_every_importers_name_alike():
    assert pt.norm("layer1.0.conv3") == pt.norm("layer1_0_conv3") == pt.norm("/Layer1/0/conv3/") == "layer1_0_conv3"


def test_the_papers_layers_map_to_ours(r50):
    prog, _ = r50
    assert prog.hw.rules == "paper"
    for key, name in WANT.items():
        assert prog.layers[pt.find_layer(prog, key)].name == name, key
    rec = prog.layers[pt.find_layer(prog, "layer1.0 residual add")]
    if rec.fused_add:  # today's compiler: the add runs inside the block's last conv
        assert rec.name.startswith("layer1_0_") and "layer1_0_conv3" in rec.attrs["add"]["inputs"]
    else:  # adds as layers of their own
        assert rec.kind == "add"


def _rec(name, out, ins=(), kind="conv", fused_add="", add_inputs=()):
    return SimpleNamespace(name=name, kind=kind, fused_add=fused_add, output=SimpleNamespace(buffer=out),
                           inputs=[SimpleNamespace(buffer=b) for b in ins],
                           attrs={"add": {"inputs": list(add_inputs)}} if fused_add else {})


def test_an_add_of_its_own_is_found_by_the_layers_it_reads():
    # adds as separate layers (the paper's rule): the block's add reads conv3's and the downsample's
    # buffers; the next block's add reads its conv3 and the first add; names prefixed by an importer
    layers = [_rec("m.layer1.0.conv3", "b0"), _rec("m.layer1.0.downsample.0", "b1"),
              _rec("m.add", "b2", ("b0", "b1"), kind="add"), _rec("m.layer1.1.conv3", "b3", ("b2",)),
              _rec("m.add_1", "b4", ("b3", "b2"), kind="add")]
    prog = SimpleNamespace(layers=layers, graph="hand")
    assert pt.find_layer(prog, "layer1.0 residual add") == 2
    assert pt.find_layer(prog, "layer1.1 residual add") == 4
    assert pt.find_layer(prog, "layer1.1.conv3") == 3  # a suffix after the importer's prefix


def test_a_fused_add_is_found_by_its_operands_not_its_residual_buffer():
    # the next block's conv reads the first add's output as its residual; only the first is layer1.0's
    layers = [_rec("layer1_0_conv3", "b0"), _rec("layer1_0_downsample_0", "b1", ("x", "b0"), fused_add="add",
                                                 add_inputs=("layer1_0_conv3", "layer1_0_downsample_0")),
              _rec("layer1_1_conv3", "b2", ("y", "b1"), fused_add="add_1", add_inputs=("layer1_1_conv3", "add"))]
    assert pt.find_layer(SimpleNamespace(layers=layers, graph="hand"), "layer1.0 residual add") == 1


def test_a_missing_or_ambiguous_layer_is_refused_by_name():
    layers = [_rec("a.conv1", "b0"), _rec("b.conv1", "b1"), _rec("maxpool", "b2")]
    prog = SimpleNamespace(layers=layers, graph="hand")
    with pytest.raises(KeyError, match="'layer9.9.conv1': no layer of program 'hand'"):
        pt.find_layer(prog, "layer9.9.conv1")
    with pytest.raises(KeyError, match=r"'conv1': 2 layers \(a_conv1, b_conv1\)"):
        pt.find_layer(prog, "conv1")


def test_the_table_holds_the_time_models_spans_and_busy_times(r50):
    prog, times = r50
    rows = pt.layer_rows(prog, times, "sparse")
    assert [r.key for r in rows] == [p.key for p in pt.PAPER_LAYERS]
    spans = {name: sec for name, _, sec in times.layers}
    for r, paper in zip(rows, pt.PAPER_LAYERS, strict=True):
        li = pt.find_layer(prog, r.key)
        comp = sum(it.busy_s for it in times.instrs
                   if prog.instrs[it.index].layer == li and prog.instrs[it.index].op == "COMP")
        assert r.span_s == spans[r.ours] and r.comp_s == pytest.approx(comp, rel=1e-12)
        assert (r.paper_span_s, r.paper_comp_s) == (paper.span_us[1] * 1e-6, paper.comp_us[1] * 1e-6)
        assert r.span_ratio == pytest.approx(r.span_s / r.paper_span_s, rel=1e-12)
        assert sum(r.busy_s.values()) >= r.span_s * (1 - 1e-9)  # some engine is busy all the time
        rec = prog.layers[li]
        steps = rec.loops.n_s * rec.loops.n_k * rec.loops.n_q
        assert f"{steps} step(s)" in r.partition and f"tile {rec.sub.h}x{rec.sub.w} px" in r.partition
    conv = rows[[r.key for r in rows].index("layer1.0.conv2")]  # 3x3 64->64 at 64x64: 64*64*9*16*16 MACs, half kept
    macs = 64 * 64 * 9 * 16 * 16
    assert prog.layers[pt.find_layer(prog, "layer1.0.conv2")].macs == macs
    assert conv.paper_peak_s == pytest.approx(macs / 2 / (16 * 256 * 1e9), rel=1e-12)
    assert conv.comp_s >= conv.peak_s  # never faster than the peak
    busy = dict((op, ours) for op, ours, _ in pt.busy_rows(prog, times, "sparse"))
    assert busy == {op: times.busy_by_op(prog).get(op, 0.0) for op in pt.PAPER_BUSY_MS["sparse"]}


def test_the_report_names_every_layer_and_explains_the_largest(r50):
    prog, times = r50
    run = {"mode": "sparse", "array": "4x4", "rules": "paper", "total_s": times.total_s,
           "replay_total_s": times.total_s, "rows": pt.layer_rows(prog, times, "sparse"),
           "busy": pt.busy_rows(prog, times, "sparse")}
    md = pt.markdown([run], "python benchmarks/paper_timelines.py --input 64", 1.0)
    for p in pt.PAPER_LAYERS:
        assert f"| {p.label} |" in md
    largest = md.split("## The largest differences")[1].split("## Reading")[0]
    assert largest.count("\n* **") == min(10, len(pt.PAPER_LAYERS))
    assert "busiest" in largest and "step(s)" in largest


def test_an_add_of_its_own_in_a_compiled_program():
    # two pools' outputs cannot take a fused add (no conv produces them): the add is a layer, found
    # through the buffers it reads
    import torch
    from torch import nn

    from tilesparse.build import build_graph_from
    from tilesparse.compiler.pipeline import compile_graph

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.pa, self.pb = nn.MaxPool2d(3, 1, 1), nn.AvgPool2d(3, 1, 1)

        def forward(self, x):
            return self.pa(x) + self.pb(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.layer1 = nn.Conv2d(8, 16, 3, padding=1), nn.Sequential(Block())

        def forward(self, x):
            return self.layer1(torch.relu(self.conv1(x)))

    g = build_graph_from(Net().eval(), input_shape=(1, 8, 8, 8), quantized=False, seed=0).graph
    prog = compile_graph(g, "2x2")
    rec = prog.layers[pt.find_layer(prog, "layer1.0 residual add")]
    assert rec.kind == "add" and not rec.fused_add
    assert sorted(pt._producers(prog, pt.find_layer(prog, "layer1.0 residual add"))) == ["layer1_0_pa", "layer1_0_pb"]
