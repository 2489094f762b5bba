"""Full ResNet50 at 224x224 on a 4x4 array: compile, simulate instruction by instruction over the
explicit memories, verify every layer bit for bit against the integer reference, and check the
time model's bytes and MACs. Target: simulation + verification under 60 s on two cores.

    python benchmarks/sim_resnet50.py [--quick] [--sparsity 0.5] [--patterns 2:4 8x8@0.5/2:4]

``--quick`` runs at 64x64. ``--patterns``: weight patterns (the ``--pattern`` grammar: N:M, HSS,
TASD, SDQ) simulated besides the 8x8-block sparsities. Writes benchmarks/results/sim_resnet50[_quick].md
and .json. Programs are compiled with the shipped array's defaults (activation zero compression
"auto": the simulator encodes and decodes the compressed streams; weights double-buffered in the
core and prefetched across layers where they fit, docs/time-model.md rules 5 and 7). Each program's
clocked replay is also compared with the time model, layer by layer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

TARGET_S = 60.0  # simulated and verified, two cores
RESULTS = Path(__file__).resolve().parent / "results"


def run(px: int, array: str, sparsity: float | None, pattern: str | None = None) -> dict:
    from tilesparse.build import build_graph_from
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.estimate.timemodel import estimate_program
    from tilesparse.sim import verify
    from tilesparse.sim.replay import replay

    t0 = time.perf_counter()
    g = (build_graph_from("resnet50", pattern=pattern, input_shape=(1, 3, px, px), seed=0) if pattern else
         build_graph_from("resnet50", sparsity=sparsity, block=(8, 8), input_shape=(1, 3, px, px), seed=0)).graph
    t1 = time.perf_counter()
    prog = compile_graph(g, array)
    t2 = time.perf_counter()
    x = np.random.default_rng(0).standard_normal((1, 3, px, px)).astype(np.float32)
    rep = verify(prog, g, x, progress=False)
    t3 = time.perf_counter()
    sim = rep.sim
    model, clocked = estimate_program(prog), replay(prog)
    replay_equal = all(abs(a.seconds - sec) <= 1e-9 * max(sec, 1e-12)
                       for a, (_, _, sec) in zip(clocked.layers, model.layers, strict=True))
    weights = pattern or ("dense" if not sparsity else f"8x8 {sparsity:.0%}")
    return {"network": "resnet50", "input": f"{px}x{px}", "array": array, "sparsity": sparsity, "weights": weights,
            "compressed_transfers": sum(len(r.compressed) for r in prog.layers),
            "double_buffered_layers": len({i.layer for i in prog.instrs if i.op == "LOADWM" and not i.halts}),
            "prefetched_layers": len({i.layer for i in prog.instrs if i.prefetch}),
            "estimate_ms": model.total_s * 1e3, "replay_equal": replay_equal,
            "layers": len(prog.layers), "instructions": len(prog.instrs),
            "front_end_s": t1 - t0, "compile_s": t2 - t1, "simulate_s": sim.seconds,
            "reference_s": rep.reference_s, "simulate_and_verify_s": t3 - t2,
            "bit_exact_layers": sum(c.ok for c in rep.checks), "bit_exact": rep.ok,
            "accounting_ok": sim.accounting_ok, "macs": sim.by_level["MACs"],
            "bytes_by_level": {k: v for k, v in sim.by_level.items() if k != "MACs"},
            "first_mismatch": None if rep.ok else rep.summary()}


def markdown(rows: list[dict], cmd: str) -> str:
    machine = (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
               f"target: simulate + verify < {TARGET_S:.0f} s.")
    head = ("| input | array | weights | layers | instrs | front end s | compile s | simulate s | reference s "
            "| simulate+verify s | bit-exact | bytes & MACs = time model | layers double-buffered / prefetched "
            "| estimate ms | replay = time model |")
    out = ["# Functional simulator: ResNet50 simulated and verified", "", f"Command: `{cmd}`  ", machine, "",
           head, "|" + "---|" * 15]
    for r in rows:
        out.append(f"| {r['input']} | {r['array']} | {r['weights']} | {r['layers']} | {r['instructions']} | "
                   f"{r['front_end_s']:.1f} | {r['compile_s']:.1f} | {r['simulate_s']:.1f} | {r['reference_s']:.1f} | "
                   f"**{r['simulate_and_verify_s']:.1f}** | {r['bit_exact_layers']}/{r['layers']} | "
                   f"{'yes' if r['accounting_ok'] else 'NO'} | {r['double_buffered_layers']} / "
                   f"{r['prefetched_layers']} | {r['estimate_ms']:.3f} | {'yes' if r['replay_equal'] else 'NO'} |")
    out += ["", "Bytes moved per memory level (all channels) and MACs executed:", ""]
    for r in rows:
        lv = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in r["bytes_by_level"].items())
        out.append(f"* {r['input']} {r['weights']}: {lv}; {r['macs'] / 1e9:.3f} GMAC; "
                   f"{r['compressed_transfers']} zero-compressed LOADFM / WRITEFM")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="64x64 input instead of 224x224")
    ap.add_argument("--array", default="4x4")
    ap.add_argument("--sparsity", type=float, nargs="*", default=[0.0, 0.5])
    ap.add_argument("--patterns", nargs="*", default=["2:4", "8x8@0.5/2:4"],
                    help="weight patterns besides the 8x8 sparsities (N:M, HSS, TASD, SDQ spellings)")
    a = ap.parse_args()
    px = 64 if a.quick else 224
    rows = [run(px, a.array, s) for s in a.sparsity] + [run(px, a.array, None, p) for p in a.patterns]
    for r in rows:
        print(json.dumps({k: v for k, v in r.items() if k != "bytes_by_level"}))
    from tilesparse.utils.atomic import atomic_write_text

    stem = "sim_resnet50" + ("_quick" if a.quick else "")
    cmd = "python benchmarks/sim_resnet50.py" + (" --quick" if a.quick else "")
    if a.patterns != ap.get_default("patterns"):
        cmd += " --patterns " + " ".join(a.patterns)
    atomic_write_text(RESULTS / f"{stem}.md", markdown(rows, cmd))
    atomic_write_text(RESULTS / f"{stem}.json", json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
