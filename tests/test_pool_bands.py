"""Average pools whose window does not fit half of a core's input buffer (squeeze-excitation global
pools at 224: mobilenet_v3_small's 56 x 56, efficientnet_b0's 112 x 112) run in bands of window rows:
step q brings band q, COMP keeps the int32 window sums resident and the last band divides
(docs/program.md, "Window bands"). Bit-exact against the integer reference and PyTorch, the
simulator's bytes / operations / cycles the time model's, the replay the estimate, hazards clean
(``verify`` runs the ordering check); a pool that fits compiles as before."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch
from sim_check import check_program
from torch import nn

from tilesparse.build import build_graph_from
from tilesparse.compiler import planning
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.errors import CapacityError
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.program import LayerGeometry, Program
from tilesparse.program.layout import band_rows, band_rules, splits_window, tile_window
from tilesparse.sim.replay import replay


class PoolNet(nn.Module):
    """conv 3 -> C (3x3, padding 1) -> relu -> pool -> 1x1 conv C -> 8."""

    def __init__(self, pool: nn.Module | None, c: int):
        super().__init__()
        self.c1 = nn.Conv2d(3, c, 3, padding=1)
        self.pool = pool
        self.fc = nn.Conv2d(c, 8, 1)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        y = y.mean((2, 3), keepdim=True) if self.pool is None else self.pool(y)
        return self.fc(y)


@functools.cache
def _build(pool_key: str, c: int, size: int):
    torch.manual_seed(0)
    pool = {"mean": None,
            "pad": nn.AvgPool2d(46, 46, padding=1, count_include_pad=False),
            "ceil": nn.AvgPool2d(46, 46, padding=3, ceil_mode=True),
            "rect": nn.AvgPool2d((60, 30), (60, 30))}[pool_key]
    return build_graph_from(PoolNet(pool, c).eval(), input_shape=(1, 3, size, size))


def _pool(prog: Program):
    (rec,) = [r for r in prog.layers if r.kind == "avgpool"]
    return rec


def _window_bytes(rec, q: int) -> int:
    """Bytes of band q's window of a 1 x 1 tile for ``sub.ci`` channels."""
    return tile_window(band_rules(rec.geometry, rec.loops.n_q, q), (0, 1, 0, 1)).positions * rec.sub.ci


