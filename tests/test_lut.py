"""SiLU, Sigmoid, Hardswish and Hardsigmoid as int8 → int8 lookup tables (op ``lut``), end to end.

The table against the float function of ``torch.nn.functional`` at the layer's scales (each entry
within half a step of the output scale unless saturated, and a few entries by hand); every module,
function and method form (in-place too) captured as the same ``lut`` node; small nets with each
activation after a conv, after an add, on the network input and as the network output compiled on
4x4 and 4x2, dense and 50 % 8x8, simulated bit-exact against the integer reference, within the
quantization tolerance of PyTorch in float, with the simulator's bytes, lookups and cycles equal to
the time model's; the table's bytes carried by the Program only; the lookup rate in COMP and in the
bound; mobilenet_v3_small and efficientnet_b0 now past their activations at capture.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tilesparse.build import build_graph_from
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.errors import CapacityError, ConfigError, UnsupportedOpError
from tilesparse.estimate.bounds import program_bounds
from tilesparse.hw import load_array
from tilesparse.ir.capture import capture
from tilesparse.ir.graph import Op
from tilesparse.models import get_model
from tilesparse.passes import GraphVerifyError
from tilesparse.passes import verify as verify_graph
from tilesparse.quant.lut import lut_table
from tilesparse.sim import verify

# the float functions, straight from PyTorch (not the package's own table of them)
TORCH_FN = {"silu": F.silu, "sigmoid": torch.sigmoid, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid}
MODULES = {"silu": nn.SiLU, "sigmoid": nn.Sigmoid, "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid}
SHAPE = (1, 3, 12, 12)


# -- the table --------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", sorted(TORCH_FN))
@pytest.mark.parametrize("e_in,e_out", [(-5, -7), (-4, -5), (-3, -8), (-6, -6)])
def test_table_within_half_a_step_of_the_float_function(fn, e_in, e_out):
    table = lut_table(fn, e_in, e_out)
    assert table.dtype == np.int8 and table.shape == (256,)
    q = np.arange(-128, 128)
    want = TORCH_FN[fn](torch.tensor(q * 2.0**e_in, dtype=torch.float64)).numpy() / 2.0**e_out
    got = table.astype(np.float64)
    inside = (want >= -128.5) & (want < 127.5)
    assert np.all(np.abs(got[inside] - want[inside]) <= 0.5)
    assert np.all(got[want >= 127.5] == 127) and np.all(got[want < -128.5] == -128)  # saturated


def test_table_entries_by_hand():
    # input step 1/32, output step 1/128: entry q + 128 for input q
    sig = lut_table("sigmoid", -5, -7)
    assert sig[128] == 64  # sigmoid(0) = 0.5 = 64/128
    assert sig[127 + 128] == 126  # sigmoid(127/32) = 0.98147 = 125.63/128
    assert sig[-128 + 128] == 2  # sigmoid(-4) = 0.01799 = 2.30/128
    hs = lut_table("hardsigmoid", -5, -7)
    assert (hs[128], hs[96 + 128], hs[-96 + 128], hs[32 + 128]) == (64, 127, 0, 85)  # 0.5, 1 (sat.), 0, 2/3
    hw = lut_table("hardswish", -4, -4)  # step 1/16 both sides
    assert (hw[128], hw[48 + 128], hw[-48 + 128], hw[-24 + 128]) == (0, 48, 0, -6)  # 0, 3, 0, −1.5·1.5/6


def test_table_rounds_half_up():
    """Exact halves (docs/quantization.md): hardsigmoid(x) = x/6 + 1/2 at x = ±3/8 (q = ±3 at step
    1/8) is 9/16 and 7/16, 4.5 and 3.5 output steps of 1/8: half up gives 5 and 4."""
    t = lut_table("hardsigmoid", -3, -3)
    assert (t[3 + 128], t[-3 + 128]) == (5, 4)


# -- capture ----------------------------------------------------------------------------------


class Act(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.f = f

    def forward(self, x):
        return self.f(self.conv(x))


FORMS = [
    ("silu", nn.SiLU()), ("silu", nn.SiLU(inplace=True)), ("silu", F.silu),
    ("silu", lambda x: F.silu(x, inplace=True)),
    ("sigmoid", nn.Sigmoid()), ("sigmoid", torch.sigmoid), ("sigmoid", F.sigmoid),
    ("sigmoid", lambda x: x.sigmoid()), ("sigmoid", lambda x: x.sigmoid_()), ("sigmoid", torch.sigmoid_),
    ("hardswish", nn.Hardswish()), ("hardswish", nn.Hardswish(inplace=True)), ("hardswish", F.hardswish),
    ("hardswish", lambda x: F.hardswish(x, True)),
    ("hardsigmoid", nn.Hardsigmoid()), ("hardsigmoid", nn.Hardsigmoid(inplace=True)),
    ("hardsigmoid", F.hardsigmoid), ("hardsigmoid", lambda x: F.hardsigmoid(x, inplace=True)),
]


@pytest.mark.parametrize("fn,form", FORMS)
def test_every_form_captures_as_one_lut_node(fn, form):
    g = capture(Act(form), (1, 3, 8, 8), "net")
    ops = [(n.op, dict(n.attrs).get("fn")) for n in g.nodes]
    assert ops == [(Op.INPUT, None), (Op.CONV2D, None), (Op.LUT, fn), (Op.OUTPUT, None)]


def test_unknown_fn_is_refused_by_verify():
    g = capture(Act(nn.SiLU()), (1, 3, 8, 8), "net")
    bad = g.replace_nodes([n.with_(attrs={"fn": "tanh"}) if n.op is Op.LUT else n for n in g])
    with pytest.raises(GraphVerifyError, match="fn 'tanh'"):
        verify_graph(bad)


# -- end to end -------------------------------------------------------------------------------


class Net(nn.Module):
    """act on the input → conv → act → conv (+ residual add) → act → conv → act as the output."""

    def __init__(self, fn: str):
        super().__init__()
        self.a0, self.a1, self.a2, self.a3 = (MODULES[fn]() for _ in range(4))
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 24, 1)

    def forward(self, x):
        y = self.a1(self.c1(self.a0(x)))
        z = self.a2(self.c2(y) + y)
        return self.a3(self.c3(z))


@pytest.fixture(scope="module")
def builds():
    """(fn, sparsity) -> the built graph and module, each once."""
    out = {}
    for fn in TORCH_FN:
        torch.manual_seed(0)
        net = Net(fn).eval()
        for sp in (None, 0.5):
            out[fn, sp] = build_graph_from(net, sparsity=sp, block=(8, 8), input_shape=SHAPE)
    return out


@pytest.mark.parametrize("array", ["4x4", "4x2"])
@pytest.mark.parametrize("sparsity", [None, 0.5])
@pytest.mark.parametrize("fn", sorted(TORCH_FN))
def test_compiles_and_simulates_bit_exact(builds, fn, sparsity, array):
    built = builds[fn, sparsity]
    g = built.graph
    assert [n.attrs["fn"] for n in g if n.op is Op.LUT] == [fn] * 4
    prog = compile_graph(g, array)
    assert sum(r.kind == "lut" for r in prog.layers) == 4
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    rep = verify(prog, g, x, module=built.module, progress=False)
    assert rep.ok and rep.float_check.ok and not rep.float_check.not_compared, rep.summary()
    for acc in rep.sim.accounts:  # the simulator's bytes, lookups and cycles are the time model's
        assert acc.sim_bytes == acc.model_bytes, (acc.name, acc.notes)
        assert acc.sim_macs == acc.model_macs, (acc.name, acc.notes)
        assert acc.sim_cycles == acc.model_cycles, (acc.name, acc.notes)
        assert acc.totals_ok, (acc.name, acc.sim_total, acc.listed_total)


def test_float_output_close_to_pytorch(builds):
    """The dequantized integer output against the module itself: a few output steps at most."""
    from tilesparse.quant.reference import IntegerReference

    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    for fn in TORCH_FN:
        built = builds[fn, None]
        got = IntegerReference(built.graph).dequantized_output(x)
        want = built.module(torch.from_numpy(x)).detach().numpy()
        step = 2.0 ** built.graph.outputs[0].out.scale_exp
        assert np.abs(got - want).max() <= 8 * step, fn


def test_table_travels_in_the_program_only(builds):
    """The table is the lut layer's chunk in the weight image (not a program param), and the
    simulator computes from those bytes: a corrupted table byte changes the simulated output."""
    g = builds["sigmoid", None].graph
    prog = compile_graph(g, "4x4")
    lut = next(r for r in prog.layers if r.kind == "lut" and r.name == "a3")
    assert not any(k.endswith(".table") for k in prog.params)
    table = g.param("a3", "table")
    for row in lut.chunks:
        assert (row.k, row.q, row.nbytes, row.with_bias) == (0, 0, 256, False)
        assert bytes(prog.weights[row.ddr_addr:row.ddr_addr + 256]) == table.tobytes()
    assert lut.packed_weight_bytes == 256 * len(lut.chunks)
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    assert verify(prog, g, x, progress=False).ok
    image = prog.weights.copy()
    for row in lut.chunks:  # every entry + 1 (wrapping): the lookups must read these bytes
        image[row.ddr_addr:row.ddr_addr + 256] += 1
    prog.weights = image
    rep = verify(prog, g, x, progress=False)
    assert not rep.ok and rep.first_mismatch.layer == "a3"


def test_lookup_rate_sets_comp_and_the_bound(builds):
    g = builds["hardswish", 0.5].graph
    hw = load_array("4x4")
    prog = compile_graph(g, hw)
    li, rec = next((i, r) for i, r in enumerate(prog.layers) if r.name == "a1")
    rate, call = hw.core.lut_lookups_per_cycle, hw.core.kernel_call_overhead_cycles
    assert rate == 4
    # COMP: the busiest core's lookups of a tile / 4 per cycle + the call overhead, per iteration
    for ins in prog.instrs:
        if ins.layer == li and ins.op == "COMP":
            per_iter = prog.iter_values(ins)
            sub = rec.sub
            assert per_iter.max() <= math.ceil(sub.oc * sub.h * sub.w / rate) + call
    bound = next(b for b in program_bounds(prog) if b.layer == "a1")
    assert bound.compute_s == pytest.approx(16 * 12 * 12 / (16 * rate * hw.clock_hz))


def test_weight_buffer_smaller_than_a_table_is_refused(builds, tmp_path):
    hw = load_array("2x2")
    small = hw.model_copy(update={"core": hw.core.model_copy(update={"weight_buffer_bytes": 512})})
    with pytest.raises(CapacityError, match="'a0'.*lut_table_bytes"):
        compile_graph(builds["silu", None].graph, small)


def test_lut_table_bytes_must_hold_a_table(tmp_path):
    p = tmp_path / "hw.yaml"
    p.write_text("rows: 2\ncols: 2\ncore: {lut_table_bytes: 128}\n")
    with pytest.raises(ConfigError, match="lut_table_bytes"):
        load_array(str(p))


# -- torchvision ------------------------------------------------------------------------------


@pytest.mark.parametrize("name,acts", [("mobilenet_v3_small", {"hardswish", "hardsigmoid"}),
                                       ("efficientnet_b0", {"silu", "sigmoid"})])
def test_mobile_nets_get_past_their_activations(name, acts):
    """The stem's Hardswish / SiLU and the squeeze-excitations' Hardsigmoid / Sigmoid are captured
    as lut nodes, and the multiplies after them as mul nodes (tests/test_mobile_ops.py)."""
    g = capture(get_model(name, seed=0), (1, 3, 64, 64), name)
    assert g.of(Op.MUL)
    assert {n.attrs["fn"] for n in g if n.op is Op.LUT} == acts


class CatNet(nn.Module):
    """Two tables writing straight into their slices of a concat, a third reading the concat."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.b = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(24, 8, 1)

    def forward(self, x):
        y = torch.cat([F.silu(self.a(x)), torch.sigmoid(self.b(x))], 1)
        return self.c(F.hardswish(y))


