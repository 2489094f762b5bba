"""Partition: splits, balance, exact coverage of every output, chooser validation, cannot-fit."""

from itertools import pairwise

import numpy as np
import pytest
from compiler_helpers import small_graph, tiny_hw_yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.partition import (
    Grid,
    SubVolume,
    assign_cores,
    check_coverage,
    col_tiles,
    max_tile_extent,
    misfits,
    moved_positions,
    oc_chunks,
    slid_tiles,
    tile_grid,
)
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.compiler.planning import plan_layer
from tilesparse.compiler.splits import balanced_split, capped_split, split_even
from tilesparse.errors import CapacityError, ConfigError
from tilesparse.hw import load_array


@given(st.integers(0, 200), st.integers(1, 17))
def test_split_even_sizes_differ_by_at_most_one(n, parts):
    b = split_even(n, parts)
    sizes = np.diff(b)
    assert b[0] == 0 and b[-1] == n and len(sizes) == parts
    assert sizes.max() - sizes.min() <= 1


@given(st.lists(st.integers(1, 50), min_size=1, max_size=40), st.integers(1, 9))
def test_balanced_split_is_optimal_bottleneck(costs, parts):
    b = balanced_split(costs, parts)
    assert b[0] == 0 and b[-1] == len(costs) and len(b) == parts + 1 and b == sorted(b)
    worst = max(sum(costs[b[i]:b[i + 1]]) for i in range(parts))
    # brute-force reference: the smallest bottleneck any contiguous split reaches (greedy check)
    best = min(c for c in range(max(costs), sum(costs) + 1) if _fits(costs, parts, c))
    assert worst == best


def _fits(costs, parts, cap):
    n, acc = 1, 0
    for c in costs:
        if acc + c > cap:
            n, acc = n + 1, 0
        acc += c
    return n <= parts


def test_oc_split_keeps_the_widest_range_narrow_at_the_same_bottleneck():
    # block rows keeping 4, 2, 1, 1 blocks over 4 rows of cores: 1, 2, 1, 0 block rows would have
    # the same bottleneck (4) but a 16-channel range, which halves the accumulator tile
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]], bool)
    spec = LayerSpec("L", "conv", ("x",), 32, 8, 8, 32, 8, 8, mask=mask)
    cores = assign_cores(spec, load_array("4x1"), Grid(4, 1, "w"))
    assert [(c.oc0, c.oc1) for c in cores] == [(0, 8), (8, 16), (16, 24), (24, 32)]


def test_oc_layout_balances_each_rows_weight_channel():
    # 512 -> 512 dense: 64 block rows over 3 x 3 cores with channels across the columns too
    # (col_axis "oc"). A row's cores share its weight channel, so its busiest row carries
    # ceil(64 / 3) = 22 block rows and its busiest core ceil(64 / 9) = 8 — not eight cores of 8
    # and an idle one, whose busiest rows carry 24 (the same busiest core)
    spec = LayerSpec("L", "conv", ("x",), 512, 7, 7, 512, 7, 7, mask=np.ones((64, 64), bool))
    cores = assign_cores(spec, load_array("3x3"), Grid(3, 1, "oc"))
    units = [[(c.oc1 - c.oc0) // 8 for c in cores if c.row == r] for r in range(3)]
    assert max(map(sum, units)) == 22 and max(map(max, units)) == 8 and min(map(min, units)) > 0
    check_coverage(spec, cores)
    # with sparsity the row sums balance kept blocks: no row carries more than a flat split's
    rng = np.random.default_rng(0)
    mask = rng.random((64, 64)) < 0.5
    spec = LayerSpec("L", "conv", ("x",), 512, 7, 7, 512, 7, 7, mask=mask)
    cores = assign_cores(spec, load_array("3x3"), Grid(3, 1, "oc"))

    def kept(c):
        return int(mask[c.oc0 // 8:c.oc1 // 8].sum())

    flat = balanced_split(mask.sum(axis=1), 9)
    flat_core = max(int(mask[a:b].sum()) for a, b in pairwise(flat))
    flat_row = max(int(mask[flat[3 * r]:flat[3 * r + 3]].sum()) for r in range(3))
    assert max(kept(c) for c in cores) <= flat_core
    assert max(sum(kept(c) for c in cores if c.row == r) for r in range(3)) <= flat_row
    check_coverage(spec, cores)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=12), st.integers(1, 6), st.integers(1, 6))
def test_capped_split_is_the_optimal_bottleneck_under_the_length_cap(costs, parts, max_len):
    if parts * max_len < len(costs):
        with pytest.raises(ValueError, match="do not fit"):
            capped_split(costs, parts, max_len)
        return
    b = capped_split(costs, parts, max_len)
    assert b[0] == 0 and b[-1] == len(costs) and len(b) == parts + 1 and b == sorted(b)
    assert max(np.diff(b)) <= max_len
    worst = max(sum(costs[b[i]:b[i + 1]]) for i in range(parts))
    assert worst == _best_capped(tuple(costs), parts, max_len)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=10), st.integers(1, 4), st.integers(1, 5),
       st.sampled_from([1, 9]))
