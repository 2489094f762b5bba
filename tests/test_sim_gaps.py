"""The contract gaps between front end, compiler and simulator, closed end to end:

1. a concat operand at another exponent (a max-pool branch) is copied into its slice with its
   shift, bit-exact against the integer reference;
2. a fused add's residual tile lives in ``core.res`` and ``partition.misfits`` counts it;
3. LOADFM / WRITEFM carry the staging locks, and dropping one is caught by the ordering check;
4. listing totals (``Instr.nbytes``) equal the bytes the simulator moved, residuals included;
5. a program file runs on a real-valued input without the graph (``meta["input_scale_exp"]``).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json

import numpy as np
import pytest
import torch
from sim_helpers import check_bit_exact
from torch import nn
from typer.testing import CliRunner

from tilesparse.cli.main import app
from tilesparse.compiler import planning
from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.partition import (
    Grid,
    SubVolume,
    acc_slot,
    acc_tiles,
    assign_cores,
    misfits,
    residual_capacity,
)
from tilesparse.compiler.pipeline import compile_graph, lower_layers
from tilesparse.compiler.steps import WeightIndex, layer_steps
from tilesparse.frontend import build_graph
from tilesparse.hw import load_array
from tilesparse.ir.graph import Op
from tilesparse.program import Lock, Operand
from tilesparse.quant import IntegerReference, quantize_input
from tilesparse.sim import HazardError, SimulationError, check_ordering, simulate
from tilesparse.sim import layer as sim_layer

PX = 12  # small maps keep every test under a second


class ConvPoolCat(nn.Module):
    """cat(conv(x) scaled up, maxpool(x)): the max-pool keeps x's exponent, the concat takes the
    conv's larger one, so the pool branch needs a non-zero shift into the concat."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.head = nn.Conv2d(24, 8, 1)
        with torch.no_grad():
            self.conv.weight.mul_(40.0)

    def forward(self, x):
        return self.head(torch.cat([self.conv(x), self.pool(x)], 1))


