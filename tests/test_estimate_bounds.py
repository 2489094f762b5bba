"""Lower bounds by hand, and estimates never below them."""

import pytest
from compiler_helpers import small_graph

from tilesparse.compiler.pipeline import compile_graph
from tilesparse.estimate.bounds import layer_bound, program_bounds
from tilesparse.estimate.report import layer_rows, summarize
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.reports.paper import TABLE2_MS, paper_ms


@pytest.mark.parametrize("arr", ["1x1", "2x2", "3x5", "7x7"])
def test_estimate_at_least_the_bound(arr):
    p = compile_graph(small_graph(), arr)
    t = estimate_program(p)
    for (name, _, secs), b in zip(t.layers, program_bounds(p), strict=True):
        assert secs >= b.bound_s * (1 - 1e-9), name
        # the halting floor is tighter than the bound but still below every estimate
        assert secs >= b.floor_s * (1 - 1e-9) and b.floor_s >= b.bound_s * (1 - 1e-12), name
    s = summarize(p, t)
    assert s.estimate_ms >= s.bound_ms and len(layer_rows(p, t)) == len(p.layers)


def test_conv_bound_by_hand():
    p = compile_graph(small_graph(), "2x2")
    rec = next(r for r in p.layers if r.name == "c1")  # 16x12x12 -> 24x12x12, 3x3, reads the graph input
    b = layer_bound(rec, p.buffers, p.hw)
    assert b.compute_s == pytest.approx(rec.kept_macs / (4 * 256 * 1e9))
    w = rec.packed_weight_bytes + rec.bias_bytes
    assert b.ddr_s == pytest.approx(max(w / (2 * 4e9), 16 * 144 / (2 * 4e9)))
    assert b.memtile_s == pytest.approx(max(w / (2 * 4e9), 16 * 144 / (2 * 4e9), 24 * 144 / (2 * 4e9)))
    # LOADWM halts the cores: compute and the weights over the 2 row channels add up
    assert b.floor_s == pytest.approx(max(rec.kept_macs / (4 * 256 * 1e9) + w / (2 * 4e9), b.ddr_s, b.memtile_s))


def test_paper_table_is_complete():
    assert set(TABLE2_MS) == {f"{r}x{r}" for r in range(2, 9)}
    assert paper_ms("resnet50", "4x4", False) == 10.77 and paper_ms("resnet50", "5x5", False) is None
    assert paper_ms("vgg16", "8x8", True) == 6.50 and paper_ms("vgg16", "4x2", True) is None
