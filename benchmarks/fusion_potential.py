"""What depth-first (fused) schedules could buy (issue 23, item 2), measured before building them.

Per network, array and density, on the program the compiler makes today:

* **estimate** — the time model (layers one after another, rule 7);
* **per-layer bound sum** — what any layer-by-layer schedule reaches at best;
* **overlap, data-ordered** — the clocked replay with the layer barrier lifted
  (``ReplayRules(layer_barrier=False)``): a layer's reads wait for the layers that wrote their
  input, its writes for the layers still reading what they overwrite; locks and the cores' program
  order keep the rest. What layers overlapping whole-layer by whole-layer through MemTile reach;
* **overlap ceiling** — the same with no dependence between layers at all
  (``layer_data_deps=False``): not a schedule, the ceiling of any tile-by-tile fusion through MemTile
  (a consumer tile starting as soon as the producer tiles it reads are written) of today's per-layer
  plans;
* **in-core fusion bound** — ``estimate.bounds.fusion_bound``: chains of convs whose intermediate
  stays in the cores, ideal (docs/time-model.md, "In-core fusion bound"): on this overlay every core
  then splits space and every row channel carries all of a fused group's weights; the number of
  groups the best cut fuses;
* **network bound** — every resource's work summed over the network.

Two settings: *timing-only* (random int8-range weights, no calibration: what ``table2.py`` and
issue 23's targets measure) and *quantized* (calibrated, activations zero-compressed on the
MemTile↔core streams: what ``sim_resnet50.py`` simulates).

    python benchmarks/fusion_potential.py            # ResNet50 4×4 both settings, ResNet50 8×8, Inception v3 4×4
    python benchmarks/fusion_potential.py --quick    # ResNet50 4×4 timing-only

Writes benchmarks/results/fusion_potential.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS_MS = {("resnet50", "4x4", 0.0): 2.2, ("resnet50", "4x4", 0.5): 1.5}  # issue 23, measured by table2.py
CASES = [("resnet50", "4x4", "timing-only"), ("resnet50", "4x4", "quantized"), ("resnet50", "8x8", "timing-only"),
         ("inception_v3", "4x4", "timing-only")]


def run_case(net: str, array: str, setting: str, sparsity: float) -> dict:
    import torch

    torch.set_num_threads(1)
    from tilesparse.build import build_graph_from, compile_source
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.estimate.bounds import fusion_bound, network_bound, program_bounds
    from tilesparse.estimate.timemodel import estimate_program
    from tilesparse.hw import load_array
    from tilesparse.sim.replay import ReplayRules, replay

    if setting == "quantized":
        prog = compile_source(net, array, sparsity=sparsity)
    else:
        g = build_graph_from(net, sparsity=sparsity, block=(8, 8), quantized=False, seed=0).graph
        prog = compile_graph(g, load_array(array))
    bounds = program_bounds(prog)
    fb = fusion_bound(prog, bounds)
    row = {"network": net, "array": array, "setting": setting, "sparsity": sparsity,
           "estimate_ms": estimate_program(prog).total_s * 1e3,
           "layer_bound_sum_ms": sum(b.bound_s for b in bounds) * 1e3,
           "overlap_data_ms": replay(prog, ReplayRules(layer_barrier=False)).total_s * 1e3,
           "overlap_ceiling_ms": replay(prog, ReplayRules(layer_barrier=False, layer_data_deps=False)).total_s * 1e3,
           "fusion_bound_ms": fb.bound_s * 1e3, "fused_groups": [list(g) for g in fb.groups],
           "network_bound_ms": network_bound(prog, bounds).bound_s * 1e3,
           "target_ms": TARGETS_MS.get((net, array, sparsity)) if setting == "timing-only" else None}
    print(json.dumps({k: v for k, v in row.items() if k != "fused_groups"}), flush=True)
    return row


def markdown(rows: list[dict], wall_s: float, command: str) -> str:
    out = ["# What depth-first (fused) schedules could buy", "", f"Command: `{command}`  ",
           f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; whole run {wall_s:.0f} s.",
           "", __doc__.split("\n\n", 1)[1].split("    python")[0].strip(), "",
           "| network | array | setting | density | estimate ms | per-layer bound sum ms | overlap, data-ordered ms "
           "| overlap ceiling ms | in-core fusion bound ms (groups) | network bound ms | target ms |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tgt = f"≤ {r['target_ms']}" if r["target_ms"] else "—"
        out.append(f"| {r['network']} | {r['array']} | {r['setting']} | {'sparse' if r['sparsity'] else 'dense'} | "
                   f"{r['estimate_ms']:.3f} | {r['layer_bound_sum_ms']:.3f} | {r['overlap_data_ms']:.3f} | "
                   f"{r['overlap_ceiling_ms']:.3f} | {r['fusion_bound_ms']:.3f} ({len(r['fused_groups'])}) | "
                   f"{r['network_bound_ms']:.3f} | {tgt} |")
    out += ["", "## The targets", ""]
    for r in rows:
        if not r["target_ms"]:
            continue
        t, est, per, ceil, fus = (r[k] for k in ("target_ms", "estimate_ms", "layer_bound_sum_ms",
                                                 "overlap_ceiling_ms", "fusion_bound_ms"))
        each = min(per, ceil, fus) > t
        out.append(f"* ResNet50 4×4 {'sparse' if r['sparsity'] else 'dense'} (target ≤ {t} ms, timing-only): "
                   f"estimate {est:.3f}; every layer-by-layer schedule ≥ {per:.3f}; overlapping today's layers "
                   f"through MemTile ≥ {ceil:.3f} ({100 * (1 - ceil / est):.1f} % below the estimate at most); "
                   f"in-core fusion, groups one after another, ≥ {fus:.3f} ({100 * (1 - fus / per):.1f} % below the "
                   f"per-layer bound sum, fusing {len(r['fused_groups'])} groups). "
                   + ("Each alone stays above the target" if each else "One of them alone reaches the target")
                   + f"; both together are bounded only by the network bound, {r['network_bound_ms']:.3f} "
                   f"(the two ceilings' gains multiplied would give {fus * ceil / est:.3f}: an indication, "
                   "not a bound).")
    groups = next((r["fused_groups"] for r in rows if r["target_ms"]), [])
    if groups:
        out += ["", "Groups the in-core bound fuses (ResNet50 4×4 timing-only, first row with a target): "
                + "; ".join(" → ".join(g) for g in groups) + "."]
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="ResNet50 4×4 timing-only only")
    args = ap.parse_args()
    cases = CASES[:1] if args.quick else CASES
    t = time.perf_counter()
    rows = [run_case(net, arr, setting, sp) for net, arr, setting in cases for sp in (0.0, 0.5)]
    wall = time.perf_counter() - t
    command = "python benchmarks/fusion_potential.py" + (" --quick" if args.quick else "")
    name = "fusion_potential_quick" if args.quick else "fusion_potential"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown(rows, wall, command))
    print(f"wrote {RESULTS / (name + '.md')}")


if __name__ == "__main__":
    main()