class ResidualFromInput(nn.Module):
    """Two fused adds whose residual is the graph input (DDR): one whose conv also reads the input
    from DDR, one whose conv reads a MemTile buffer (only the residual comes through staging)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        y = torch.relu(self.a(x) + x)
        return self.c(self.b(torch.relu(y)) + x)


@functools.cache
def _graph(cls):
    torch.manual_seed(0)
    return build_graph(cls(), input_shape=(1, 8, PX, PX))


def _x(g, seed=1):
    return np.random.default_rng(seed).standard_normal(g.inputs[0].out.shape).astype(np.float32)


# ---- 1. concat shifts --------------------------------------------------------------------------
@pytest.mark.parametrize("array", ["2x3", "5x5"])
def test_shifted_concat_operand_is_copied_with_its_shift(array):
    g = _graph(ConvPoolCat)
    cat = g.of(Op.CONCAT)[0]
    pool = g.of(Op.MAXPOOL)[0]
    conv = g.node(cat.inputs[0])
    shifts = dict(zip(cat.inputs, cat.attrs["input_shifts"], strict=True))
    # exponents: the pool keeps the input's, the concat takes the largest operand's (the conv's)
    assert pool.out.scale_exp == g.inputs[0].out.scale_exp < conv.out.scale_exp == cat.out.scale_exp
    assert shifts[pool.name] == cat.out.scale_exp - pool.out.scale_exp > 0
    assert "write_into" not in pool.attrs and conv.attrs["write_into"] == (cat.name, 0)
    prog = compile_graph(g, array)
    copies = [r for r in prog.layers if r.kind == "copy"]
    assert [(r.name, r.attrs["shift"], r.output.c_offset) for r in copies] == [
        (f"{cat.name}.copy_{pool.name}", shifts[pool.name], 16)]
    rep = check_bit_exact(g, prog)
    # hand check of the slice: the pool's int8 values shifted right with round-half-up
    ref = IntegerReference(g).run(_x(g))
    s = shifts[pool.name]
    want = (ref[pool.name].astype(np.int64) + (1 << (s - 1))) >> s
    assert np.array_equal(rep.sim.outputs[copies[0].name], want[0])


def test_unshifted_operands_still_write_into_their_slice():
    """Only operands that need a shift lose the mark (Inception-like TinyInception keeps them)."""
    from frontend_nets import TinyInception, randomize_bn

    torch.manual_seed(0)
    g = build_graph(randomize_bn(TinyInception()), input_shape=(1, 3, 16, 16))
    for cat in g.of(Op.CONCAT):
        for name, s in zip(cat.inputs, cat.attrs["input_shifts"], strict=True):
            w = g.node(name).attrs.get("write_into")
            assert not (s and w is not None and w[0] == cat.name), (cat.name, name, s)
    marked = [n.name for n in g if "write_into" in n.attrs]
    assert marked  # the concat branches at the concat's exponent still write straight into it


# ---- 2. residual tile in core.res ---------------------------------------------------------------
def _fused_spec(residual: bool) -> LayerSpec:
    return LayerSpec(name="c", kind="conv", inputs=("x",), ci=8, hi=16, wi=16, co=64, ho=16, wo=16,
                     kernel=(1, 1), mask=np.ones((8, 1), bool), fused_add="add" if residual else "",
                     residual="r" if residual else "")


def test_fits_counts_the_residual_tile_against_core_res():
    hw = load_array("4x4")
    c = hw.core
    assert residual_capacity(hw) == c.data_memory_bytes - c.input_buffer_bytes - c.output_buffer_bytes \
        - c.weight_buffer_bytes == 16384  # the AIE2 preset: 64 KB − 3 × 16 KB
    small = hw.model_copy(update={"core": c.model_copy(update={"data_memory_bytes": 3 * 16384 + 1024})})
    assert residual_capacity(small) == 1024
    sub = SubVolume(oc=16, ci=8, h=8, w=8)  # residual tile 16·8·8 = 1024 B > 512 B (half of core.res)
    why = misfits(_fused_spec(True), small, sub, 0, 1)
    assert any("residual tile 1024 B > half of core.res (512 B" in w for w in why), why
    assert not misfits(_fused_spec(False), small, sub, 0, 1)  # the same conv without an add fits
    assert not misfits(_fused_spec(True), hw, sub, 0, 1)  # and fits the real core's 8 KB half


# ---- 3. staging locks ---------------------------------------------------------------------------
@functools.cache
def _residual_prog(array: str):
    return compile_graph(_graph(ResidualFromInput), array)


STAGE_IN_FULL, STAGE_IN_EMPTY = Lock.parity("stage_in", "full"), Lock.parity("stage_in", "empty")
STAGE_OUT_FULL, STAGE_OUT_EMPTY = Lock.parity("stage_out", "full"), Lock.parity("stage_out", "empty")


def _steps(prog):
    out: dict[tuple[int, int], list[int]] = {}
    for i, ins in enumerate(prog.instrs):
        out.setdefault((ins.layer, ins.step), []).append(i)
    return out


def test_staging_locks_pair_load_with_loadfm_and_writefm_with_write():
    prog = _residual_prog("2x2")
    n_in = n_out = 0
    for idxs in _steps(prog).values():
        ops = {prog.instrs[i].op: prog.instrs[i] for i in idxs}
        if "LOAD" in ops:
            n_in += 1
            assert (ops["LOAD"].acquire, ops["LOAD"].release) == ((STAGE_IN_EMPTY,), (STAGE_IN_FULL,))
            assert STAGE_IN_FULL in ops["LOADFM"].acquire and STAGE_IN_EMPTY in ops["LOADFM"].release
            assert Operand.staging("stage_in") in ops["LOADFM"].src
        elif "LOADFM" in ops:
            assert all(lk.name != "stage_in" for lk in ops["LOADFM"].acquire)
            assert all(o.memory != "staging" for o in ops["LOADFM"].src)
        if "WRITE" in ops:
            n_out += 1
            assert (ops["WRITE"].acquire, ops["WRITE"].release) == ((STAGE_OUT_FULL,), (STAGE_OUT_EMPTY,))
            assert STAGE_OUT_EMPTY in ops["WRITEFM"].acquire and STAGE_OUT_FULL in ops["WRITEFM"].release
            assert ops["WRITEFM"].dst == (Operand.staging("stage_out"),)
    assert n_in and n_out
    check_ordering(prog)  # the real locks order everything: no hazard, no deadlock


def test_loadfm_src_names_memtile_and_staging_when_only_the_residual_is_in_ddr():
    prog = _residual_prog("2x2")
    rec = next(r for r in prog.layers if r.fused_add and prog.buffers[r.inputs[0].buffer]["memory"] == "memtile")
    assert prog.buffers[rec.inputs[-1].buffer]["memory"] == "ddr"  # the residual is the graph input
    li = prog.layers.index(rec)
    srcs = {ins.src for ins in prog.instrs if ins.layer == li and ins.op == "LOADFM"}
    buf = rec.inputs[0].buffer
    assert srcs == {(Operand.memtile(buf, prog.buffers[buf]["offset"]), Operand.staging("stage_in"))}
    assert {"+".join(map(str, s)) for s in srcs} == {f"memtile:{buf}@{prog.buffers[buf]['offset']}+memtile.stage_in"}


@pytest.mark.parametrize("op,field,lock", [("LOADFM", "acquire", "stage_in[i%2].full"),
                                           ("WRITEFM", "release", "stage_out[i%2].full")])
def test_dropping_a_staging_lock_is_caught(op, field, lock):
    """LOADFM without ``stage_in.full`` reads staging before LOAD filled it (hazard); WRITEFM
    without releasing ``stage_out.full`` leaves WRITE waiting forever (deadlock)."""
    prog = copy.deepcopy(_residual_prog("2x2"))
    i = next(i for i, ins in enumerate(prog.instrs) if ins.op == op and lock in map(str, getattr(ins, field)))
    ins = prog.instrs[i]
    kept = tuple(x for x in getattr(ins, field) if str(x) != lock)
    prog.instrs = prog.instrs[:i] + (dataclasses.replace(ins, **{field: kept}),) + prog.instrs[i + 1:]
    match = r"reads stage_in\[0\] before LOAD" if op == "LOADFM" else r"deadlock: WRITE #\d+ .* stage_out\[0\].full"
    with pytest.raises(HazardError, match=match):
        check_ordering(prog)


# ---- 4. totals ----------------------------------------------------------------------------------
@pytest.mark.parametrize("array", ["2x2", "3x5"])
def test_residual_in_ddr_bit_exact_and_totals(array):
    """Per-iteration bytes and listing totals equal what the simulator moved, for fused adds whose
    residual (and input) live in DDR: the residual is neither double counted nor forgotten."""
    g, prog = _graph(ResidualFromInput), _residual_prog(array)
    assert sum(bool(r.fused_add) for r in prog.layers) == 2
    rep = check_bit_exact(g, prog)
    for a in rep.sim.accounts:
        assert a.ok and a.cycles_ok, (a.name, a.notes)
        assert a.totals_ok, (a.name, a.sim_total, a.listed_total)
    # hand count for the first fused conv: its LOADFM total includes one residual tile per output
    # element (8 channels × 12 × 12) on top of the windows
    first = rep.sim.accounts[0]
    assert first.sim_total["LOADFM"] - first.sim_total["LOAD"] == 0  # all its inputs come from DDR
    assert first.listed_total["LOAD"] >= 8 * PX * PX * 2


# ---- 5. real-valued input without the graph -----------------------------------------------------
def test_program_file_runs_on_a_real_input(tmp_path):
    g = _graph(ConvPoolCat)
    prog = compile_graph(g, "2x2")
    assert prog.meta["input_scale_exp"] == g.inputs[0].out.scale_exp
    path = prog.save(tmp_path / "p.tsp")
    x = _x(g, seed=5)
    from tilesparse.program import Program

    loaded = Program.load(path)
    res = simulate(loaded, x[0], progress=False)
    ref = IntegerReference(g).run(x)
    out = g.outputs[0].inputs[0]
    assert np.array_equal(next(iter(res.final.values())), ref[out][0])
    # the int8 path gives the same, through quant's own input quantization
    res8 = simulate(loaded, quantize_input(g, x)[0], progress=False)
    assert all(np.array_equal(res8.final[k], v) for k, v in res.final.items())
    np.save(tmp_path / "x.npy", x)
    cli = CliRunner().invoke(app, ["simulate", str(path), "--input", str(tmp_path / "x.npy"),
                                   "--json", str(tmp_path / "r.json")])
    assert cli.exit_code == 0, cli.output
    assert json.loads((tmp_path / "r.json").read_text())["accounting_ok"]


def test_real_input_needs_the_input_exponent():
    prog = copy.deepcopy(compile_graph(_graph(ConvPoolCat), "2x2"))
    prog.meta.pop("input_scale_exp")
    with pytest.raises(SimulationError, match="input_scale_exp"):
        simulate(prog, np.zeros((8, PX, PX), np.float32), progress=False)


# ---- 6. partial sums continue in core.res -------------------------------------------------------
class WideOneByOne(nn.Module):
    """A 1x1 conv with more input channels than one weight chunk holds (ci split, n_q > 1) and
    no fused add, so its resident partial sums may continue from core.out into core.res."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 256, 1)
        self.b = nn.Conv2d(256, 64, 1)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_partial_sums_continue_in_core_res_bit_exact():
    g = build_graph(WideOneByOne(), input_shape=(1, 8, 16, 16))
    # accumulators of a 2x16x64 tile: 8 KB; core.out keeps 16 KB − 2 int8 tiles (4 KB): one tile,
    # core.res (16 KB, no fused add here) two more — a spatial group of three tiles
    sub = SubVolume(oc=64, ci=64, h=2, w=16)
    spec = LayerSpec(name="b", kind="conv", inputs=("x",), ci=256, hi=16, wi=16, co=64, ho=16, wo=16,
                     mask=np.ones((8, 32), bool))
    hw = load_array("1x1")
    assert acc_tiles(spec, hw, sub, n_q=4) == 3
    assert [acc_slot(spec, hw, sub, 4, i) for i in range(4)] == [("out", 0), ("res", 0), ("res", 8192), None]
    fused = dataclasses.replace(spec, fused_add="add", residual="r")
    assert acc_tiles(fused, hw, sub, n_q=4) == 1  # a fused add's residual tiles own core.res
    assert any("only 1 fit in the output buffer (" in w for w in misfits(fused, hw, sub, 0, 4, tiles_per_group=2))

    prog = compile_graph(g, "1x1", chooser=lambda node, hw: sub if node.name == "b" else None)
    rec = next(r for r in prog.layers if r.name == "b")
    assert (rec.loops.n_q, rec.loops.tiles_per_group, rec.loops.n_s) == (4, 3, 3)
    check_bit_exact(g, prog)