def test_tables_write_into_a_concat_at_its_exponent():
    """A table can produce any exponent: the concat's only readers are moved to the concat's, write
    their slices unshifted (no copy layer), and the whole net stays bit-exact."""
    torch.manual_seed(0)
    built = build_graph_from(CatNet().eval(), sparsity=0.5, input_shape=SHAPE)
    g = built.graph
    cat = next(n for n in g if n.op is Op.CONCAT)
    assert cat.attrs["input_shifts"] == (0, 0)
    assert all(g.node(i).attrs.get("write_into", (None,))[0] == cat.name for i in cat.inputs)
    assert {g.node(i).out.scale_exp for i in cat.inputs} == {cat.out.scale_exp}
    prog = compile_graph(g, "4x2")
    assert not any(r.kind == "copy" for r in prog.layers)
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    rep = verify(prog, g, x, module=built.module, progress=False)
    assert rep.ok and rep.sim.accounting_ok, rep.summary()


class Residual(nn.Module):
    """efficientnet's residual branch: torchvision's StochasticDepth around a SiLU block."""

    def __init__(self, p: float):
        super().__init__()
        from torchvision.ops import StochasticDepth

        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.SiLU()
        self.drop = StochasticDepth(p, "row")

    def forward(self, x):
        return self.drop(self.act(self.conv(x))) + x


def test_stochastic_depth_is_identity_in_eval_mode():
    g = capture(Residual(0.2), (1, 3, 8, 8), "net")
    assert [n.op for n in g] == [Op.INPUT, Op.CONV2D, Op.LUT, Op.ADD, Op.OUTPUT]


def test_stochastic_depth_in_training_is_refused():
    from torchvision.ops import StochasticDepth

    class Stuck(StochasticDepth):
        def train(self, mode: bool = True):  # stays in training mode through model.eval()
            return self

    net = Residual(0.2)
    net.drop = Stuck(0.2, "row")
    with pytest.raises(UnsupportedOpError, match="stochastic_depth with training=True"):
        capture(net, (1, 3, 8, 8), "net")
