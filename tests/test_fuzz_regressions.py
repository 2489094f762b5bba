"""Every distinct bug the graph fuzzer (tests/test_fuzz.py, benchmarks/fuzz_graphs.py) found, as a
plain module, minimised: built through the front door, compiled, simulated bit-exact against the
integer reference with the byte/MAC accounting, and compared with PyTorch in float."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tilesparse.build import build_graph_from
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.estimate.report import layer_rows
from tilesparse.hw import ArrayConfig, load_array
from tilesparse.ir.graph import Op
from tilesparse.patterns import prune_oneshot
from tilesparse.quant import rounding as R
from tilesparse.sim import verify


def _run(module: nn.Module, shape, array: str | ArrayConfig = "2x2", *, sparsity: float | None = None,
         block=(8, 8), seed: int = 0):
    """(built, program, report, PyTorch output, program output dequantized): bit-exact and the
    accounting right are asserted here; the float comparison is the caller's."""
    built = build_graph_from(module, sparsity=sparsity, block=block, input_shape=shape)
    prog = compile_graph(built.graph, load_array(array) if isinstance(array, str) else array)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    rep = verify(prog, built.graph, x, progress=False)
    assert rep.ok, rep.summary()
    assert rep.sim.accounting_ok, [a.notes for a in rep.sim.accounts if not a.ok]
    ref = copy.deepcopy(module).eval()
    if sparsity:
        prune_oneshot(ref, sparsity, block)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).double().numpy().ravel()
    out = built.graph.outputs[0]
    (q,) = rep.sim.final.values()
    got = R.dequantize(np.asarray(q), int(out.out.scale_exp)).ravel()
    return built, prog, rep, want, got


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


class _BnBn(nn.Module):
    """Bug 1: a batch-norm reading a batch-norm that is not after a conv. The first becomes a
    depthwise 1×1 conv, the second folds into it — which read the first one's γ (still in the
    parameter table under ``.weight``) as the conv weight: GraphVerifyError "weight (10, 1, 1, 10)
    does not fit input"."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.bn2 = nn.BatchNorm2d(4, affine=False)
        self.head = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        return self.head(self.bn2(self.bn1(F.relu6(self.conv(x)))))


def _randomize_bn(m: nn.Module) -> nn.Module:
    g = torch.Generator().manual_seed(0)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
            bn.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
            if bn.affine:
                bn.weight.data.copy_(torch.randn(c, generator=g))
                bn.bias.data.copy_(torch.randn(c, generator=g) * 0.3)
    return m.eval()


def test_batchnorm_after_batchnorm_folds_into_the_first():
    torch.manual_seed(0)
    m = _randomize_bn(_BnBn())
    built, _, _, want, got = _run(m, (1, 3, 6, 6))
    bn_convs = [n for n in built.graph.of(Op.CONV2D) if n.attrs.get("from_batchnorm")]
    assert len(bn_convs) == 1  # bn2 folded into bn1's depthwise conv
    assert _cosine(got, want) > 0.999


class _ZeroBranchCat(nn.Module):
    """Bug 2: a concat with an operand that is all zero on calibration (here a conv whose every
    weight block was pruned) took that operand's exponent, ``ZERO_TENSOR_EXP`` = 0, as the largest:
    the other operands were rounded to integers (cosine 0.74 with PyTorch in the fuzzed net)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.dead = nn.Conv2d(4, 2, 1, bias=False)
        self.head = nn.Conv2d(10, 6, 1)
        with torch.no_grad():
            self.dead.weight.zero_()

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.dead(x)], 1))


def test_concat_ignores_the_exponent_of_an_all_zero_operand():
    torch.manual_seed(0)
    built, _, _, want, got = _run(_ZeroBranchCat(), (1, 4, 6, 6))
    g = built.graph
    cat = g.of(Op.CONCAT)[0]
    assert cat.out.scale_exp == g.node("a").out.scale_exp < 0
    assert _cosine(got, want) > 0.999


