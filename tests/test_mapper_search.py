"""Every mapper returns only valid mappings within its budget; exhaustive is optimal; warm start and
the sparsity-aware objective behave as specified."""

from __future__ import annotations

import numpy as np
import pytest

from tilesparse.costmodel import (
    Architecture,
    Problem,
    SparseSpec,
    Uniform,
    evaluate,
    load_arch,
    why_invalid,
)
from tilesparse.errors import ConfigError
from tilesparse.mapper import (
    MAPPERS,
    MapSpace,
    ReplayBuffer,
    map_network,
    search,
    space_size,
)
from tilesparse.mapper.base import Evaluator
from tilesparse.mapper.search import exhaustive
from tilesparse.mapper.space import Genomes


def tiny_arch() -> Architecture:
    lv = dict(read_pj_per_byte=1.0, write_pj_per_byte=1.0)
    return Architecture(name="tiny", compute=dict(macs_per_cycle=1, pj_per_mac=0.1), levels=[
        dict(name="rf", capacity_bytes=24, read_bytes_per_cycle=2, **lv),
        dict(name="buf", capacity_bytes=256, read_bytes_per_cycle=2, write_bytes_per_cycle=2,
             fanout=4, **{**lv, "read_pj_per_byte": 4.0}),
        dict(name="dram", read_bytes_per_cycle=1, write_bytes_per_cycle=1,
             **{**lv, "read_pj_per_byte": 50.0, "write_pj_per_byte": 50.0})])


TINY = Problem.matmul(4, 4, 8, name="tiny")


@pytest.mark.parametrize("mapper", [m for m in MAPPERS if m != "exhaustive"])
def test_every_mapper_returns_valid_mappings_within_budget(mapper):
    arch = load_arch("aie2")
    p = Problem.conv(k=64, c=32, p=14, q=14, r=3, s=3, name="c3")
    budget = 600
    r = search(p, arch, mapper=mapper, budget=budget, objective="edp", seed=1)
    assert r.n_evals <= budget and len(r.history) == r.n_evals
    assert why_invalid(p, arch, r.mapping) is None
    assert all(why_invalid(p, arch, m) is None for m in r.top)
    assert np.all(r.history[1:] <= r.history[:-1])  # best-so-far never gets worse
    assert r.value == pytest.approx(evaluate(p, arch, r.mapping).edp, rel=1e-9)


def test_exhaustive_is_optimal_and_others_never_beat_it():
    arch = tiny_arch()
    space = MapSpace(TINY, arch, search_bypass=False)
    size = space_size(space)
    ex = exhaustive(space, Evaluator(space, "edp", budget=size))
    assert ex.n_evals == size and why_invalid(TINY, arch, ex.mapping) is None
    for mapper in ("random-pruned", "genetic", "annealing"):
        r = search(TINY, arch, mapper=mapper, budget=3000, objective="edp", search_bypass=False)
        assert r.value >= ex.value * (1 - 1e-9)


def test_exhaustive_refuses_huge_spaces():
    arch = load_arch("aie2")
    p = Problem.conv(k=256, c=256, p=14, q=14, r=3, s=3)
    with pytest.raises(ConfigError, match="mappings"):
        search(p, arch, mapper="exhaustive", budget=1000)


def test_warm_start_seeds_are_valid_for_a_new_shape():
    arch = load_arch("aie2")
    buf = ReplayBuffer()
    first = search(Problem.conv(k=64, c=64, p=56, q=56, r=3, s=3, name="a"), arch, budget=400, warm=buf)
    assert len(buf) == 1 and first.top
    p2 = Problem.conv(k=128, c=64, p=28, q=28, r=3, s=3, stride=2, name="b")
    space = MapSpace(p2, arch)
    seeds = buf.seeds(space, 8, np.random.default_rng(0))
    assert seeds is not None and len(seeds) >= 1
    assert np.all(space.check(seeds) == 0)


def test_map_network_reuses_identical_layers():
    arch = load_arch("aie2")
    a = Problem.conv(k=32, c=32, p=14, q=14, r=3, s=3, name="a")
    res = map_network([a, a, Problem.conv(k=64, c=32, p=7, q=7, name="b")], arch, budget=200)
    assert res[0] is res[1] and len(res) == 3


def test_sparsity_aware_objective_is_geometric_mean():
    arch = tiny_arch()
    r = search(TINY, arch, mapper="genetic", budget=500, objective="latency", densities=[0.25, 1.0])
    vals = [evaluate(TINY, arch, r.mapping, SparseSpec(density={"W": Uniform(d)}, action="skip")).cycles
            for d in (0.25, 1.0)]
    assert r.value == pytest.approx(np.sqrt(vals[0] * vals[1]), rel=1e-9)


