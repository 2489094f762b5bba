"""The cost model prices a model trained to N:M / HSS from its actual masks: a hand-made HSS mask
keeping a quarter of the blocks is priced at the measured kept blocks (bytes and MACs computed by
hand here), a layer breaking the pattern falls back to its block mask, and `tilesparse map` of a
2:4 checkpoint is no longer priced dense."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from tilesparse.build import build_graph_from
from tilesparse.costmodel.formats import BlockMasked
from tilesparse.mapper.network import graph_problems, pattern_specs


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 16, 1))
    with torch.no_grad():
        w = net[2].weight  # 32 x 16: 4 x 2 blocks of 8x8; keep blocks (0, 0) and (2, 1) = 25 %
        keep = torch.zeros(32, 16, dtype=torch.bool)
        keep[0:8, 0:8] = keep[16:24, 8:16] = True
        keep &= (torch.arange(16) % 4 < 2)[None, :]  # 2 of every 4 input channels inside them
        w.mul_(keep[:, :, None, None])
        net[4].weight[:, 0:4] = 1.0  # 4 of 4 kept in the first run: breaks 2:4
    return net.eval()


def test_an_hss_layer_is_priced_at_its_measured_kept_blocks():
    g = build_graph_from(_net(), input_shape=(1, 3, 8, 8), quantized=False).graph
    problems = graph_problems(g)
    specs = pattern_specs(g, problems, "8x8@0.5/2:4", hw="4x4")
    assert specs[0] is None  # the first conv is never sparsified
    s = specs[1]
    assert isinstance(s.fmt(0), BlockMasked)
    assert s.dm(0).density == pytest.approx(2 * 64 * 0.5 / (32 * 16))  # measured: 1/8, nominal 1/4
    # MACs performed: kept blocks 2 of 8 at the sparse multiply's rate (dense K 8 / sparse K 16)
    assert s.mac_fraction == pytest.approx(0.25 * 0.5)
    # bytes by hand: 2 kept 8x8 blocks x 9 taps = 1,152 B in 36 chunks of 32, each 16 B kept + a
    # 4-byte mask; one bitmap bit per block of the 32 x 16 weight (8 bits)
    data, meta = s.fmt(0).expected(32, 16, s.dm(0), 9)
    assert (float(data), float(meta)) == (36 * 16, 36 * 4 * 8 + 8)
    # the layer that breaks 2:4 keeps its block-mask pricing (its all-zero blocks)
    assert specs[2] is not None and not isinstance(specs[2].fmt(0), BlockMasked)


def test_a_free_level_is_measured_too():
    """A checkpoint records 8x8/2:4 and its sparsity apart: the free level is priced as measured."""
    g = build_graph_from(_net(), input_shape=(1, 3, 8, 8), quantized=False).graph
    specs = pattern_specs(g, graph_problems(g), "8x8/2:4", hw="4x4")
    assert specs[1].mac_fraction == pytest.approx(0.125)
    assert specs[1].dm(0).density == pytest.approx(0.125)


def test_map_prices_a_2_4_checkpoint_below_its_dense_model(tmp_path, run_cli):
    run = run_cli
    code, cap = run("sparsify", "digits_cnn", "--pattern", "2:4", "--data", "none", "-o", "r")
    assert code in (0, None), cap.err
    common = ("-a", "4x4", "--budget", "60", "--mapper", "random", "--no-progress")
    code, cap = run("map", "r/sparse.pt", *common, "--json", "s.json")
    assert code in (0, None), cap.err
    code, cap = run("map", "digits_cnn", *common, "--json", "d.json")
    assert code in (0, None), cap.err
    sparse, dense = (json.loads((tmp_path / f).read_text())["layers"] for f in ("s.json", "d.json"))
    # the trained 2:4 convs (all but the first) run at the sparse multiply's rate: fewer cycles
    assert sparse[0]["cycles"] == pytest.approx(dense[0]["cycles"])
    assert all(s["cycles"] < d["cycles"] for s, d in zip(sparse[1:4], dense[1:4], strict=True))
    assert np.isfinite([r["energy_pj"] for r in sparse]).all()
