"""Selection modes: exact counts, balance, no empty rows, lowest scores chosen, monotone masks."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.errors import ConfigError
from tilesparse.patterns.selection import select_global, select_layer, select_masks, zero_count

grids = st.tuples(st.integers(1, 12), st.integers(1, 12))
sparsities = st.floats(0.0, 0.99)


def _scores(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@settings(max_examples=60, deadline=None)
@given(grid=grids, s=sparsities, seed=st.integers(0, 10_000))
def test_layer_mode_exact_and_lowest(grid, s, seed):
    sc = _scores(grid, seed)
    keep = select_layer(sc, s, "layer", allow_empty_rows=True)
    n = grid[0] * grid[1]
    assert int((~keep).sum()) == min(round(s * n), n)
    if (~keep).any() and keep.any():
        assert sc[~keep].max() <= sc[keep].min()


@settings(max_examples=60, deadline=None)
@given(grid=grids, s=sparsities, seed=st.integers(0, 10_000))
def test_layer_mode_no_empty_rows(grid, s, seed):
    keep = select_layer(_scores(grid, seed), s, "layer")
    assert keep.any(dim=1).all()
    n, rows = grid[0] * grid[1], grid[0]
    assert int((~keep).sum()) == min(round(s * n), n - rows)  # clamped only when a row would empty


@settings(max_examples=60, deadline=None)
@given(grid=grids, s=sparsities, seed=st.integers(0, 10_000))
def test_balanced_rows(grid, s, seed):
    sc = _scores(grid, seed)
    keep = select_layer(sc, s, "balanced_rows")
    zeros = (~keep).sum(dim=1)
    assert (zeros == min(round(s * grid[1]), grid[1] - 1)).all()
    for r in range(grid[0]):  # within a row, the lowest scores go
        if (~keep[r]).any():
            assert sc[r][~keep[r]].max() <= sc[r][keep[r]].min()


@settings(max_examples=60, deadline=None)
@given(grid=grids, s=sparsities, seed=st.integers(0, 10_000))
def test_balanced_cols(grid, s, seed):
    keep = select_layer(_scores(grid, seed), s, "balanced_cols", allow_empty_rows=True)
    assert ((~keep).sum(dim=0) == round(s * grid[0])).all()
    repaired = select_layer(_scores(grid, seed), s, "balanced_cols")
    assert torch.equal(repaired.sum(dim=0), keep.sum(dim=0))  # repair keeps columns balanced
    if int(keep.sum(dim=0).min()) * grid[1] >= grid[0] and grid[1] > 1:
        assert repaired.any(dim=1).all()


def test_balanced_cols_hand_example():
    sc = torch.tensor([[1.0, 9.0], [2.0, 8.0], [7.0, 3.0], [6.0, 4.0]])
    keep = select_layer(sc, 0.5, "balanced_cols")
    assert keep.tolist() == [[False, True], [False, True], [True, False], [True, False]]


@settings(max_examples=40, deadline=None)
@given(g1=grids, g2=grids, s=sparsities, seed=st.integers(0, 10_000))
def test_global_threshold(g1, g2, s, seed):
    scores = {"a": _scores(g1, seed), "b": 3 * _scores(g2, seed + 1)}
    keep = select_global(scores, s, allow_empty_rows=True)
    n = math.prod(g1) + math.prod(g2)
    zeroed = torch.cat([scores[k][~keep[k]] for k in scores])
    kept = torch.cat([scores[k][keep[k]] for k in scores])
    assert zeroed.numel() == min(round(s * n), n)
    if zeroed.numel() and kept.numel():
        assert zeroed.max() <= kept.min()
    safe = select_global(scores, s)
    assert all(safe[k].any(dim=1).all() for k in safe)


@settings(max_examples=40, deadline=None)
@given(grid=grids, s1=sparsities, s2=sparsities, seed=st.integers(0, 10_000),
       mode=st.sampled_from(["layer", "balanced_rows"]))
def test_monotone_with_keep(grid, s1, s2, seed, mode):
    lo, hi = sorted([s1, s2])
    first = select_layer(_scores(grid, seed), lo, mode)
    second = select_layer(_scores(grid, seed + 7), hi, mode, keep=first)  # new scores, old zeros stay
    assert not (second & ~first).any()


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "half"])
def test_bad_sparsity(bad):
    with pytest.raises(ConfigError, match="sparsity"):
        select_layer(torch.rand(4, 4), bad)


def test_bad_mode_and_global_targets():
    with pytest.raises(ConfigError, match="selection mode"):
        select_masks({"a": torch.rand(2, 2)}, {"a": 0.5}, "diagonal")
    with pytest.raises(ConfigError, match="one sparsity"):
        select_masks({"a": torch.rand(2, 2), "b": torch.rand(2, 2)}, {"a": 0.5, "b": 0.25}, "global")


def test_zero_count_matches_python_round():
    assert zero_count(3, 0.5) == 2 and zero_count(5, 0.5) == 2  # half to even, as torch.ao.pruning
