"""One cell of the pattern grid (benchmarks/pattern_grid.py, tests/test_pattern_grid.py): a zoo
network pruned to one weight pattern, quantized (random weights, seeded), compiled for one array,
simulated and verified bit for bit against the integer reference and in float against the PyTorch
module (within the tolerance ``sim.torch_oracle`` derives from the quantization steps; SDQ graphs,
whose layers hold two integer parts, are checked bit-exact only — ``sim.verify``), the simulator's
bytes / operations / cycles equal to the time model's, the clocked replay equal to the estimate,
and the estimate set against the lower bounds (``estimate.bounds``)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
from torch import nn

from tilesparse.build import build_graph_from
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.estimate.bounds import network_bound, program_bounds
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.models import get_model
from tilesparse.sim import verify
from tilesparse.sim.replay import replay

# The weight patterns of the grid: name -> build_graph_from keywords. "dense" and the 8x8 blocks
# are block requests (``sparsity`` + ``block``); the others are ``--pattern`` spellings.
PATTERNS: dict[str, dict[str, Any]] = {
    "dense": {"sparsity": None, "block": (8, 8)},
    "8x8@50%": {"sparsity": 0.5, "block": (8, 8)},
    "2:4": {"pattern": "2:4"},
    "1:4": {"pattern": "1:4"},
    "8x8@0.5/2:4": {"pattern": "8x8@0.5/2:4"},
    "2:4+1:4": {"pattern": "2:4+1:4"},
    "int8-2:4+int4": {"pattern": "int8-2:4+int4"},
}
NETWORKS = ("resnet50", "inception_v3", "vgg16")
ARRAYS = ("4x4", "5x5", "4x2")
# Smallest inputs each network compiles at (as tests/sim_helpers.py): ResNet50 32 px (1x1 before
# its pool), Inception v3 75 px (torchvision's minimum), VGG16 32 px with its 7x7 adaptive pool
# made 1x1 so the classifier reads 512 features instead of 25088.
RESOLUTION = {"resnet50": 32, "inception_v3": 75, "vgg16": 32}
# The suite's subset (tests/test_pattern_grid.py, ``pattern_grid.py --quick``): every pattern once,
# every network and every array, dense and sparse, at the least CPU time (measured alone: 6-12 s a
# cell on one core; VGG16 costs the least dense, a 4x2 array's cell the least with 8x8 blocks). Its
# VGG16 and Inception v3 cells are also tests/test_sim_models.py's rectangular-array cases (the same
# builds, programs and input), which that file leaves to this one.
SUITE_CELLS = (("vgg16", "dense", "4x2"), ("inception_v3", "8x8@50%", "4x2"), ("resnet50", "2:4", "4x4"),
               ("resnet50", "1:4", "5x5"), ("resnet50", "8x8@0.5/2:4", "4x4"), ("resnet50", "2:4+1:4", "5x5"),
               ("resnet50", "int8-2:4+int4", "4x4"))
RATIO_MAX = 1.5  # the ceiling on estimate / per-layer bound sum
SEED = 0


def grid_model(name: str) -> nn.Module:
    """The zoo network with random weights (``seed`` 0), VGG16's pool reduced as ``RESOLUTION`` says."""
    m = get_model(name, seed=SEED)
    if name == "vgg16":
        m.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        m.classifier[0] = nn.Linear(512, 4096)
    return m


def run_cell(network: str, pattern: str, array: str, *, top: int = 3) -> dict[str, Any]:
    """Build, compile, simulate and check one cell; returns its row (plain data, JSON-ready).

    ``bit_exact``: every layer equal to the integer reference; ``float_ok``: within tolerance of
    PyTorch (None for SDQ), ``float_not_compared`` the layers that check skipped;
    ``sim_mac_fraction``: the MACs the simulator executed over the network's dense MACs;
    ``accounting_ok``: bytes, MACs and cycles per layer equal the time model's; ``replay_ok``: the
    replay's total equals the estimate; ``ratio``: estimate over the per-layer bound sum;
    ``worst_layers``: the ``top`` layers with the most time above their bound."""
    px = RESOLUTION[network]
    t0 = time.perf_counter()
    built = build_graph_from(grid_model(network), input_shape=(1, 3, px, px), seed=SEED, **PATTERNS[pattern])
    t1 = time.perf_counter()
    prog = compile_graph(built.graph, array)
    t2 = time.perf_counter()
    x = np.random.default_rng(1).standard_normal((1, 3, px, px)).astype(np.float32)
    rep = verify(prog, built.graph, x, module=built.module, progress=False)
    t3 = time.perf_counter()
    bad_acc = [a.name for a in rep.sim.accounts
               if not (a.sim_bytes == a.model_bytes and a.sim_macs == a.model_macs
                       and a.sim_cycles == a.model_cycles and a.totals_ok)]
    est = estimate_program(prog)
    bounds = program_bounds(prog)
    nb = network_bound(prog, bounds)
    replay_s = replay(prog).total_s
    bound_sum = sum(b.bound_s for b in bounds)
    per_layer = [{"layer": name, "estimate_s": sec, "bound_s": b.bound_s, "limiter": b.limiter,
                  "floor_s": b.floor_s, "excess_s": sec - b.bound_s}
                 for (name, _, sec), b in zip(est.layers, bounds, strict=True)]
    below = [r["layer"] for r in per_layer if r["estimate_s"] < r["bound_s"] * (1 - 1e-9)]
    fc = rep.float_check
    return {"network": network, "input": f"{px}x{px}", "pattern": pattern, "array": array,
            "layers": len(prog.layers),
            "kept_mac_fraction": sum(r.kept_macs for r in prog.layers) / sum(r.macs for r in prog.layers),
            "weight_bytes_fraction": (sum(r.packed_weight_bytes for r in prog.layers)
                                      / sum(r.dense_weight_bytes for r in prog.layers)),
            "formats": dict(Counter(r.geometry.weight_format for r in prog.layers)),
            "bit_exact": all(c.ok for c in rep.checks), "first_mismatch": None if rep.ok else rep.bit_summary(),
            "float_ok": None if fc is None else bool(fc.ok),
            "float_cosine": None if fc is None else float(fc.cosine),
            "float_not_compared": None if fc is None else list(fc.not_compared),
            "sim_mac_fraction": sum(a.sim_macs for a in rep.sim.accounts) / sum(r.macs for r in prog.layers),
            "accounting_ok": not bad_acc, "accounting_bad": bad_acc,
            "replay_ok": abs(replay_s - est.total_s) <= 1e-9 * est.total_s,
            "estimate_s": est.total_s, "bound_sum_s": bound_sum, "ratio": est.total_s / bound_sum,
            "floor_sum_s": sum(b.floor_s for b in bounds), "network_bound_s": nb.bound_s,
            "network_limiter": nb.limiter, "layers_below_bound": below,
            "worst_layers": sorted(per_layer, key=lambda r: -r["excess_s"])[:top],
            "build_s": t1 - t0, "compile_s": t2 - t1, "simulate_s": rep.sim.seconds,
            "verify_s": t3 - t2}


def cell_ok(row: dict[str, Any]) -> bool:
    """Every check of a cell passed and 1 <= ratio <= ``RATIO_MAX``."""
    return bool(row["bit_exact"] and row["float_ok"] is not False and row["accounting_ok"] and row["replay_ok"]
                and not row["layers_below_bound"] and 1.0 <= row["ratio"] <= RATIO_MAX)