# ---- 7. columns tiling the map in two dimensions ------------------------------------------------
class SeventeenSquare(nn.Module):
    """17×17 maps: over 8 columns a width split gives 3 columns to some and 2 to others; a tiling
    of the map in bands (``partition.col_tiles``) balances them better, and the search takes it."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 64, 3, padding=1)
        self.b = nn.Conv2d(64, 64, 3, padding=1)
        self.p = nn.MaxPool2d(3, 1, 1)

    def forward(self, x):
        return self.p(self.b(torch.relu(self.a(x))))


def test_two_dimensional_column_tiling_is_bit_exact():
    torch.manual_seed(0)
    g = build_graph(SeventeenSquare(), input_shape=(1, 8, 17, 17))
    prog = compile_graph(g, "2x8")
    convs = [r for r in prog.layers if r.kind == "conv"]  # (the pool slides its windows over
    assert {r.grid.col_axis for r in convs} == {"hw"}  # whole rows with channels across columns)
    for r in convs:  # the busiest column computes fewer positions than a 3-wide strip (51)
        assert max((c.h1 - c.h0) * (c.w1 - c.w0) for c in r.cores if c.oc1 > c.oc0) < 17 * 3
    check_bit_exact(g, prog)


# ---- 8. output-channel chunks balanced by kept blocks -------------------------------------------
class SkewedBlocks(nn.Module):
    """A 16 → 48 1x1 conv whose last three block rows keep one of their two blocks: cut every 32
    channels its chunks would hold 7 and 2 blocks; balanced they hold 4 and 5 (16 and 32 channels)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 16, 1)
        self.b = nn.Conv2d(16, 48, 1)
        with torch.no_grad():
            self.b.weight[24:, 8:] = 0

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_chunks_balanced_by_kept_blocks_are_bit_exact():
    torch.manual_seed(0)
    g = build_graph(SkewedBlocks(), input_shape=(1, 8, 6, 6))
    sub = SubVolume(oc=32, ci=16, h=6, w=6)
    prog = compile_graph(g, "1x1", chooser=lambda node, hw: sub if node.name == "b" else None)
    rec = next(r for r in prog.layers if r.name == "b")
    assert [(r.oc0, r.oc1) for r in rec.chunks] == [(0, 16), (16, 48)]
    rep = check_bit_exact(g, prog)
    assert all(a.ok and a.cycles_ok for a in rep.sim.accounts), [a.notes for a in rep.sim.accounts]
    # the simulator takes the chunks from the program: a row that leaves channels uncomputed (k = 1
    # repeating k = 0's) or reaches past its core is refused, not run
    x = quantize_input(g, np.zeros((1, 8, 6, 6), np.float32))[0]
    for o0, o1 in [(0, 16), (16, 56)]:
        bad = _with_chunks(prog, "b", lambda r, o0=o0, o1=o1: dataclasses.replace(r, oc0=o0, oc1=o1) if r.k == 1 else r)
        with pytest.raises(SimulationError, match="chunk rows of oc group 0"):
            simulate(bad, x, progress=False)
    # with two input-channel chunks, chunk k must hold the same channels in both (partial sums)
    sub2 = SubVolume(oc=32, ci=8, h=6, w=6)
    prog2 = compile_graph(g, "1x1", chooser=lambda node, hw: sub2 if node.name == "b" else None)
    rows = next(r for r in prog2.layers if r.name == "b").chunks
    assert sorted((r.k, r.q, r.oc0, r.oc1) for r in rows) == [(0, 0, 0, 16), (0, 1, 0, 16), (1, 0, 16, 48),
                                                               (1, 1, 16, 48)]
    check_bit_exact(g, prog2)
    # q = 1 cut as 0-32, 32-48: each q covers the channels, but not alike
    bad = _with_chunks(prog2, "b", lambda r: dataclasses.replace(r, oc0=32 * r.k, oc1=(32, 48)[r.k]) if r.q == 1 else r)
    with pytest.raises(SimulationError, match="the same for every q"):
        simulate(bad, x, progress=False)