def test_bad_search_arguments():
    arch = tiny_arch()
    with pytest.raises(ConfigError, match="unknown mapper"):
        search(TINY, arch, mapper="bayes")
    with pytest.raises(ConfigError, match="budget"):
        search(TINY, arch, budget=0)
    with pytest.raises(ConfigError, match="objective"):
        search(TINY, arch, objective="area")
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        search(TINY, arch, densities=[1.2])


def test_mask_specs_carry_actual_masks_and_drive_map_network():
    from tilesparse.mapper.network import graph_problems, mask_specs, network_graph

    g = network_graph("resnet18", input_shape=(1, 3, 32, 32), sparsity=0.5)  # pruned by the front door
    problems = graph_problems(g)
    specs = mask_specs(g)
    assert specs[0] is None  # the first layer stays dense
    dens = [s.density["W"].density for s in specs[1:]]
    assert all(0.4 <= d <= 0.6 for d in dens)
    res = map_network(problems[:3], load_arch("aie2"), budget=100, sparse_specs=specs[:3], objective="latency")
    assert res[1].breakdown.effective_macs == pytest.approx(problems[1].macs * dens[0])


@pytest.mark.parametrize("mapper", ["random-pruned", "genetic", "annealing", "surrogate"])
def test_no_bypass_space_is_respected(mapper):
    # regression: the surrogate's projection and warm-start seeds once carried keep bits into a
    # space searched without bypass, "beating" the exhaustive optimum with mappings outside it
    r = search(TINY, tiny_arch(), mapper=mapper, budget=300, search_bypass=False)
    assert all(k == frozenset("WIO") for k in r.mapping.keep)


def _local_setup(seed=0, budget=5000):
    from tilesparse.mapper.search import LocalSearch, _seeded

    arch = tiny_arch()
    space = MapSpace(Problem.conv(k=8, c=4, p=4, q=2, r=3, s=1, name="small"), arch, search_bypass=True)
    ev = Evaluator(space, "edp", budget=budget)
    rng = np.random.default_rng(seed)
    return space, ev, LocalSearch(space, ev, rng), _seeded(space, 1, rng, None)


@pytest.mark.parametrize("seed", [0, 1])
def test_local_search_ends_at_a_local_optimum(seed):
    from tilesparse.mapper.operators import neighbourhood

    space, ev, ls, g = _local_setup(seed)
    g, v = ls.run(g, float(ls.evaluate(g)[0]))
    assert not ev.exhausted
    # reference: score every valid single move (and its repaired form) directly with the model
    raw = neighbourhood(space, g)
    nb = Genomes.concat([raw, space.repair(raw, np.random.default_rng(99))])
    vals = Evaluator(space, "edp", budget=10**6).values(space.decode(nb))
    assert np.all(vals >= v * (1 - 1e-12))
    assert v == pytest.approx(ev.best_value) and np.isfinite(v)


def test_local_search_never_evaluates_a_mapping_twice():
    space, ev, ls, g = _local_setup()
    seen = []
    orig = ev.__call__

    class Spy:  # records every mapping that reaches the evaluator
        exhausted = property(lambda self: ev.exhausted)

        def __call__(self, batch):
            seen.extend(space.keys(batch))
            return orig(batch)

    ls.ev = Spy()
    ls.run(g, float(ls.evaluate(g)[0]))
    assert len(seen) == len(set(seen)) == ev.n_evals > 1


def test_keys_ignore_order_of_trivial_loops_only():
    space = MapSpace(TINY, tiny_arch(), search_bypass=False)
    g = space.repair(space.random(1, np.random.default_rng(3)), np.random.default_rng(3))
    m = space.decode(g)
    lvl = 0
    row = list(g.order[0, lvl])
    triv = [d for d in row if m.temporal[0, lvl, d] == 1]
    nontriv = [d for d in row if m.temporal[0, lvl, d] > 1]
    g2 = g.take([0])
    g2.order[0, lvl] = nontriv + triv[::-1]  # trivial loops reordered: same mapping
    assert space.keys(g) == space.keys(g2)
    if len(nontriv) >= 2:
        g3 = g.take([0])
        g3.order[0, lvl] = nontriv[::-1] + triv
        assert space.keys(g) != space.keys(g3)


@pytest.mark.parametrize("mapper", ["genetic", "annealing", "surrogate"])
def test_mappers_reach_the_exhaustive_optimum_on_a_small_layer(mapper):
    arch = tiny_arch()
    p = Problem.conv(k=4, c=4, p=4, q=1, r=3, s=1, name="small")  # 27,640 mappings
    space = MapSpace(p, arch, search_bypass=False)
    ex = exhaustive(space, Evaluator(space, "edp", budget=space_size(space)))
    r = search(p, arch, mapper=mapper, budget=3000, objective="edp", seed=0, search_bypass=False)
    assert r.value <= ex.value * 1.05 and r.n_evals <= 3000
