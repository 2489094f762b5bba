"""The clocked replay (tilesparse.sim.replay) against the time model, layer by layer.

ResNet50, Inception v3 and VGG16 at their full input resolution, dense and 50 % 8x8 block-sparse,
compiled for the 4x4, 8x8 and 4x2 arrays: per combination, how many layers the replay times equal
to the time model's ``estimate_program`` (relative difference <= 1e-9: float rounding), the largest
difference, both totals; and, for information, the replay's total under each rule variant a time
model profile may change (docs/replay.md).

    python benchmarks/replay_check.py [--networks resnet50 ...] [--arrays 4x4 ...] [--jobs 1]

Writes benchmarks/results/replay_check.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NETWORKS = ("resnet50", "inception_v3", "vgg16")
ARRAYS = ("4x4", "8x8", "4x2")
SPARSITY = 0.5
REL_TOL = 1e-9  # float rounding: sums taken in another order
VARIANTS = {  # rule variants of the replay (ReplayRules fields), reported for information
    "per-piece slot release": {"slot_release": "piece"},
    "no cut-through": {"cut_through": False},
    "no LOADW prefetch": {"loadw_prefetch": False},
    "one-iteration steps serial": {"serial_single_steps": True},
    "serial + no prefetch + no cut-through": {"serial_single_steps": True, "loadw_prefetch": False,
                                              "cut_through": False},
    "no layer barrier": {"layer_barrier": False},
}


def compare(prog) -> dict:
    """Per-layer comparison of the replay with the time model on one compiled program."""
    from tilesparse.estimate.timemodel import estimate_program
    from tilesparse.sim.replay import ReplayRules, replay

    t0 = time.perf_counter()
    model = estimate_program(prog)
    t1 = time.perf_counter()
    rep = replay(prog)
    t2 = time.perf_counter()
    diffs = []
    for (name, _, sec), span in zip(model.layers, rep.layers, strict=True):
        d = span.seconds - sec
        diffs.append({"layer": name, "model_s": sec, "replay_s": span.seconds, "diff_s": d,
                      "rel": abs(d) / sec if sec else abs(d)})
    worst = max(diffs, key=lambda r: r["rel"])
    variants = {k: replay(prog, ReplayRules(**v)).total_s for k, v in VARIANTS.items()}
    return {"layers": len(diffs), "equal": sum(r["rel"] <= REL_TOL for r in diffs),
            "max_abs_diff_s": max(abs(r["diff_s"]) for r in diffs), "max_rel_diff": worst["rel"],
            "worst_layer": worst["layer"], "model_total_s": model.total_s, "replay_total_s": rep.total_s,
            "estimate_s": t1 - t0, "replay_s": t2 - t1, "iterations": sum(i.iters for i in prog.instrs),
            "variants_s": variants, "unequal": [r for r in diffs if r["rel"] > REL_TOL]}


def run_network(network: str, arrays: list[str]) -> list[dict]:
    import torch

    torch.set_num_threads(1)
    from tilesparse.build import build_graph_from
    from tilesparse.compiler.pipeline import compile_graph

    rows = []
    for mode, sp in (("dense", 0.0), ("sparse", SPARSITY)):
        g = build_graph_from(network, sparsity=sp, block=(8, 8), quantized=False, seed=0).graph
        for arr in arrays:
            t = time.perf_counter()
            prog = compile_graph(g, arr)
            row = {"network": network, "array": arr, "mode": mode, "compile_s": time.perf_counter() - t}
            row.update(compare(prog))
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k not in ("unequal", "variants_s")}), flush=True)
    return rows


def markdown(rows: list[dict], cmd: str, wall_s: float) -> str:
    out = ["# Clocked replay vs time model, layer by layer", "",
           f"Command: `{cmd}`  ",
           f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; whole run "
           f"{wall_s:.0f} s (compiles included).", "",
           "The replay (`tilesparse.sim.replay`, docs/replay.md) plays each program's instructions out "
           "as a discrete-event simulation of its engines and locks, without the time model's code. "
           f"A layer is *equal* when the two times differ by at most {REL_TOL:g} of the layer's time "
           "(float rounding: a replayed layer's time is the difference of two absolute event times, milliseconds "
           "into the run, where the time model adds up per-layer times; and the replay adds weight pieces one by "
           "one where the time model sums them first).",
           "",
           "| network | array | density | layers equal | max difference s | worst layer (rel.) | time model ms "
           "| replay ms | iterations | replay s | estimate s | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['network']} | {r['array']} | {r['mode']} | {r['equal']}/{r['layers']} | "
                   f"{r['max_abs_diff_s']:.2g} | {r['worst_layer']} ({r['max_rel_diff']:.1e}) | "
                   f"{r['model_total_s'] * 1e3:.4f} | {r['replay_total_s'] * 1e3:.4f} | {r['iterations']:,} | "
                   f"{r['replay_s']:.2f} | {r['estimate_s']:.2f} | {r['compile_s']:.1f} |")
    bad = [(r, u) for r in rows for u in r["unequal"]]
    out += ["", f"Layers that differ by more than float rounding: {len(bad)}."]
    for r, u in bad:
        out.append(f"* {r['network']} {r['array']} {r['mode']} {u['layer']}: time model {u['model_s'] * 1e6:.4f} µs, "
                   f"replay {u['replay_s'] * 1e6:.4f} µs")
    out += ["", "## The replay under other rules (for information; no time-model profile to compare with here)", "",
            "Totals in ms, the programs compiled under today's rules (not re-optimised for the variant):", "",
            "| network | array | density | today | " + " | ".join(VARIANTS) + " |",
            "|---|---|---|---|" + "---|" * len(VARIANTS)]
    for r in rows:
        out.append(f"| {r['network']} | {r['array']} | {r['mode']} | {r['replay_total_s'] * 1e3:.3f} | "
                   + " | ".join(f"{r['variants_s'][k] * 1e3:.3f}" for k in VARIANTS) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--networks", nargs="*", default=list(NETWORKS))
    ap.add_argument("--arrays", nargs="*", default=list(ARRAYS))
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one network each)")
    ap.add_argument("--out", default=str(RESULTS / "replay_check.md"))
    a = ap.parse_args()
    t = time.perf_counter()
    if a.jobs > 1:
        with ProcessPoolExecutor(max_workers=a.jobs) as ex:
            parts = list(ex.map(run_network, a.networks, [a.arrays] * len(a.networks)))
    else:
        parts = [run_network(n, a.arrays) for n in a.networks]
    rows = [r for p in parts for r in p]
    wall = time.perf_counter() - t
    from tilesparse.utils.atomic import atomic_write_text

    cmd = "python benchmarks/replay_check.py" + (f" --networks {' '.join(a.networks)}"
                                                 if list(a.networks) != list(NETWORKS) else "") \
        + (f" --arrays {' '.join(a.arrays)}" if list(a.arrays) != list(ARRAYS) else "")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, markdown(rows, cmd, wall))
    atomic_write_text(out.with_suffix(".json"), json.dumps(rows, indent=1))
    n_eq, n = sum(r["equal"] for r in rows), sum(r["layers"] for r in rows)
    print(f"{n_eq}/{n} layers equal over {len(rows)} combinations; wrote {out} in {wall:.0f} s")


if __name__ == "__main__":
    main()