def _with_chunks(prog, name: str, change):
    """A copy of ``prog`` whose layer ``name`` has its chunk rows passed through ``change``."""
    li = next(i for i, r in enumerate(prog.layers) if r.name == name)
    rec = dataclasses.replace(prog.layers[li], chunks=tuple(change(r) for r in prog.layers[li].chunks))
    return dataclasses.replace(prog, layers=prog.layers[:li] + (rec,) + prog.layers[li + 1:])


class FourWideBlocks(nn.Module):
    """4×8 blocks: chunks cut at 4-channel block rows need not align with the 8-channel slabs of
    the matmul unit, and COMP counts slabs from each chunk's first channel on both sides."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 24, 1)
        self.b = nn.Conv2d(24, 36, 3, padding=1)
        with torch.no_grad():
            self.b.weight[4:12, 8:] = 0
            self.b.weight[20:28, :16] = 0

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_chunks_not_aligned_to_slabs_time_as_simulated():
    torch.manual_seed(0)
    g = build_graph(FourWideBlocks(), input_shape=(1, 8, 5, 5), block=(4, 8))
    sub = SubVolume(oc=20, ci=24, h=5, w=5)  # chunks [0, 20) and [20, 36)
    prog = compile_graph(g, "1x1", chooser=lambda node, hw: sub if node.name == "b" else None)
    rec = next(r for r in prog.layers if r.name == "b")
    assert any(r.oc0 % 8 or r.oc1 % 8 for r in rec.chunks)  # some chunk starts or ends inside a slab
    rep = check_bit_exact(g, prog)
    assert all(a.cycles_ok for a in rep.sim.accounts), [(a.name, a.sim_cycles, a.model_cycles)
                                                        for a in rep.sim.accounts]


# ---- 9. grouped convs --------------------------------------------------------------------------
class Grouped(nn.Module):
    """A grouped 3x3 conv between two 1x1 convs; its chunks span several groups, each reading its
    own groups' input channels."""

    def __init__(self, groups: int, width: int):
        super().__init__()
        self.a = nn.Conv2d(8, 32, 1)
        self.b = nn.Conv2d(32, width, 3, padding=1, groups=groups)
        self.c = nn.Conv2d(width, 16, 1)

    def forward(self, x):
        return self.c(torch.relu(self.b(torch.relu(self.a(x)))))