def test_oc_chunks_cover_the_range_and_balance_kept_work(kept, n_k, width, taps):
    n = len(kept)
    if n_k * width < n:
        return  # the compiler never asks for fewer chunks than the width cap needs
    mask = np.array([[j < c for j in range(4)] for c in kept], bool)  # block row r keeps kept[r] blocks
    k = int(taps ** 0.5)
    spec = LayerSpec("L", "conv", ("x",), 32, 4, 4, 8 * n, 4, 4, (k, k), padding=(k // 2, k // 2), mask=mask)
    b = oc_chunks(spec, 0, 8 * n, 8 * width, n_k)
    assert b[0] == 0 and b[-1] == 8 * n and len(b) == n_k + 1 and list(b) == sorted(b)
    assert all(0 <= z - a <= 8 * width for a, z in pairwise(b))
    worst = max(sum(kept[a // 8:z // 8]) for a, z in pairwise(b))
    assert worst == _best_capped(tuple(kept), n_k, width)  # kept work is kept blocks × 8 × taps


def _best_capped(costs, parts, max_len):
    """Reference by dynamic programming: the smallest largest-range cost over every split of
    ``costs`` into at most ``parts`` contiguous ranges of at most ``max_len`` items."""
    inf = float("inf")
    n = len(costs)
    f = [[inf] * (parts + 1) for _ in range(n + 1)]  # f[i][p]: first i items in p ranges
    f[0] = [0] * (parts + 1)
    for i in range(1, n + 1):
        for p in range(1, parts + 1):
            for j in range(max(0, i - max_len), i):
                f[i][p] = min(f[i][p], max(f[j][p - 1], sum(costs[j:i])))
    return f[n][parts]


def test_oc_chunks_balance_kept_blocks_within_the_width_cap():
    # six block rows keeping 2, 2, 2, 1, 1, 1 blocks of a 1x1 conv: every 32 channels (4 rows) the
    # chunks would hold 7 and 2 blocks; balanced under the 4-row cap they hold 4 and 5
    mask = np.array([[1, 1]] * 3 + [[1, 0]] * 3, bool)
    spec = LayerSpec("L", "conv", ("x",), 16, 4, 4, 48, 4, 4, mask=mask)
    assert oc_chunks(spec, 0, 48, 32, 2) == (0, 16, 48)
    dense = LayerSpec("L", "conv", ("x",), 16, 4, 4, 48, 4, 4, mask=np.ones((6, 2), bool))
    assert oc_chunks(dense, 0, 48, 16, 3) == (0, 16, 32, 48)
    # channel-wise ops and grouped convs keep even chunks
    pool = LayerSpec("P", "maxpool", ("x",), 48, 4, 4, 48, 4, 4)
    assert oc_chunks(pool, 8, 48, 16, 3) == (8, 24, 40, 48)


def _conv_spec(ci, co, h, w, k, s, density, seed):
    rng = np.random.default_rng(seed)
    mask = rng.random((-(-co // 8), -(-ci // 8))) < density
    p = k // 2
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    return LayerSpec("L", "conv", ("x",), ci, h, w, co, ho, wo, (k, k), (s, s), (p, p), mask=mask)


ARRAYS = ["1x1", "2x2", "3x3", "4x2", "2x8", "5x5", "7x7", "8x8", "6x4"]


@settings(max_examples=40, deadline=None)
@given(ci=st.sampled_from([3, 8, 16, 24, 64, 96]), co=st.sampled_from([8, 16, 40, 64, 72, 200]),
       h=st.integers(1, 23), w=st.integers(1, 23), k=st.sampled_from([1, 3]), s=st.sampled_from([1, 2]),
       arr=st.sampled_from(ARRAYS), density=st.sampled_from([0.3, 0.5, 1.0]), seed=st.integers(0, 99))
def test_every_output_computed_exactly_once(ci, co, h, w, k, s, arr, density, seed):
    spec = _conv_spec(ci, co, h, w, k, s, density, seed)
    hw = load_array(arr)
    for g_o in range(1, hw.rows + 1):
        for ax in ("w", "h", "oc"):
            check_coverage(spec, assign_cores(spec, hw, Grid(g_o, hw.rows // g_o, ax)))
        for col_h in range(2, hw.cols):  # 2-D tilings over the columns
            check_coverage(spec, assign_cores(spec, hw, Grid(g_o, hw.rows // g_o, "hw", col_h)))
    plan = plan_layer(spec, hw, (False,), False)
    check_coverage(spec, plan.part.cores)
    # the tiles of each core's region cover it exactly once, too
    for cw in plan.part.cores:
        if not cw.empty:
            tiles = tile_grid(cw.h0, cw.h1, cw.w0, cw.w1, plan.part.sub.h, plan.part.sub.w)
            assert sum((b - a) * (d - c) for a, b, c, d in tiles) == (cw.h1 - cw.h0) * (cw.w1 - cw.w0)


@pytest.mark.parametrize("ho,wo,cols,col_h,busiest", [
    (8, 8, 7, 2, 10),  # 5 rows of 2x4 columns above 3 rows of 3 (3, 3, 2 wide): 10, not 8 x 2 = 16
    (17, 17, 8, 2, 45),  # 8 and 9 rows of 4 columns (5, 4, 4, 4 wide)
    (7, 7, 3, 2, 20),  # 5 rows of 2 columns (4, 3 wide) above 2 rows of one: 20, not 7 x 3 = 21
])
def test_col_tiles_cover_the_map_and_balance_the_columns(ho, wo, cols, col_h, busiest):
    tiles = col_tiles(ho, wo, cols, col_h)
    count = np.zeros((ho, wo), int)
    for a, b, c, d in tiles:
        count[a:b, c:d] += 1
    assert len(tiles) == cols and (count == 1).all()
    assert max((b - a) * (d - c) for a, b, c, d in tiles) == busiest


def test_coverage_check_catches_a_gap():
    spec = _conv_spec(16, 16, 4, 4, 1, 1, 1.0, 0)
    cores = assign_cores(spec, load_array("2x2"), Grid(2, 1, "w"))
    with pytest.raises(AssertionError, match="computed 0 times"):
        check_coverage(spec, cores[1:])


def test_oc_split_balances_kept_blocks_not_channels():
    spec = _conv_spec(64, 64, 8, 8, 1, 1, 1.0, 0)
    mask = np.ones((8, 8), bool)
    mask[:4, 1:] = False  # the first half of the output channels keeps 1 block of 8
    spec = LayerSpec("L", "conv", ("x",), 64, 8, 8, 64, 8, 8, mask=mask)
    cores = assign_cores(spec, load_array("2x1"), Grid(2, 1, "w"))
    kept = [int(mask[c.oc0 // 8:c.oc1 // 8].sum()) for c in cores]
    assert max(kept) <= 32 and cores[0].oc1 - cores[0].oc0 > cores[1].oc1 - cores[1].oc0


def test_chooser_subvolume_is_used_and_validated():
    g = small_graph()
    chosen = SubVolume(oc=8, ci=8, h=1, w=2)
    prog = compile_graph(g, "2x2", chooser=lambda n, hw: chosen if n is not None and n.name == "c1" else None)
    rec = next(r for r in prog.layers if r.name == "c1")
    assert rec.sub == chosen
    with pytest.raises(ConfigError, match="multiple of 8"):
        compile_graph(g, "2x2", chooser=lambda n, hw: SubVolume(5, 8, 1, 1))
    with pytest.raises(ConfigError, match="expected SubVolume"):
        compile_graph(g, "2x2", chooser=lambda n, hw: (8, 8, 1, 1))
    with pytest.raises(CapacityError, match="c1.*does not fit"):
        compile_graph(g, "2x2", chooser=lambda n, hw: SubVolume(8, 16, 64, 64) if n and n.name == "c1" else None)


def test_layer_that_cannot_fit_names_it(tmp_path):
    with pytest.raises(CapacityError, match=r"layer 'c1'.*minimum sub-volume"):
        compile_graph(small_graph(), tiny_hw_yaml(tmp_path))


@settings(max_examples=150, deadline=None)
@given(kind=st.sampled_from(["conv", "maxpool", "add", "flatten"]), k=st.integers(1, 7), s=st.integers(1, 4),
       d=st.integers(1, 2), residual=st.booleans(), oc=st.sampled_from([8, 16, 64, 256]),
       ci=st.integers(1, 600), other=st.integers(1, 40), axis=st.integers(0, 1))
def test_max_tile_extent_is_the_largest_tile_fits_accepts(kind, k, s, d, residual, oc, ci, other, axis):
    """The closed form the tile search uses agrees with ``misfits`` (bisected by brute force)."""
    hw = load_array("4x4")
    conv = kind == "conv"
    spec = LayerSpec("L", kind, ("x", "y") if kind == "add" else ("x",), 600, 9, 9, 600, 9, 9,
                     (k, k) if conv or kind == "maxpool" else (1, 1), (s, s) if kind == "maxpool" or conv else (1, 1),
                     dilation=(d, d) if conv else (1, 1), residual="r" if conv and residual else "")
    got = max_tile_extent(spec, hw, oc, ci, other, axis)

    def ok(n):
        h, w = (n, other) if axis == 0 else (other, n)
        return not misfits(spec, hw, SubVolume(oc, ci, h, w), 0, 1)

    assert got == 0 or ok(got)
    assert not ok(got + 1)
    assert all(ok(n) for n in range(1, got + 1, max(1, got // 7)))


def test_moved_positions_slide_along_tile_rows_and_restart_at_steps():
    """3×3 conv (stride 1, padding 1) over a 5×8 region in 2×3 tiles, 4 tiles per step: window
    rows 4, 4, 3 and columns 5, 5, 4; a tile after its left neighbour in the same step moves only
    width × stride new columns (tiles 1, 2, 5, 7 here; 3 and 6 start a row, 4 and 8 a step)."""
    conv = LayerSpec(name="c", kind="conv", inputs=("x",), ci=8, hi=5, wi=8, co=8, ho=5, wo=8,
                     kernel=(3, 3), padding=(1, 1))
    assert conv.slides
    assert slid_tiles(conv, 5, 8, 2, 3, 4).tolist() == [False, True, True, False, False, True, False, True, False]
    assert moved_positions(conv, 5, 8, 2, 3, 4).tolist() == [20, 12, 8, 20, 20, 8, 15, 9, 12]
    # a 3×3 stride-2 pool: windows overlap by one column, a tile of 2 outputs moves 4 new columns
    pool = LayerSpec(name="p", kind="maxpool", inputs=("x",), ci=8, hi=9, wi=9, co=8, ho=4, wo=4,
                     kernel=(3, 3), stride=(2, 2))
    assert moved_positions(pool, 4, 4, 4, 2, 2).tolist() == [9 * 5, 9 * 4]
    # windows that do not overlap (1×1 conv, 2×2 stride-2 pool) and adds move whole windows
    for spec in (LayerSpec(name="o", kind="conv", inputs=("x",), ci=8, hi=4, wi=4, co=8, ho=4, wo=4),
                 LayerSpec(name="q", kind="maxpool", inputs=("x",), ci=8, hi=8, wi=8, co=8, ho=4, wo=4,
                           kernel=(2, 2), stride=(2, 2)),
                 LayerSpec(name="a", kind="add", inputs=("x", "y"), ci=8, hi=4, wi=4, co=8, ho=4, wo=4)):
        assert not spec.slides
        assert moved_positions(spec, 4, 4, 2, 2, 4).tolist() == [spec.window_positions(2, 2)] * 4
