"""The planner sees activation compression: with it on, LOADFM / WRITEFM are priced at the bytes the
time model will charge (the layer's zero fractions), so a layer's partition can change; the floors
stay floors (the branch and bound still finds the exhaustive optimum), and a compiled program's
estimate is the sum of its plans' times."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from frontend_nets import TinyResNet, randomize_bn

from tilesparse.build import build_graph_from
from tilesparse.compiler import planning
from tilesparse.compiler.cache import CompileCache
from tilesparse.compiler.layers import LayerSpec
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.compiler.steps import WeightIndex
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.hw import load_array
from tilesparse.program.zero_compress import _chunk_data, charged_sizes, expected_sizes, min_ratio


def _conv(ci, co, h, k, zeros=None, density=1.0, seed=0):
    mask = np.random.default_rng(seed).random((-(-co // 8), -(-ci // 8))) < density
    p = k // 2
    return LayerSpec("L", "conv", ("x",), ci, h, h, co, h, h, (k, k), (1, 1), (p, p), mask=mask,
                     act_zero_fracs=zeros)


def _hw(arr="4x4"):
    hw = load_array(arr)
    return hw.model_copy(update={"dma_compression": hw.dma_compression.model_copy(update={"enabled": True})})


def test_charged_sizes_compress_only_what_saves_and_min_ratio_bounds_every_length():
    v = np.array([[64.0, 32.0], [96.0, 0.0]])
    got = charged_sizes(v, 0.75)
    assert np.allclose(got, expected_sizes(v, 0.75)) and got.sum() < v.sum()
    assert (charged_sizes(v, 0.0) == v).all()  # no zeros: the masks only add bytes, sent raw
    for z in np.linspace(0, 1, 41):  # a shorter last chunk never compresses better than a full one
        full = min_ratio(float(z))
        for n in range(1, 200):
            assert float(charged_sizes(np.array([float(n)]), float(z))[0]) >= full * n * (1 - 1e-12), (z, n)
    # the full chunk's ratio, by hand at zero fraction 1: a 4-byte mask per 32 bytes, no data
    assert min_ratio(1.0) == 4 / 32 and min_ratio(0.5) == pytest.approx((4 + _chunk_data(32, 0.5, 4)) / 32)


def test_a_loadfm_bound_layer_changes_its_partition_and_wins_by_it():
    """ResNet50's layer1 1x1 conv shape, 80 % zeros in and out: priced compressed the planner picks
    another partition, faster under compression than the one chosen from raw bytes."""
    hw = _hw()
    raw = _conv(64, 64, 56, 1)
    comp = dataclasses.replace(raw, act_zero_fracs=(0.8, 0.8))
    p_raw = planning.plan_layer(raw, hw, (False,), False)
    p_comp = planning.plan_layer(comp, hw, (False,), False)
    assert (p_comp.part.grid, p_comp.part.sub) != (p_raw.part.grid, p_raw.part.sub)
    old_choice = planning.plan_with(comp, hw, p_raw.part.grid, p_raw.part.sub, (False,), False)
    assert p_comp.time_s < old_choice.time_s * 0.97  # the old choice, priced as it will run, is slower
    # and the time is the time model's on the charged bytes (the compressed LOADFM / WRITEFM)
    tab = p_comp.table
    pipe = tab.pipe()
    charged = {op: charged_sizes(v, 0.8) if op in ("LOADFM", "WRITEFM") else v for op, v in pipe.items()}
    assert sum(charged["LOADFM"].ravel()) < 0.6 * sum(pipe["LOADFM"].ravel())
    from tilesparse.timing import layer_time_arrays

    assert p_comp.time_s == pytest.approx(layer_time_arrays(tab.loadw, tab.loadwm, charged, hw, tab.iters,
                                                            tab.writes))


def _exhaustive(spec, hw, monkeypatch):
    monkeypatch.setattr(planning, "MAX_EVALS", 10**9)
    monkeypatch.setattr(planning, "MAX_WORK", 10**9)
    widx = WeightIndex(spec) if spec.kind == "conv" else None
    got = planning._search(spec, hw, (False,), False, None, widx, CompileCache())
    best = min((p for grid in planning._grids(spec, hw)
                for cores in [planning.assign_cores(spec, hw, grid)]
                for sub in planning._subvolumes(spec, hw, planning._Live.of(cores), widx, CompileCache())
                if (p := planning._try(spec, hw, grid, cores, sub, (False,), False, widx, CompileCache()))),
               key=lambda p: p.time_s)
    assert got.time_s <= best.time_s * (1 + 1e-9)


@pytest.mark.parametrize("ci,co,h,k,z", [(64, 64, 28, 1, 0.8), (32, 96, 17, 3, 0.5), (96, 32, 9, 3, 0.95)])
def test_the_floors_stay_floors_under_compression(ci, co, h, k, z, monkeypatch):
    _exhaustive(_conv(ci, co, h, k, (z, z), density=0.6, seed=ci), _hw("2x2"), monkeypatch)


def test_the_floors_stay_floors_for_a_pool_under_compression(monkeypatch):
    spec = LayerSpec("P", "maxpool", ("x",), 96, 17, 17, 96, 8, 8, (3, 3), (2, 2), (0, 0), act_zero_fracs=(0.9, 0.3))
    _exhaustive(spec, _hw("4x3"), monkeypatch)


def test_a_compiled_network_plans_with_the_zero_fractions_it_records():
    torch.manual_seed(0)
    built = build_graph_from(randomize_bn(TinyResNet()).eval(), input_shape=(1, 3, 32, 32), sparsity=0.5)
    hw = _hw()
    on, off = compile_graph(built.graph, hw), compile_graph(built.graph, hw, act_compression="off")
    assert any(r.compressed for r in on.layers)
    # the planner priced what the time model charges: the plans' sum is the program's estimate
    assert on.meta["estimate_s"] == pytest.approx(estimate_program(on).total_s, rel=1e-6)
    assert off.meta["estimate_s"] == pytest.approx(estimate_program(off).total_s, rel=1e-6)