@pytest.mark.parametrize("groups,width,array", [(2, 64, "2x2"), (4, 64, "1x1"), (32, 32, "4x4"), (32, 64, "2x2")])
def test_grouped_convs_are_bit_exact_and_timed_as_simulated(groups, width, array):
    torch.manual_seed(0)
    g = build_graph(Grouped(groups, width), input_shape=(1, 8, 6, 6))
    prog = compile_graph(g, array)
    rep = check_bit_exact(g, prog)
    assert all(a.ok and a.cycles_ok and a.totals_ok for a in rep.sim.accounts), [
        (a.name, a.notes) for a in rep.sim.accounts if not (a.ok and a.cycles_ok and a.totals_ok)]


# ---- 10. an add that overwrites the conv's own input -------------------------------------------
class AddOwnInput(nn.Module):
    """y + conv(y): the add may overwrite y's buffer (its last reader), but fused into the conv it
    would overwrite input rows that later tiles (3x3 halo) and channel chunks still read."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 16, 1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        y = self.a(x)
        return y + self.b(y)


def test_add_over_the_convs_own_input_is_not_fused_and_is_bit_exact():
    torch.manual_seed(0)
    g = build_graph(AddOwnInput(), input_shape=(1, 8, 8, 8))
    prog = compile_graph(g, "1x1")
    assert not any(r.fused_add for r in prog.layers)
    check_bit_exact(g, prog)


class AddOverConcat(nn.Module):
    """cat(a(x), b(x)) + d(c(cat)): the add, fused into d, overwrites the concat's buffer with the
    whole sum, which the check must compare with the add, not with a slice of the concat."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
        self.c, self.d = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        return y + self.d(self.c(y))


