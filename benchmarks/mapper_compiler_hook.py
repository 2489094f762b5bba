"""Compiler hook: the estimated network latency with the compiler's own sub-volume heuristic vs with
sub-volumes taken from the mapper (``tilesparse.mapper.compiler_hook``).

    python benchmarks/mapper_compiler_hook.py [--quick]

Compiles ResNet-50 (``--quick``: ResNet-18) on the AIE2 4x4 array both ways and reports the
compiler's estimated latency (``tilesparse.estimate``) per layer and in total. Writes
benchmarks/results/mapper_compiler_hook.{md,json}.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse
import json
import time
from pathlib import Path

from tilesparse.utils.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--array", default="4x4")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.estimate.report import layer_rows, summarize
    from tilesparse.frontend import build_graph
    from tilesparse.mapper.compiler_hook import mapper_chooser

    net = "resnet18" if args.quick else "resnet50"
    budget = 1000 if args.quick else 3000
    g = build_graph(net)
    t = time.perf_counter()
    heur = compile_graph(g, args.array)
    t_heur = time.perf_counter() - t
    t = time.perf_counter()
    chooser = mapper_chooser(g, args.array, budget=budget, objective="latency")
    t_map = time.perf_counter() - t
    t = time.perf_counter()
    mapped = compile_graph(g, args.array, chooser=chooser)
    t_comp = time.perf_counter() - t
    s_h, s_m = summarize(heur), summarize(mapped)
    rows_h, rows_m = layer_rows(heur), layer_rows(mapped)
    lines = ["# Compiler hook: heuristic vs mapper sub-volumes", "",
             f"Command: `python benchmarks/mapper_compiler_hook.py{' --quick' if args.quick else ''}` "
             f"({net}, AIE2 {args.array}, genetic mapper, {budget:,} evaluations per distinct layer, "
             "objective latency; latencies are the compiler's own estimate).", "",
             "| | estimated latency ms | compile s | mapping s |", "|---|---:|---:|---:|",
             f"| compiler heuristic | {s_h.estimate_ms:.3f} | {t_heur:.1f} | - |",
             f"| mapper sub-volumes | {s_m.estimate_ms:.3f} | {t_comp:.1f} | {t_map:.1f} |", "",
             f"Ratio mapper / heuristic: **{s_m.estimate_ms / s_h.estimate_ms:.3f}**. Layers left to the "
             f"heuristic (mapper tile could not be made to fit): {chooser.fallbacks or 'none'}.", "",
             "Why the heuristic wins where it does: it enumerates sub-volumes under the compiler's own "
             "time model (per-instruction DMA times, LOADWM halts, per-call overhead), while the mapper "
             "optimizes the analytical model (perfect overlap, no lock/instruction costs) and only its "
             "core-level tile is imposed; the grid is still the compiler's.", "",
             "| layer | heuristic us | sub-volume | mapper us | sub-volume | limiter (h / m) |",
             "|---|---:|---|---:|---|---|"]
    for a, b in zip(rows_h, rows_m, strict=True):
        lines.append(f"| {a['layer']} | {a['time_us']:.1f} | {a['sub']} | {b['time_us']:.1f} | {b['sub']} "
                     f"| {a['limiter']} / {b['limiter']} |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "mapper_compiler_hook.md", "\n".join(lines) + "\n")
    atomic_write_text(RESULTS / "mapper_compiler_hook.json", json.dumps(
        {"network": net, "array": args.array, "heuristic_ms": s_h.estimate_ms, "mapper_ms": s_m.estimate_ms,
         "fallbacks": chooser.fallbacks, "mapping_s": t_map}, indent=1))
    print("\n".join(lines[:12]))


if __name__ == "__main__":
    main()
