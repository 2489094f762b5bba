"""The pattern grid's covering subset (tests/pattern_cell.py ``SUITE_CELLS``; the whole grid is
benchmarks/pattern_grid.py): every weight pattern, every zoo network at reduced resolution and
every array, dense and sparse — each cell bit-exact against the integer reference, within the
quantization tolerance of PyTorch in every layer (SDQ: bit-exact only), its simulated bytes / MACs / cycles the
time model's, and its estimate between its per-layer bound sum and 1.5 times it."""

from __future__ import annotations

import pytest
from pattern_cell import ARRAYS, NETWORKS, PATTERNS, RATIO_MAX, SUITE_CELLS, run_cell

# Packed weight bytes over dense int8 bytes, by hand: 8x8 blocks at 50 % keep half the blocks; the
# masked format stores a 256-bit chunk (32 weights) as a 4-byte mask and 16 kept bytes (2:4, and 1:4
# padded to it): 20/32; HSS keeps half the 8x8 blocks in that format: 10/32; TASD 2:4+1:4 squashes to
# three kept weights in every four, which no 8x8 block skips: dense; SDQ is a dense int4 part (16/32)
# plus a 2:4 int8 part (20/32). The first conv (dense for the pattern spellings), the block bitmaps
# and the biases move the totals by well under 0.01.
WEIGHT_BYTES = {"dense": 1.0, "8x8@50%": 0.5, "2:4": 20 / 32, "1:4": 20 / 32, "8x8@0.5/2:4": 10 / 32,
                "2:4+1:4": 1.0, "int8-2:4+int4": 36 / 32}


def test_subset_covers_the_grid():
    assert {c[0] for c in SUITE_CELLS} == set(NETWORKS)
    assert {c[1] for c in SUITE_CELLS} == set(PATTERNS)
    assert {c[2] for c in SUITE_CELLS} == set(ARRAYS)
    assert set(WEIGHT_BYTES) == set(PATTERNS)
    assert len({c[1] for c in SUITE_CELLS}) == len(SUITE_CELLS)  # each pattern once


@pytest.mark.parametrize(("network", "pattern", "array"), SUITE_CELLS, ids=["-".join(c) for c in SUITE_CELLS])
def test_pattern_cell(network, pattern, array):
    r = run_cell(network, pattern, array)
    assert r["bit_exact"], r["first_mismatch"]
    if pattern == "int8-2:4+int4":
        assert r["float_ok"] is None  # two integer parts per layer: checked bit-exact only
    else:
        assert r["float_ok"], (r["float_cosine"], network, pattern, array)
        assert not r["float_not_compared"], r["float_not_compared"]  # every layer held against PyTorch
    if pattern == "8x8@50%":  # only the kept blocks were executed
        assert r["sim_mac_fraction"] < 1
    assert r["accounting_ok"], r["accounting_bad"]
    assert r["replay_ok"]
    assert r["weight_bytes_fraction"] == pytest.approx(WEIGHT_BYTES[pattern], abs=0.01)
    assert not r["layers_below_bound"], r["layers_below_bound"]
    assert 1.0 <= r["ratio"] <= RATIO_MAX, (r["ratio"], r["worst_layers"])
    assert r["network_bound_s"] <= r["estimate_s"] * (1 + 1e-12)  # no schedule beats the network bound
