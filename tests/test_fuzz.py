"""Differential fuzzing in the suite: N_EXAMPLES random small networks (tests/fuzz_nets.py) built
through the front door, compiled on a random array / memory / block / sparsity, saved and
reloaded, simulated and checked against the integer reference, the accounting and PyTorch
(tests/fuzz_harness.py). A clean one-line refusal passes; anything else fails with the
reproducing source. The benchmark (benchmarks/fuzz_graphs.py) runs the same cases by the
thousand; every bug found is kept in tests/test_fuzz_regressions.py."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fuzz_harness import Failure, _agree, run_case, shape_of
from fuzz_nets import Case, build_module, cases, random_case
from hypothesis import HealthCheck, given, note, settings

# 250 cases in all (0.05-3 s each; the benchmark runs >= 10 000): 100 drawn by Hypothesis, which
# shrinks a failing one, and 150 of the benchmark's generator (``random_case``) in shards, so that
# pytest-xdist spreads them over its workers instead of one worker running a 4-minute test.
N_EXAMPLES = 100
SEEDED_SEED, SEEDED_SHARDS, SEEDED_PER_SHARD = 1, 3, 50


@settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_random_graphs_agree_with_both_oracles(case: Case):
    note(case.describe())
    out = run_case(case)
    assert out.status != "fail", f"{out.kind}\n{out.detail}\n{case.describe()}"


@pytest.mark.parametrize("shard", range(SEEDED_SHARDS))
def test_seeded_random_graphs_agree_with_both_oracles(shard: int):
    """Examples of ``random_case(SEEDED_SEED, i)``: a failure names the index and prints the source
    (``python benchmarks/fuzz_graphs.py --seed 1`` reproduces it)."""
    for i in range(shard * SEEDED_PER_SHARD, (shard + 1) * SEEDED_PER_SHARD):
        case = random_case(SEEDED_SEED, i)
        out = run_case(case)
        assert out.status != "fail", f"example {i} of seed {SEEDED_SEED}: {out.kind}\n{out.detail}\n{case.describe()}"


def test_cases_are_reproducible_and_run_in_pytorch():
    """Example i of seed S is the same source and choices every time, and its module runs."""
    a, b = random_case(7, 3), random_case(7, 3)
    assert a.describe() == b.describe() and a.features == b.features
    assert random_case(7, 4).describe() != a.describe()
    for i in range(5):
        c = random_case(7, i)
        with torch.no_grad():
            y = build_module(c)(torch.randn(c.input_shape))
        assert torch.isfinite(y).all() and y.shape[0] == 1


_NET = """class FuzzNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.m1 = nn.Conv2d(3, 8, 3, stride=1, padding=1)
        self.m2 = nn.BatchNorm2d(8)
        self.m3 = nn.Conv2d(8, 8, 3, stride=1, padding=1, groups=2)

    def forward(self, x):
        v1 = self.m1(x)
        v2 = F.relu(self.m2(v1))
        v3 = self.m3(v2)
        v3 += v1
        return torch.cat([v3, v2], 1)
"""


def test_harness_passes_a_good_program_and_catches_a_wrong_one(monkeypatch):
    """The harness can fail: one simulated output element changed is reported as not bit-exact."""
    case = Case(_NET, (1, 3, 6, 6), (2, 2), (4, 4), 0.5, 1)
    assert run_case(case).status == "pass"
    from tilesparse.sim import oracle

    real = oracle.simulate

    def corrupt(*a, **kw):
        res = real(*a, **kw)
        first = next(iter(res.outputs.values()))
        first.flat[0] ^= 1
        return res

    monkeypatch.setattr(oracle, "simulate", corrupt)
    out = run_case(case)
    assert (out.status, out.kind) == ("fail", "not bit-exact: layer kind conv")


def test_float_check_and_message_shapes():
    want = np.array([1.0, -2.0, 0.5])
    assert _agree(want * 1.01, want, 0.0) > 0.99
    with pytest.raises(Failure, match="cosine -1.000"):
        _agree(-want, want, 0.1)
    _agree(np.zeros(3), np.full(3, 1e-3), 4e-3)  # no direction to compare, but within the tolerance
    with pytest.raises(Failure, match="max error 0.001 > tolerance 0.0001"):
        _agree(np.zeros(3), np.full(3, 1e-3), 1e-4)
    assert shape_of("layer 'conv3' (conv, 16->32 ch): 1234 B > 1024 B\nmore") == "layer '…' (conv, N->N ch): N B > N B"