@pytest.mark.parametrize("c,size,array", [(16, 64, "2x2"), (8, 96, "2x2"), (16, 64, "4x4")])
def test_global_pool_in_bands_bit_exact(c, size, array):
    """A global average pool whose plane does not fit half of core.in (64 x 64 x 8 ch = 32 KiB against
    8 KiB): the fewest bands that fit, every band within half the buffer, outputs written once, at the
    last band, and the whole program bit-exact with its accounting and replay equal to the time model."""
    prog = check_program(_build("mean", c, size), array, (1, 3, size, size))
    rec = _pool(prog)
    half = prog.hw.core.input_buffer_bytes // 2
    n_q = rec.loops.n_q
    assert rec.geometry.kernel == (size, size) and splits_window(rec.geometry, n_q)
    assert size * size * rec.sub.ci > half  # the whole window does not fit ...
    assert max(_window_bytes(rec, q) for q in range(n_q)) <= half  # ... its bands do
    fewer = dataclasses.replace(rec.loops, n_q=n_q - 1)  # and no fewer bands would
    assert n_q == 2 or max(_window_bytes(dataclasses.replace(rec, loops=fewer), q) for q in range(n_q - 1)) > half
    # its channel units (8 channels) spread over the columns, each streaming its own plane
    assert len({cw.col for cw in rec.cores if not cw.empty}) == min(c // 8, prog.hw.cols)
    li = prog.layers.index(rec)
    ins = [i for i in prog.instrs if i.layer == li]
    assert {i.q for i in ins if i.op == "LOADFM"} == set(range(n_q))
    assert {i.q for i in ins if i.op == "WRITEFM"} == {n_q - 1}  # WRITEFM only after the last band
    # step q moves band q's rows of the windows: its share of the chunk's bytes, row for row
    loadfm = {(i.k, i.q): i.nbytes for i in ins if i.op == "LOADFM"}
    for k in range(rec.loops.n_k):
        total = sum(loadfm[k, q] for q in range(n_q))
        for q in range(n_q):
            r0, r1 = band_rows(rec.geometry, n_q, q)
            assert loadfm[k, q] * size == total * (r1 - r0)
    assert sum(loadfm.values()) >= c * size * size  # every input value moves
    assert sum(i.nbytes for i in ins if i.op == "COMP") == c * size * size  # one add per input value
    # the clocked replay equals the time model layer by layer, the banded pool among them
    spans, model = replay(prog).layers, estimate_program(prog).layers
    assert [s.seconds for s in spans] == pytest.approx([sec for _, _, sec in model], rel=1e-9)


@pytest.mark.parametrize("pool_key,size", [("pad", 92), ("ceil", 92), ("rect", 120)])
def test_strided_pools_in_bands_bit_exact(pool_key, size):
    """Pools with several outputs, padding (counted or not in the divisor), ceil mode and a
    rectangular kernel: bands of each window, every tile's sums resident across the bands."""
    for array in ("2x2", "4x4"):
        prog = check_program(_build(pool_key, 8, size), array, (1, 3, size, size))
        assert _pool(prog).loops.n_q > 1


def test_banded_program_saves_and_reloads(tmp_path):
    prog = compile_graph(_build("mean", 16, 64).graph, "2x2")
    path = tmp_path / "p.tsp"
    prog.save(path)
    back = Program.load(path)
    assert back.listing() == prog.listing()
    assert _pool(back).loops == _pool(prog).loops


def test_bands_cover_the_window_once():
    """Band q's windows are the rows [r0, r1) of each window; together the bands are the window."""
    g = LayerGeometry("avgpool", 8, 92, 92, 8, 2, 2, kernel=(46, 46), stride=(46, 46), padding=(1, 1))
    for n_q in (2, 3, 7, 46):
        rows = [band_rows(g, n_q, q) for q in range(n_q)]
        assert rows[0][0] == 0 and rows[-1][1] == 46 and all(b > a for a, b in rows)
        assert all(rows[q][1] == rows[q + 1][0] for q in range(n_q - 1))
        for tile in [(0, 1, 0, 1), (1, 2, 0, 2), (0, 2, 1, 2)]:
            whole = tile_window(g, tile)
            bands = [tile_window(band_rules(g, n_q, q), tile) for q in range(n_q)]
            assert all(np.array_equal(b.cols, whole.cols) for b in bands)
            got = np.sort(np.concatenate([b.rows for b in bands]))
            assert np.array_equal(got, np.sort(whole.rows))


def test_only_average_pools_whose_windows_do_not_touch_take_bands():
    """A maxpool, or an average pool with overlapping windows, keeps its one q (a record claiming
    bands for it is refused)."""
    assert LayerGeometry("avgpool", 8, 64, 64, 8, 1, 1, kernel=(64, 64), stride=(64, 64)).bandable
    assert not LayerGeometry("maxpool", 8, 64, 64, 8, 1, 1, kernel=(64, 64), stride=(64, 64)).bandable
    assert not LayerGeometry("avgpool", 8, 64, 64, 8, 33, 33, kernel=(32, 32), stride=(1, 1)).bandable
    prog = compile_graph(_build("mean", 16, 64).graph, "2x2")
    rec = _pool(prog)
    with pytest.raises(ValueError, match="n_q = 4"):
        dataclasses.replace(rec, geometry=dataclasses.replace(rec.geometry, kind="maxpool"))
    too_many = dataclasses.replace(rec.loops, n_q=65)
    with pytest.raises(ValueError, match="n_q = 65"):
        dataclasses.replace(rec, loops=too_many)


def test_global_maxpool_that_does_not_fit_is_still_a_capacity_error():
    torch.manual_seed(0)
    built = build_graph_from(PoolNet(nn.MaxPool2d(64), 16).eval(), input_shape=(1, 3, 64, 64))
    with pytest.raises(CapacityError, match="'pool'.*input tile 32768 B > half the input buffer"):
        compile_graph(built.graph, "2x2")


def test_pool_that_fits_compiles_as_before(monkeypatch):
    """A global pool whose plane fits (32 x 32 x 8 ch = 8 KiB, half of core.in) takes one q, and its
    program is the one compiled with window bands switched off, instruction for instruction."""
    built = _build("mean", 16, 32)
    prog = compile_graph(built.graph, "2x2")
    assert _pool(prog).loops.n_q == 1
    monkeypatch.setattr(planning, "window_bands", lambda spec, hw, sub: 1)
    before = compile_graph(built.graph, "2x2")
    assert prog.listing() == before.listing()
    assert prog.layers == before.layers and prog.instrs == before.instrs
    assert np.array_equal(prog.per_iter, before.per_iter)
