"""The sub-volume search: repeated layers reuse a choice without changing it, the branch and bound
returns the exhaustive search's optimum (its floors never skip a winner), and the vectorised COMP
work tables agree with a brute-force count from the mask."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tilesparse.compiler import planning
from tilesparse.compiler.cache import CompileCache
from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.steps import WeightIndex
from tilesparse.hw import load_array


def _spec(ci, co, h, k, density, seed, name="L"):
    rng = np.random.default_rng(seed)
    mask = rng.random((-(-co // 8), -(-ci // 8))) < density
    p = k // 2
    return LayerSpec(name, "conv", ("x",), ci, h, h, co, h, h, (k, k), (1, 1), (p, p), mask=mask)


@pytest.mark.parametrize("arr", ["2x2", "5x3"])
def test_repeated_layer_gets_the_plan_a_fresh_search_finds(arr):
    hw = load_array(arr)
    a = _spec(256, 512, 14, 1, 1.0, 0, "a")
    b = dataclasses.replace(a, name="b", inputs=("y",), out_tensor="b")  # same shape and mask
    cache = CompileCache()
    pa = planning.plan_layer(a, hw, (False,), False, cache=cache)
    assert len(cache.tables["plans"]) == 1
    pb = planning.plan_layer(b, hw, (False,), False, cache=cache)  # from the memo
    assert len(cache.tables["plans"]) == 1
    fresh = planning._search(b, hw, (False,), False, None, WeightIndex(b), CompileCache())
    assert pb.spec.name == "b" and pb.part.layer == "b"
    assert (pb.part.grid, pb.part.sub) == (pa.part.grid, pa.part.sub) == (fresh.part.grid, fresh.part.sub)
    assert pb.time_s == pytest.approx(fresh.time_s)
    # a different mask is a different key
    c = dataclasses.replace(a, name="c", mask=~a.mask | (np.arange(a.mask.shape[1]) % 2 == 0))
    assert planning._plan_key(c, hw, (False,), False) != planning._plan_key(a, hw, (False,), False)
    assert planning._plan_key(a, hw, (True,), False) != planning._plan_key(a, hw, (False,), False)


@settings(max_examples=30, deadline=None)
@given(ci=st.sampled_from([8, 24, 64, 100]), co=st.sampled_from([8, 16, 40, 72]), k=st.sampled_from([1, 3]),
       density=st.sampled_from([0.3, 0.7]), seed=st.integers(0, 99), n=st.sampled_from([4, 8, 16]),
       kd=st.sampled_from([8]))
def test_slab_work_and_kept_pairs_match_brute_force(ci, co, k, density, seed, n, kd):
    spec = _spec(ci, co, 4, k, density, seed)
    w = WeightIndex(spec)
    rng = np.random.default_rng(seed)
    cb0 = np.sort(rng.integers(0, w.n_cb, 3))
    cb1 = np.minimum(cb0 + rng.integers(1, w.n_cb + 1, 3), w.n_cb)
    # brute force: kept input channels of every output channel over block columns [c0, c1)
    width = np.minimum(8, ci - 8 * np.arange(w.n_cb))
    per_ch = spec.mask[np.arange(co) // 8] * width[None, :]
    slab_cum = w.q_tables_many(cb0, cb1, n, kd)
    for q, (c0, c1) in enumerate(zip(cb0, cb1, strict=True)):
        kept = per_ch[:, c0:c1].sum(axis=1)
        steps = [-(-int(kept[a:a + n].max()) // kd) * k * k for a in range(0, co, n)]  # K padded per tap
        assert slab_cum[:, q].tolist() == np.r_[0, np.cumsum(steps)].tolist()
        o0, o1 = sorted(rng.integers(0, co + 1, 2))
        got = w.kept_many(np.array([o0]), np.array([o1]), np.array([c0]), np.array([c1]))[0]
        assert got == kept[o0:o1].sum()


def _check_search_is_exhaustive_optimum(spec, hw, monkeypatch):
    """Without the evaluation budget, the search's plan is as fast as the fastest over every
    grid × sub-volume, each timed: its floors never skip a winner."""
    monkeypatch.setattr(planning, "MAX_EVALS", 10**9)
    monkeypatch.setattr(planning, "MAX_WORK", 10**9)
    widx = WeightIndex(spec) if spec.kind == "conv" else None
    got = planning._search(spec, hw, (False,), False, None, widx, CompileCache())
    best = None
    for grid in planning._grids(spec, hw):
        cores = planning.assign_cores(spec, hw, grid)
        for sub in planning._subvolumes(spec, hw, planning._Live.of(cores), widx, CompileCache()):
            plan = planning._try(spec, hw, grid, cores, sub, (False,), False, widx, CompileCache())
            if plan is not None and (best is None or plan.time_s < best.time_s):
                best = plan
    assert got.time_s <= best.time_s * (1 + 1e-9), (got.part.grid, got.part.sub, best.part.grid, best.part.sub)


@settings(max_examples=12, deadline=None)
@given(ci=st.sampled_from([16, 64, 192]), co=st.sampled_from([16, 96, 256]), h=st.sampled_from([5, 9, 17]),
       k=st.sampled_from([1, 3]), density=st.sampled_from([0.5, 1.0]), seed=st.integers(0, 3),
       arr=st.sampled_from(["2x2", "3x2", "5x5"]))
def test_branch_and_bound_finds_the_exhaustive_optimum(ci, co, h, k, density, seed, arr):
    """The floors only skip what cannot win."""
    with pytest.MonkeyPatch.context() as mp:
        _check_search_is_exhaustive_optimum(_spec(ci, co, h, k, density, seed), load_array(arr), mp)


@settings(max_examples=10, deadline=None)
@given(c=st.sampled_from([16, 96, 288]), h=st.sampled_from([7, 17, 35]), k=st.sampled_from([2, 3]),
       stride=st.sampled_from([1, 2]), arr=st.sampled_from(["2x2", "4x3", "8x8"]))
def test_branch_and_bound_finds_the_exhaustive_optimum_of_pools(c, h, k, stride, arr):
    """Channel-wise ops have no weights: their floors come from the LOADFM / WRITEFM bytes."""
    hw = load_array(arr)
    p = (k - 1) // 2 if stride == 1 else 0
    ho = (h + 2 * p - k) // stride + 1
    spec = LayerSpec("P", "maxpool", ("x",), c, h, h, c, ho, ho, (k, k), (stride, stride), (p, p))
    with pytest.MonkeyPatch.context() as mp:
        _check_search_is_exhaustive_optimum(spec, hw, mp)


@pytest.mark.parametrize("arr", ["2x2", "4x4", "8x8"])
def test_branch_and_bound_finds_the_exhaustive_optimum_of_flatten(arr, monkeypatch):
    """A flatten's output channel c·H·W + h·W + w reads input channel c (VGG16's 512×7×7)."""
    spec = LayerSpec("F", "flatten", ("x",), 512, 7, 7, 512 * 49, 1, 1)
    _check_search_is_exhaustive_optimum(spec, load_array(arr), monkeypatch)