class _PrunedLinear(nn.Module):
    """Bug 3: a layer whose every weight is zero (all blocks pruned) but whose bias is not: the
    weight exponent of an all-zero tensor (0) made the accumulator step 2^(e_in + 0), and the bias
    (0.076) rounded to 0 — the program's output was 0 where PyTorch's is the bias."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([-0.0757, 0.31]))

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.conv(x), 1), 1))


def test_all_zero_weights_keep_their_bias():
    torch.manual_seed(0)
    built, _, _, want, got = _run(_PrunedLinear(), (1, 3, 5, 5))
    lsb = 2.0 ** built.graph.outputs[0].out.scale_exp
    np.testing.assert_allclose(want, [-0.0757, 0.31], rtol=1e-6)
    assert np.abs(got - want).max() <= lsb / 2


class _Grouped5x5(nn.Module):
    """Bug 4: the planner never checked a grouped conv's weight chunk (all its groups' input
    blocks) against the core weight buffer: with a 1 KiB buffer it chose 8 output channels of a
    16→16, groups=2, 5×5 conv (a 1634 B chunk) and the simulator refused LOADWM ("core.w bytes
    [820, 1228) exceed its 1024 B")."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(8, 16, 1)
        self.conv2 = nn.Conv2d(16, 16, 5, padding=2, groups=2)

    def forward(self, x):
        return self.conv2(self.conv1(x))


def _small_weight_buffer(array: str) -> ArrayConfig:
    d = load_array(array).model_dump()
    d["core"].update(input_buffer_bytes=4096, output_buffer_bytes=4096, weight_buffer_bytes=1024)
    return ArrayConfig.model_validate(d)


@pytest.mark.parametrize("sparsity", [None, 0.35])
def test_grouped_conv_chunks_fit_the_weight_buffer(sparsity):
    torch.manual_seed(0)
    hw = _small_weight_buffer("3x1")
    _, prog, _, want, got = _run(_Grouped5x5(), (1, 8, 15, 4), hw, sparsity=sparsity, block=(4, 1))
    rec = next(r for r in prog.layers if r.name == "conv2")
    assert max(c.nbytes for c in rec.chunks) <= hw.core.weight_buffer_bytes
    assert _cosine(got, want) > 0.999


class _DepthwiseX2(nn.Module):
    """Bug 5: a grouped conv whose output-channel groups on different rows read the same input
    channels (depthwise, channel multiplier 2, output channels 2g and 2g+1 on two rows): broadcast
    down a column, the window moves once (the simulator, the listing's totals), but the time model
    charged it once per group ("LOADFM: busiest channel moved 3 B, time model charged 4 B")."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 1)
        self.dw = nn.Conv2d(3, 6, 1, groups=3)
        self.conv2 = nn.Conv2d(6, 3, 1)

    def forward(self, x):
        return self.conv2(self.dw(self.conv1(x)))


@pytest.mark.parametrize("seed", [0, 2])
def test_grouped_conv_shared_input_window_is_charged_once(seed):
    torch.manual_seed(seed)
    _, _, rep, want, got = _run(_DepthwiseX2(), (1, 3, 1, 1), "4x3", sparsity=0.5, block=(1, 4))
    assert all(a.totals_ok for a in rep.sim.accounts)
    assert _cosine(got, want) > 0.999


class _TallKernelOneRow(nn.Module):
    """Bug 6: the MemTile→core lower bound counted every input row of a conv whose stride is below
    its kernel extent, even rows no window reads: a 5-row kernel, stride 2, on 6 rows gives one
    output row that reads rows 0-4. The "lower bound" (0.156 µs) exceeded the estimate (0.142 µs)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 1, padding=1)
        self.conv2 = nn.Conv2d(4, 1, (5, 2), stride=2)

    def forward(self, x):
        return self.conv2(self.conv1(x))


def test_lower_bound_counts_only_the_rows_a_window_reads():
    from tilesparse.estimate.bounds import _touched

    torch.manual_seed(0)
    _, prog, _, want, got = _run(_TallKernelOneRow(), (1, 2, 4, 24), "4x1", sparsity=0.77, block=(16, 1))
    rec = next(r for r in prog.layers if r.name == "conv2")
    assert (_touched(rec.geometry, 0), _touched(rec.geometry, 1)) == (5, 26)  # by hand: rows 0..4, cols 0..25
    for row in layer_rows(prog):
        assert row["time_us"] >= row["bound_us"] * (1 - 1e-9), row
    assert _cosine(got, want) > 0.999


