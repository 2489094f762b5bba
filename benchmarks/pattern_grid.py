"""Pattern grid: every weight pattern x network x array, compiled, simulated, verified and bounded.

The patterns (dense, 8x8 blocks at 50 %, 2:4, 1:4, HSS 8x8@0.5/2:4, TASD 2:4+1:4, SDQ
int8-2:4+int4) x ResNet50 / Inception v3 / VGG16 at reduced resolution x the 4x4, 5x5 and 4x2
arrays.

Per cell (the cell function is tests/pattern_cell.py's ``run_cell``, the one the suite's
tests/test_pattern_grid.py runs on a covering subset): random weights (seed 0) pruned one-shot
to the pattern, quantized, compiled with the array's defaults; simulated from the packed bytes and
checked bit for bit against the integer reference and in float against the PyTorch module (within
the tolerance derived from the quantization steps; SDQ is bit-exact only); every layer's simulated
bytes, MACs and cycles equal to the time model's; the clocked replay's total equal to the
estimate; the estimate over the per-layer bound sum (``estimate.bounds``) between 1 and 1.5; the
network bound; build / compile / simulate seconds.

    python benchmarks/pattern_grid.py [--quick] [--jobs 2] [--networks ...] [--patterns ...] [--arrays ...]

``--quick``: the suite's subset only (7 cells; tests/pattern_cell.py ``SUITE_CELLS``). Writes
benchmarks/results/pattern_grid[_quick].md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pattern_cell import ARRAYS, NETWORKS, PATTERNS, RATIO_MAX, RESOLUTION, SUITE_CELLS, cell_ok, run_cell  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _cell(args: tuple[str, str, str]) -> dict:
    import torch

    torch.set_num_threads(1)
    network, pattern, array = args
    t = time.perf_counter()
    try:
        row = run_cell(network, pattern, array)
    except Exception as e:  # a cell that fails to build, compile or simulate is reported, not fatal
        row = {"network": network, "pattern": pattern, "array": array, "error": f"{type(e).__name__}: {e}"}
    row["wall_s"] = time.perf_counter() - t
    print(json.dumps({k: v for k, v in row.items() if k != "worst_layers"}), flush=True)
    return row


def _us(s: float) -> str:
    return f"{s * 1e6:,.1f}"


def _why(r: dict) -> str:
    """The layers that take a failing cell above its ratio, from its data."""
    parts = [f"{w['layer']} {_us(w['estimate_s'])} µs vs bound {_us(w['bound_s'])} µs ({w['limiter']})"
             for w in r["worst_layers"]]
    return "; ".join(parts)


def markdown(rows: list[dict], cmd: str, wall_s: float, jobs: int) -> str:
    res = ", ".join(f"{n} {RESOLUTION[n]}x{RESOLUTION[n]}" for n in NETWORKS)
    out = ["# Pattern grid: every weight pattern x network x array, bit-exact and bounded", "",
           f"Command: `{cmd}`  ",
           f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared), "
           f"{jobs} worker process(es); whole run {wall_s:.0f} s.", "",
           f"Inputs: the smallest each network compiles at — {res}; VGG16's 7x7 adaptive pool made 1x1 so its "
           "classifier reads 512 features (tests/sim_helpers.py). Random weights (seed 0), pruned one-shot to the "
           "pattern (every layer but the first conv for the `--pattern` spellings), quantized with random "
           "calibration, compiled with the array's defaults, one seeded input.", "",
           "Columns: *bit-exact* every layer equal to the integer reference; *float* within the quantization "
           "tolerance of the PyTorch module (`sim.torch_oracle`; n/a for SDQ, whose layers hold two integer parts); "
           "*acct* every layer's simulated bytes, MACs and cycles equal to the time model's and the replay's total "
           "equal to the estimate; *estimate* the time model's total; *bound* the per-layer bound sum "
           "(`estimate.bounds`: each layer's largest of compute, DDR and MemTile↔core); *ratio* estimate / bound, "
           f"required in [1, {RATIO_MAX}]; *network bound* the largest per-resource sum over the network and its "
           "resource; *formats* the layers' packed weight formats.", "",
           "| network | pattern | array | bit-exact | float | acct | estimate µs | bound µs | ratio | network bound µs "
           "| formats | build s | compile s | simulate s | verify s | ok |",
           "|" + "---|" * 16]
    for r in rows:
        if "error" in r:
            out.append(f"| {r['network']} | {r['pattern']} | {r['array']} | error: {r['error']} |" + " |" * 12)
            continue
        fl = "n/a" if r["float_ok"] is None else ("yes" if r["float_ok"] else "**NO**")
        acct = "yes" if r["accounting_ok"] and r["replay_ok"] else "**NO**"
        fmts = ", ".join(f"{k} {v}" for k, v in sorted(r["formats"].items()))
        out.append(f"| {r['network']} | {r['pattern']} | {r['array']} | "
                   f"{'yes' if r['bit_exact'] else '**NO**'} {r['layers'] if r['bit_exact'] else ''} | {fl} | {acct} | "
                   f"{_us(r['estimate_s'])} | {_us(r['bound_sum_s'])} | {r['ratio']:.3f} | "
                   f"{_us(r['network_bound_s'])} ({r['network_limiter']}) | {fmts} | {r['build_s']:.1f} | "
                   f"{r['compile_s']:.1f} | {r['simulate_s']:.1f} | {r['verify_s']:.1f} | "
                   f"{'yes' if cell_ok(r) else '**NO**'} |")
    good = [r for r in rows if "error" not in r]
    n_ok = sum(cell_ok(r) for r in good)
    out += ["", f"Cells passing every check: {n_ok}/{len(rows)}."]
    if good:
        lo, hi = min(good, key=lambda r: r["ratio"]), max(good, key=lambda r: r["ratio"])
        out.append(f"Ratio estimate / bound: from {lo['ratio']:.3f} ({lo['network']} {lo['pattern']} {lo['array']}) "
                   f"to {hi['ratio']:.3f} ({hi['network']} {hi['pattern']} {hi['array']}).")
    bad = [r for r in good if not cell_ok(r)]
    if bad:
        out += ["", "## Cells that miss a check", ""]
        for r in bad:
            reasons = [k for k in ("bit_exact", "accounting_ok", "replay_ok") if not r[k]]
            reasons += ["float"] if r["float_ok"] is False else []
            reasons += [f"layers below their bound: {', '.join(r['layers_below_bound'])}"] if r["layers_below_bound"] \
                else []
            reasons += [f"ratio {r['ratio']:.3f}"] if not 1.0 <= r["ratio"] <= RATIO_MAX else []
            out.append(f"* {r['network']} {r['pattern']} {r['array']}: {'; '.join(reasons)}. "
                       f"Most time above the bound: {_why(r)}.")
    out += ["", "## Layers with the most time above their bound, per cell", "",
            "| network | pattern | array | layer: estimate µs / bound µs (limiter) |", "|---|---|---|---|"]
    for r in good:
        out.append(f"| {r['network']} | {r['pattern']} | {r['array']} | {_why(r)} |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the suite's 7 cells only (every pattern, network, array)")
    ap.add_argument("--networks", nargs="*", default=list(NETWORKS), choices=NETWORKS)
    ap.add_argument("--patterns", nargs="*", default=list(PATTERNS), choices=list(PATTERNS))
    ap.add_argument("--arrays", nargs="*", default=list(ARRAYS))
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one cell each)")
    ap.add_argument("--out", default=None, help="Markdown path (default benchmarks/results/pattern_grid[_quick].md)")
    a = ap.parse_args()
    cells = [c for c in SUITE_CELLS if c[0] in a.networks and c[1] in a.patterns and c[2] in a.arrays] if a.quick else \
        [(n, p, arr) for n in a.networks for p in a.patterns for arr in a.arrays]
    t = time.perf_counter()
    if a.jobs > 1:
        with ProcessPoolExecutor(max_workers=a.jobs) as ex:
            rows = list(ex.map(_cell, cells))
    else:
        rows = [_cell(c) for c in cells]
    wall = time.perf_counter() - t
    from tilesparse.utils.atomic import atomic_write_text

    cmd = "python benchmarks/pattern_grid.py" + (" --quick" if a.quick else "")
    cmd += f" --jobs {a.jobs}" if a.jobs > 1 else ""
    for flag, val, default in (("--networks", a.networks, NETWORKS), ("--patterns", a.patterns, PATTERNS),
                               ("--arrays", a.arrays, ARRAYS)):
        if list(val) != list(default):
            cmd += f" {flag} " + " ".join(val)
    out = Path(a.out) if a.out else RESULTS / ("pattern_grid" + ("_quick" if a.quick else "") + ".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, markdown(rows, cmd, wall, a.jobs))
    atomic_write_text(out.with_suffix(".json"), json.dumps(rows, indent=1))
    n_ok = sum("error" not in r and cell_ok(r) for r in rows)
    print(f"{n_ok}/{len(rows)} cells pass every check; wrote {out} in {wall:.0f} s")


if __name__ == "__main__":
    main()