def test_add_overwriting_a_concat_is_checked_against_the_add():
    torch.manual_seed(0)
    g = build_graph(AddOverConcat(), input_shape=(1, 8, 4, 4))
    prog = compile_graph(g, "1x1")
    rec = next(r for r in prog.layers if r.name == "d")
    assert rec.fused_add and rec.output.buffer == "cat"
    rep = check_bit_exact(g, prog)
    assert next(c for c in rep.checks if c.layer == "d").reference == rec.fused_add


class SparseDepthwise(nn.Module):
    """A depthwise (7,1) conv keeping only channels 9 and 11: on 5x5 one core row's group has
    fewer chunks than the other's, and its empty chunks must not be charged COMP."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(8, 12, 1)
        self.b = nn.Conv2d(12, 12, (7, 1), groups=12)
        with torch.no_grad():
            keep = torch.zeros(12, 1, 1, 1)
            keep[[9, 11]] = 1
            self.b.weight.mul_(keep)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_empty_chunks_cost_no_comp():
    torch.manual_seed(1)
    g = build_graph(SparseDepthwise(), input_shape=(1, 8, 19, 16), block=(4, 8))
    spec = next(s for s in lower_layers(g)[0] if s.name == "b")
    hw, grid = load_array("5x5"), Grid(2, 2, "w")
    cores = assign_cores(spec, hw, grid)
    assert {(c.oc0, c.oc1) for c in cores if not c.empty} == {(0, 10), (10, 12)}
    widx = WeightIndex(spec)
    part = planning._partition(spec, hw, grid, cores, SubVolume(oc=4, ci=6, h=7, w=4), widx)
    # step k = 1: channels 4-7 keep nothing, and channels 10-11 have one chunk only (k = 0)
    comp = layer_steps(spec, hw, part, (False,), False, widx).pipe()["COMP"]
    assert part.n_k == 3 and not comp[1].any()


class CatTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 12, 1), nn.Conv2d(24, 8, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b(torch.cat([y, y], 1))


def test_an_operand_concatenated_twice_gets_two_named_copies():
    torch.manual_seed(0)
    g = build_graph(CatTwice(), input_shape=(1, 8, 5, 5))
    prog = compile_graph(g, "2x2")
    names = [r.name for r in prog.layers]
    assert len(set(names)) == len(names) and sum(".copy_" in n for n in names) == 2, names
    check_bit_exact(g, prog)


# ---- 11. sliding windows --------------------------------------------------------------------------
class ThreeByThree(nn.Module):
    def __init__(self, ci: int, co: int):
        super().__init__()
        self.a = nn.Conv2d(ci, co, 3, padding=1)

    def forward(self, x):
        return self.a(x)


def _sliding_prog(sub: SubVolume, ci: int = 8, co: int = 16):
    torch.manual_seed(0)
    g = build_graph(ThreeByThree(ci, co), input_shape=(1, ci, 9, 10))
    return g, compile_graph(g, "1x1", chooser=lambda node, hw: sub if node.name == "a" else None)


def test_sliding_windows_move_each_column_of_a_tile_row_once():
    """9×10 map, 3×2 tiles: 3 tile rows of 5 tiles. Each tile row moves its first window (5 rows
    × 4 columns) and then 2 new columns per tile: 5 × (4 + 4 × 2) = 60 positions × 8 channels,
    1440 B for the layer — whole windows would be 15 × 5 × 4 × 8 = 2400 B. Bit-exact, and the
    simulator's bytes are the listing's and the time model's."""
    g, prog = _sliding_prog(SubVolume(16, 8, 3, 2))
    li, rec = next((i, r) for i, r in enumerate(prog.layers) if r.name == "a")
    assert rec.loops.slide and rec.loops.n_tiles == 15
    rep = check_bit_exact(g, prog)
    acct = rep.sim.accounts[li]
    assert acct.sim_total["LOADFM"] == acct.listed_total["LOADFM"] == 3 * 5 * (4 + 4 * 2) * 8
    assert acct.ok, acct.notes


