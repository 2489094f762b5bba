"""Mobile-network ops end to end (issue 21 item 3): adaptive average pooling with unequal windows,
and the element-wise / broadcast multiply of squeeze-excitation blocks.

The integer reference divides each window's sum by the window's own size, rounded half up; the
compiler runs such a pool as COMP kind ``adaptive_avgpool`` (every tile reads the whole input
plane) and the simulator must match it bit for bit, on 4x4 and 4x2, dense and 50 % 8x8, with the
time model's bytes, operations and cycles; alexnet at 64x64 (adaptive pool 1x1 -> 6x6) too.
"""

from __future__ import annotations

import functools
from fractions import Fraction

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
from tilesparse.ir.graph import Op
from tilesparse.models import get_model
from tilesparse.quant import rounding as R
from tilesparse.quant.reference import IntegerReference
from tilesparse.sim.compute import adaptive_pool_tile

SHAPE = (1, 3, 10, 10)


def test_adaptive_windows_follow_pytorch_rule():
    """start = floor(i·in/out), end = ceil((i+1)·in/out), by hand for 5 -> 3 and 1 -> 6."""
    assert R.adaptive_windows(5, 3) == [(0, 2), (1, 4), (3, 5)]
    assert R.adaptive_windows(1, 6) == [(0, 1)] * 6
    assert R.adaptive_windows(7, 3) == [(0, 3), (2, 5), (4, 7)]


def test_pool_tile_is_the_rounded_exact_mean():
    """Against PyTorch's float adaptive pool: each output is its exact mean rounded half up."""
    rng = np.random.default_rng(0)
    x = rng.integers(-128, 128, (5, 7, 4)).astype(np.int8)
    got = adaptive_pool_tile(x, (3, 4), (0, 3, 0, 4)).reshape(3, 4, 4)
    t = torch.from_numpy(x.astype(np.float64)).permute(2, 0, 1)[None]
    mean = F.adaptive_avg_pool2d(t, (3, 4))[0].permute(1, 2, 0).numpy()
    assert np.array_equal(got, np.floor(mean + 0.5 + 1e-9).astype(np.int64))
    # a tile of the grid: rows 1..3, column 2..4 of the same outputs
    part = adaptive_pool_tile(x, (3, 4), (1, 3, 2, 4)).reshape(2, 2, 4)
    assert np.array_equal(part, got[1:3, 2:4])
    # one window by hand: rows [1, 4) x columns [0, 2) of channel 0, divisor 6
    s = int(x[1:4, 0:2, 0].astype(np.int64).sum())
    q = Fraction(s, 6) + Fraction(1, 2)
    assert got[1, 0, 0] == q.numerator // q.denominator


class PoolNet(nn.Module):
    """stride-2 conv to 5x5 -> adaptive pool 5x5 -> 3x3 (windows of 2, 3, 2 rows and columns:
    divisors 4, 6 and 9) -> conv."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((3, 3))
        self.c2 = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        return self.c2(self.pool(F.relu(self.c1(x))))


@functools.cache
def _pool_build(sparsity):
    torch.manual_seed(0)
    return build_graph_from(PoolNet().eval(), sparsity=sparsity, block=(8, 8), input_shape=SHAPE)


_check = check_program


@pytest.mark.parametrize("array", ["4x4", "4x2"])
@pytest.mark.parametrize("sparsity", [None, 0.5])
def test_unequal_adaptive_pool_bit_exact(sparsity, array):
    prog = _check(_pool_build(sparsity), array, SHAPE)
    (rec,) = [r for r in prog.layers if r.kind == "adaptive_avgpool"]
    g = rec.geometry
    assert (g.hi, g.wi, g.ho, g.wo) == (5, 5, 3, 3)
    assert g.kernel == (3, 3)  # the largest window: rows / columns [1, 4) of 5 -> 3
    assert rec.kept_macs == 16 * 3 * 3 * 9  # channels x outputs x the largest window's taps


def test_equal_adaptive_pool_stays_an_avgpool():
    """Exact divisions keep the plain strided average pool (programs unchanged)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.AdaptiveAvgPool2d((5, 2)))
    built = build_graph_from(net.eval(), input_shape=SHAPE)
    prog = compile_graph(built.graph, "4x4")
    assert [r.kind for r in prog.layers] == ["conv", "avgpool"]
    assert prog.layers[1].geometry.kernel == (2, 5)