class _DeadBranch(nn.Module):
    """Bug 7: a computation the output does not depend on (an unused branch) ended in a
    multi-line GraphVerifyError ("node 'c3' (conv2d) has no consumer"); PyTorch computes it for
    nothing, the capture now drops it."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.unused = nn.Conv2d(4, 5, 1)
        self.c2 = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.c1(x)
        _ = F.relu(self.unused(y))
        return self.c2(F.relu(y))


def test_dead_branch_is_dropped():
    torch.manual_seed(0)
    built, prog, _, want, got = _run(_DeadBranch(), (1, 3, 8, 8), sparsity=0.5, block=(2, 2))
    assert [n.source for n in built.graph.of(Op.CONV2D)] == ["c1", "c2"]
    assert [r.name for r in prog.layers] == ["c1", "c2"]
    assert _cosine(got, want) > 0.999


class _WideLinear(nn.Module):
    """Bug 8: the planner tried input-channel chunks smaller than the largest that fits (for larger
    tiles) without checking them: a smaller chunk moves the boundaries, and the last chunk — with
    the bias — can hold more kept blocks than before. 672 inputs in chunks of 48 blocks: the last
    chunk 1072 B in a 1 KiB weight buffer ("core.w bytes [536, 1072) exceed its 1024 B")."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(672, 13)
        self.fc2 = nn.Linear(13, 12, bias=False)

    def forward(self, x):
        return self.fc2(self.fc1(torch.flatten(x, 1)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_input_channel_chunk_fits_the_weight_buffer(seed):
    torch.manual_seed(seed)
    hw = _small_weight_buffer("1x3")
    _, prog, _, want, got = _run(_WideLinear(), (1, 4, 24, 7), hw, sparsity=0.3, block=(16, 2))
    assert max(c.nbytes for r in prog.layers for c in r.chunks) <= hw.core.weight_buffer_bytes
    assert _cosine(got, want) > 0.999


class _GroupedDilated(nn.Module):
    """Bug 9: the input channels an output-channel chunk of a grouped conv needs were over-counted
    by a whole group (``oc // (co / groups) + 2`` groups: 2 for one output channel, which reads one
    group): with a 1 KiB input buffer a conv with groups=5 (17 input channels each, a 7 × 4 dilated
    window) was refused as "input tile 952 B > half the input buffer (512 B)" where one group's
    476 B fit. Spurious refusal; the same bound for a flatten's chunks."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 85, 1)
        self.conv2 = nn.Conv2d(85, 20, (3, 2), padding=(2, 1), dilation=3, groups=5, bias=False)

    def forward(self, x):
        return self.conv2(self.conv1(x))


def test_grouped_conv_chunk_needs_only_the_groups_it_touches():
    from tilesparse.compiler.layers import _runs_touched

    assert [_runs_touched(n, 4) for n in (1, 2, 4, 5, 8, 9)] == [1, 2, 2, 2, 3, 3]  # by hand: from a run's last item
    assert [_runs_touched(n, 1) for n in (1, 3)] == [1, 3]
    torch.manual_seed(0)
    d = load_array("1x4").model_dump()
    d["core"].update(input_buffer_bytes=1024, output_buffer_bytes=4096, weight_buffer_bytes=4096)
    _, _, _, want, got = _run(_GroupedDilated(), (1, 4, 8, 9), ArrayConfig.model_validate(d), sparsity=0.36,
                              block=(1, 4))
    assert _cosine(got, want) > 0.999


def test_ceil_mode_pool_window_past_the_input_survives_save_and_load(tmp_path):
    """Bug 10: a ceil-mode pool whose only window reaches past its 1-row input (kernel 2, stride 2,
    1x1 -> 1x1) compiled and simulated, but the program-file checks refused the saved file
    ("a window of kernel 2 ... cannot give 1 output rows from 1 padded input rows"): a window may
    end past the padded input, it must only start inside it."""
    from tilesparse.program import Program

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 8, 1, stride=2)

        def forward(self, x):
            return F.avg_pool2d(self.conv(x), 2, ceil_mode=True)

    built, prog, rep, want, got = _run(Net(), (1, 2, 2, 2), "2x2")
    assert np.allclose(got, want, atol=4 * 2.0 ** built.graph.outputs[0].out.scale_exp)
    again = Program.load(prog.save(tmp_path / "p.tsp"))
    assert [r.name for r in again.layers] == [r.name for r in prog.layers]


class _RaggedMasked(nn.Module):
    """Bug: a conv in the sparse multiply's masked format whose chunk has ragged edge blocks (4 → 5
    channels, 4×4 blocks) was decompressed to the block format, then handed to the ragged-edge decoder
    still marked masked, which tried to decompress it again ("weights in the masked format need an
    array whose core.sparse_matmul is enabled")."""

    def __init__(self):
        super().__init__()
        self.m1 = nn.Conv2d(1, 4, 1, bias=False)
        self.m2 = nn.Sequential(nn.Conv2d(4, 5, 1, bias=False), nn.BatchNorm2d(5), nn.ReLU())

    def forward(self, x):
        return self.m2(self.m1(x))


def test_ragged_chunk_in_the_masked_format_decodes():
    torch.manual_seed(0)
    built, prog, _, want, got = _run(_RaggedMasked(), (1, 1, 1, 1), "1x1", sparsity=0.75, block=(4, 4))
    assert prog.layers[1].geometry.weight_format == "masked" and prog.layers[1].geometry.co == 5
    lsb = 2.0 ** built.graph.outputs[0].out.scale_exp
    assert np.abs(got - want).max() <= 2 * lsb