def test_sliding_window_restarts_at_each_step_bit_exact():
    """Input channels in 4 chunks of 8 with the int32 partial sums of 9 tiles of 3×2×128 resident
    (4 in core.out, 5 in core.res): the second spatial group starts at tile 9, in the middle of a
    tile row, and reloads its first window whole; the ring keeps running across the steps."""
    g, prog = _sliding_prog(SubVolume(128, 8, 3, 2), ci=32, co=128)
    li, rec = next((i, r) for i, r in enumerate(prog.layers) if r.name == "a")
    assert (rec.loops.n_q, rec.loops.tiles_per_group, rec.loops.n_s) == (4, 9, 2)
    rep = check_bit_exact(g, prog)
    acct = rep.sim.accounts[li]
    assert acct.ok and acct.totals_ok, acct.notes


def test_a_ring_too_small_for_the_locks_is_a_hazard(monkeypatch):
    """LOADFM i+1 waits only for COMP i−1 (ping-pong locks), so it must never write a column COMP
    i reads: a ring of two windows' columns guarantees it; one of a window and one column does
    not, and the ordering check finds the overwrite at column-slot level."""
    _, prog = _sliding_prog(SubVolume(16, 8, 3, 2))
    check_ordering(prog)
    monkeypatch.setattr(sim_layer, "ring_columns", lambda spec, sub: spec.window_extent(sub.w, 1) + 1)
    with pytest.raises(HazardError, match=r"LOADFM #\d+ .* overwrites core\.in ring .* still to be read by COMP #\d+"):
        check_ordering(prog)
