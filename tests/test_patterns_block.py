"""Block geometry, block reduction and mask expansion vs element-by-element loop references."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.errors import ConfigError
from tilesparse.patterns.block import (
    BlockGeometry,
    BlockShape,
    block_counts,
    block_reduce,
    expand_mask,
    parse_block_shape,
)

BLOCKS = [BlockShape(8, 8), BlockShape(4, 16), BlockShape(16, 4)]


def _block_of(o: int, i: int, g: BlockGeometry) -> tuple[int, int]:
    """Reference: which block (row, col) weight element (o, i) belongs to."""
    grp, o_in = divmod(o, g.out_per_group)
    return grp * g.rows_per_group + o_in // g.block.out, i // g.block.in_


@pytest.mark.parametrize("shape,groups,block,grid", [
    ((64, 64, 3, 3), 1, BlockShape(8, 8), (8, 8)),
    ((64, 64, 3, 3), 1, BlockShape(4, 16), (16, 4)),
    ((64, 64, 3, 3), 1, BlockShape(16, 4), (4, 16)),
    ((20, 12), 1, BlockShape(8, 8), (3, 2)),             # ragged: 20 = 8+8+4, 12 = 8+4
    ((64, 16, 3, 3), 4, BlockShape(8, 8), (4 * 2, 2)),   # 4 groups of 16 out x 16 in
    ((32, 1, 3, 3), 32, BlockShape(8, 8), (32, 1)),      # depthwise: one 1x1 block per group
])
def test_grid_hand_computed(shape, groups, block, grid):
    g = BlockGeometry.of_weight(shape, block, groups)
    assert g.grid == grid
    assert g.n_blocks == grid[0] * grid[1]


@settings(max_examples=40, deadline=None)
@given(o=st.integers(1, 40), i=st.integers(1, 40), groups=st.sampled_from([1, 2, 4]),
       bo=st.sampled_from([1, 4, 8, 16]), bi=st.sampled_from([1, 4, 8, 16]), k=st.sampled_from([1, 3]),
       seed=st.integers(0, 1000))
def test_reduce_and_expand_match_loops(o, i, groups, bo, bi, k, seed):
    o *= groups
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(o, i, k, k, generator=gen)
    g = BlockGeometry.of_weight(w.shape, BlockShape(bo, bi), groups)
    ref = torch.zeros(g.grid, dtype=torch.float64)
    for oo in range(o):
        for ii in range(i):
            ref[_block_of(oo, ii, g)] += float(w[oo, ii].sum())
    assert torch.allclose(block_reduce(w, g).double(), ref, atol=1e-4)
    mask = torch.rand(g.grid, generator=gen) > 0.5
    em = expand_mask(mask, g, 4)
    assert em.shape == (o, i, 1, 1)
    ref_em = torch.tensor([[bool(mask[_block_of(oo, ii, g)]) for ii in range(i)] for oo in range(o)])
    assert torch.equal(em[:, :, 0, 0], ref_em)


def test_block_counts_ragged():
    g = BlockGeometry.of_weight((20, 12, 3, 3), BlockShape(8, 8))
    assert block_counts(g).tolist() == [[576, 288], [576, 288], [288, 144]]  # 8*8*9, 8*4*9, 4*8*9, 4*4*9


@pytest.mark.parametrize("bad", [(0, 8), (8, 0), (-1, 8), "0x8", "8x", "axb", 8])
def test_bad_block_shape(bad):
    with pytest.raises(ConfigError, match="block"):
        parse_block_shape(bad) if not isinstance(bad, tuple) else BlockShape(*bad)


def test_parse_block_shape():
    assert parse_block_shape("4x16") == BlockShape(4, 16)
    assert parse_block_shape((16, 4)) == BlockShape(16, 4)
    assert str(BlockShape()) == "8x8"


def test_expand_mask_wrong_shape():
    g = BlockGeometry.of_weight((16, 16), BlockShape(8, 8))
    with pytest.raises(ConfigError, match=r"\(2, 2\)"):
        expand_mask(torch.ones(3, 2, dtype=torch.bool), g)


def test_expand_differentiable():
    g = BlockGeometry.of_weight((16, 24), BlockShape(8, 8))
    gate = torch.rand(g.grid, requires_grad=True)
    expand_mask(gate, g).sum().backward()
    assert torch.allclose(gate.grad, torch.full(g.grid, 64.0))
    assert math.prod(expand_mask(gate, g).shape) == 16 * 24