class AlexTail(nn.Module):
    """alexnet's shape in small: features ending at 1x1 (strided conv, 3x3 max pool), the adaptive
    pool 1x1 -> 6x6 that repeats that value, flatten, dropout and a two-layer classifier."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 5, stride=4, padding=2), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2))
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(nn.Dropout(), nn.Linear(16 * 36, 32), nn.ReLU(inplace=True),
                                        nn.Linear(32, 10))

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _check_upsampling_pool(prog):
    (rec,) = [r for r in prog.layers if r.kind == "adaptive_avgpool"]
    assert (rec.geometry.hi, rec.geometry.wi, rec.geometry.ho, rec.geometry.wo) == (1, 1, 6, 6)


@pytest.mark.parametrize("array", ["4x4", "4x2"])
@pytest.mark.parametrize("sparsity", [None, 0.5])
def test_pool_from_1x1_to_6x6_bit_exact(sparsity, array):
    torch.manual_seed(0)
    built = build_graph_from(AlexTail().eval(), sparsity=sparsity, block=(8, 8), input_shape=SHAPE)
    _check_upsampling_pool(_check(built, array, SHAPE))


def test_alexnet_64px_bit_exact():
    """At 64x64 alexnet's features end at 1x1; its adaptive pool to 6x6 repeats that value. One
    combination (50 % 8x8 on 4x2): its classifier (9216 -> 4096 -> 4096) costs ~30 CPU-s a
    combination, and the same pool and layers run on both arrays, dense and sparse, in AlexTail."""
    built = build_graph_from(get_model("alexnet", seed=0), sparsity=0.5, block=(8, 8), input_shape=(1, 3, 64, 64))
    _check_upsampling_pool(_check(built, "4x2", (1, 3, 64, 64)))


def test_reciprocal_division_equals_exact_rounding():
    """The core's fixed-point reciprocal against the reference's exact floor((2s + d) / 2d), every
    int8 window sum for divisors 1..40 and the largest window it accepts."""
    from tilesparse.sim.compute import reciprocal_avg_round

    for d in [*range(1, 41), 4096, 1 << 14]:
        total = np.arange(-128 * d, 127 * d + 1, max(1, d // 7), dtype=np.int64)
        total = np.concatenate([total, [-128 * d, 127 * d]])
        assert np.array_equal(reciprocal_avg_round(total, d), R.avg_round(total, np.int64(d))), d
    with pytest.raises(ValueError, match="not exact"):
        reciprocal_avg_round(np.array([0]), 1 << 16)


# -- multiply ----------------------------------------------------------------------------------


class SENet(nn.Module):
    """conv -> squeeze-excitation (mean, fc, relu, fc, sigmoid, x * scale) -> conv, squared (z * z)."""

    def __init__(self, form: str = "op"):
        super().__init__()
        self.form = form
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(16, 8, 1), nn.Conv2d(8, 16, 1)
        self.c2 = nn.Conv2d(16, 16, 1)

    def forward(self, x):
        y = torch.relu(self.c1(x))
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        z = {"op": lambda: s * y, "fn": lambda: torch.mul(y, s), "method": lambda: y.mul(s)}[self.form]()
        w = self.c2(z)
        return w * w


@pytest.mark.parametrize("form", ["op", "fn", "method"])
def test_mul_captures_map_first(form):
    """Either order and every spelling: one mul node reading the map, then the scale."""
    g = capture(SENet(form).eval(), SHAPE, "se")
    muls = [n for n in g if n.op is Op.MUL]
    assert len(muls) == 2
    assert g.node(muls[0].inputs[0]).out.shape == (1, 16, 10, 10)
    assert g.node(muls[0].inputs[1]).out.shape == (1, 16, 1, 1)


class BadMul(nn.Module):
    def __init__(self, other):
        super().__init__()
        self.other = other

    def forward(self, x):
        return x * self.other(x)


@pytest.mark.parametrize("other,msg", [(lambda x: 0.5, "a tensor and a constant"),
                                       (lambda x: F.adaptive_avg_pool2d(x, (10, 1)), "mul with broadcasting")])
def test_mul_refuses_constants_and_other_broadcasts(other, msg):
    with pytest.raises(UnsupportedOpError, match=msg):
        capture(BadMul(other).eval(), SHAPE, "bad")


@functools.cache
def _se_build(sparsity):
    torch.manual_seed(0)
    return build_graph_from(SENet().eval(), sparsity=sparsity, block=(8, 8), input_shape=SHAPE)


def test_mul_reference_by_hand():
    """The integer product requantized by shift = e_out - e_x - e_y, element by element."""
    g = _se_build(None).graph
    x = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    vals = IntegerReference(g).run(x)
    for n in g.of(Op.MUL):
        a, b = (vals[i].astype(np.int64) for i in n.inputs)
        e = [g.node(i).out.scale_exp for i in n.inputs]
        assert n.attrs["shift"] == n.out.scale_exp - sum(e)
        want = np.clip(R.shift_round(a * b, n.attrs["shift"]), -128, 127)
        assert np.array_equal(vals[n.name], want)
    # the expanded scale repeats each channel's one value over the plane
    (mul,) = [n for n in g.of(Op.MUL) if n.inputs[1].endswith("_expand")]
    exp = g.node(mul.inputs[1])
    assert exp.op is Op.ADAPTIVE_AVGPOOL and exp.out.shape == (1, 16, 10, 10)
    assert np.array_equal(vals[exp.name], np.broadcast_to(vals[exp.inputs[0]], exp.out.shape))


def test_se_output_close_to_pytorch():
    built = _se_build(None)
    x = np.random.default_rng(2).standard_normal(SHAPE).astype(np.float32)
    got = IntegerReference(built.graph).dequantized_output(x)
    want = built.module(torch.from_numpy(x)).detach().numpy()
    step = 2.0 ** built.graph.outputs[0].out.scale_exp
    assert np.abs(got - want).max() <= 8 * step


@pytest.mark.parametrize("array", ["4x4", "4x2"])
@pytest.mark.parametrize("sparsity", [None, 0.5])
def test_mul_bit_exact(sparsity, array):
    prog = _check(_se_build(sparsity), array, SHAPE)
    muls = [r for r in prog.layers if r.kind == "mul"]
    assert len(muls) == 2 and all(r.geometry.n_in == 2 for r in muls)
    assert all(r.kept_macs == 16 * 10 * 10 for r in muls)  # one product per output element


# -- the mobile networks, at 32x32 (1x1 before their global pool) -----------------------------
# mobilenet_v3_small and efficientnet_b0: squeeze-excitation multiplies after Hardsigmoid / Sigmoid
# tables; mnasnet0_5: its head's mean (50 % 8x8 on 4x4 at 64 px in test_capture_mean.py). Each
# network runs dense on one array and 50 % 8x8 on the other, the three together every combination
# (the ops they add run on all four in SENet, PoolNet and tests/test_lut.py's nets): a combination
# costs 10-25 CPU-s (efficientnet_b0: 9-14 s to compile, 7-11 s to simulate), mostly the same
# layers again on another array.
MOBILE_PX = 32
MOBILE_CASES = [("mobilenet_v3_small", None, "4x4"), ("mobilenet_v3_small", 0.5, "4x2"),
                ("efficientnet_b0", None, "4x2"), ("efficientnet_b0", 0.5, "4x4"),
                ("mnasnet0_5", None, "4x2"), ("mnasnet0_5", 0.5, "4x2")]


@pytest.mark.parametrize(("name", "sparsity", "array"), MOBILE_CASES)
def test_mobile_nets_bit_exact(name, sparsity, array):
    built = build_graph_from(get_model(name, seed=0), sparsity=sparsity, block=(8, 8),
                             input_shape=(1, 3, MOBILE_PX, MOBILE_PX))
    prog = _check(built, array, (1, 3, MOBILE_PX, MOBILE_PX))
    if name != "mnasnet0_5":
        assert sum(r.kind == "mul" for r in prog.layers) == {"mobilenet_v3_small": 9, "efficientnet_b0": 16}[name]
