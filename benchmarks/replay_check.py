"""The clocked replay (tilesparse.sim.replay) against the time model, layer by layer.

ResNet50, Inception v3 and VGG16 at their full input resolution, dense and 50 % 8x8 block-sparse,
compiled for the 4x4, 8x8 and 4x2 arrays under each rule profile (``paper``, ``tilesparse``,
``measured``: the compiler searches its schedules under the profile, the program's array records
it): per combination, how many layers the replay times equal to the time model's
``estimate_program`` under the same profile (relative difference <= 1e-9: float rounding), the
largest difference, both totals; and, for information, the replay's total of the ``tilesparse``
programs under each rule variant a profile may change (docs/replay.md).

    python benchmarks/replay_check.py [--rules paper,tilesparse,measured] [--networks resnet50 ...]
                                      [--arrays 4x4 ...] [--quick] [--jobs 1] [--resume] [--report]

``--quick`` compiles at reduced input resolutions (``QUICK_SHAPES``). Each measured combination is
appended to ``<out>.rows.jsonl`` at once: ``--resume`` continues an interrupted run, ``--report``
writes the report from what is there (listing the combinations not run); both files are removed
once a run is complete.

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
RULES = ("paper", "tilesparse", "measured")
MODES = (("dense", 0.0), ("sparse", 0.5))  # 50 % of the 8x8 blocks of every conv but the first
QUICK_SHAPES = {"resnet50": (1, 3, 64, 64), "inception_v3": (1, 3, 75, 75), "vgg16": (1, 3, 32, 32)}
REL_TOL = 1e-9  # float rounding: sums taken in another order
VARIANT_RULES = "tilesparse"  # the profile whose programs the variants replay
VARIANTS = {  # rule variants of the replay (ReplayRules fields), reported for information
    "per-piece slot release": {"slot_release": "piece"},
    "no cut-through": {"cut_through": False},
    "no LOADW prefetch": {"loadw_prefetch": False},
    "one-iteration steps serial": {"serial_single_steps": True},
    "serial + no prefetch + no cut-through": {"serial_single_steps": True, "loadw_prefetch": False,
                                              "cut_through": False},
    "no layer barrier": {"layer_barrier": False},
}


def compare(prog, variants: bool = False) -> dict:
    """Per-layer comparison of the replay with the time model on one compiled program, both under
    the profile its array names (``prog.hw.rules``); ``variants``: also the replay's total under
    each of ``VARIANTS`` (today's rules changed one at a time)."""
    from dataclasses import replace

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
    base = ReplayRules()  # today's rules, each variant changes some
    var = {k: replay(prog, replace(base, **v)).total_s for k, v in VARIANTS.items()} if variants else {}
    return {"layers": len(diffs), "equal": sum(r["rel"] <= REL_TOL for r in diffs),
            "max_abs_diff_s": max(abs(r["diff_s"]) for r in diffs), "max_rel_diff": worst["rel"],
            "worst_layer": worst["layer"], "model_total_s": model.total_s, "replay_total_s": rep.total_s,
            "estimate_s": t1 - t0, "replay_s": t2 - t1, "iterations": sum(i.iters for i in prog.instrs),
            "variants_s": var, "unequal": [r for r in diffs if r["rel"] > REL_TOL]}


def _key(r: dict) -> tuple[str, str, str, str]:
    return r["network"], r["array"], r["mode"], r["rules"]


def run_one(network: str, mode: str, arrays: list[str], rules: list[str], quick: bool,
            rows_path: str | None = None, done: frozenset = frozenset()) -> list[dict]:
    """Every (array, profile) combination of one network at one density but those in ``done``: the
    graph built once, compiled per array under each profile; each row appended to ``rows_path``
    (JSON lines) as soon as it is measured, so an interrupted run can be resumed."""
    todo = [(arr, prof) for arr in arrays for prof in rules if (network, arr, mode, prof) not in done]
    if not todo:
        return []
    import torch

    torch.set_num_threads(1)
    from tilesparse.build import build_graph_from
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.hw import load_array

    sp = dict(MODES)[mode]
    shape = QUICK_SHAPES[network] if quick else None
    g = build_graph_from(network, sparsity=sp, block=(8, 8), input_shape=shape, quantized=False, seed=0).graph
    rows = []
    for arr, prof in todo:
        t = time.perf_counter()
        prog = compile_graph(g, load_array(arr).model_copy(update={"rules": prof}))
        row = {"network": network, "array": arr, "mode": mode, "rules": prog.hw.rules,
               "compile_s": time.perf_counter() - t}
        row.update(compare(prog, variants=prof == VARIANT_RULES))
        rows.append(row)
        if rows_path:  # one short line, appended whole: workers do not interleave
            with open(rows_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k not in ("unequal", "variants_s")}), flush=True)
    return rows


def _fmt_row(r: dict) -> str:
    return (f"| {r['network']} | {r['array']} | {r['mode']} | {r['rules']} | {r['equal']}/{r['layers']} | "
            f"{r['max_abs_diff_s']:.2g} | {r['worst_layer']} ({r['max_rel_diff']:.1e}) | "
            f"{r['model_total_s'] * 1e3:.4f} | {r['replay_total_s'] * 1e3:.4f} | {r['iterations']:,} | "
            f"{r['replay_s']:.2f} | {r['estimate_s']:.2f} | {r['compile_s']:.1f} |")


def _totals_by_profile(rows: list[dict], rules: list[str]) -> list[str]:
    """Latency (ms) per network x array x density, a column per profile."""
    out = ["## Latency per profile (ms, each compiled under its profile; time model = replay above)", "",
           "| network | array | density | " + " | ".join(rules) + " |", "|---|---|---|" + "---|" * len(rules)]
    cells = {(r["network"], r["array"], r["mode"], r["rules"]): r["model_total_s"] for r in rows}
    for key in dict.fromkeys((r["network"], r["array"], r["mode"]) for r in rows):
        vals = [cells.get((*key, p)) for p in rules]
        out.append(f"| {' | '.join(key)} | " + " | ".join("—" if v is None else f"{v * 1e3:.3f}" for v in vals) + " |")
    return out


def markdown(rows: list[dict], cmd: str, wall_s: float, rules: list[str], quick: bool,
             missing: list[tuple[str, str, str, str]] | None = None) -> str:
    res = "the reduced input resolutions of `--quick` (" + ", ".join(
        f"{n} {s[2]}x{s[3]}" for n, s in QUICK_SHAPES.items()) + ")" if quick else "full input resolution"
    n_eq, n = sum(r["equal"] for r in rows), sum(r["layers"] for r in rows)
    out = ["# Clocked replay vs time model, layer by layer", "",
           f"Command: `{cmd}`  ",
           f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores shared with other "
           f"jobs; wall time {wall_s:.0f} s (compiles included; a resumed run: its invocations added).", "",
           f"{len(rows)} combinations at {res}, each compiled under its rule profile (the compiler "
           "searches its schedules under the profile's rules) and timed under it by both. "
           f"**{n_eq:,} of {n:,} layers equal.**", ""]
    if missing:
        out += [f"**Not run ({len(missing)} combinations; the run was stopped before them):** "
                + ", ".join(" ".join(k) for k in missing) + ".", ""]
    out += ["The replay (`tilesparse.sim.replay`, docs/replay.md) plays each program's instructions out "
           "as a discrete-event simulation of its engines and locks, without the time model's code. "
           f"A layer is *equal* when the two times differ by at most {REL_TOL:g} of the layer's time "
           "(float rounding: a replayed layer's time is the difference of two absolute event times, milliseconds "
           "into the run, where the time model adds up per-layer times; and the replay adds weight pieces one by "
           "one where the time model sums them first).",
           "",
           "| network | array | density | rules | layers equal | max difference s | worst layer (rel.) "
           "| time model ms | replay ms | iterations | replay s | estimate s | compile s |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    out += [_fmt_row(r) for r in rows]
    bad = [(r, u) for r in rows for u in r["unequal"]]
    out += ["", f"Layers that differ by more than float rounding: {len(bad)}."]
    for r, u in bad:
        out.append(f"* {r['network']} {r['array']} {r['mode']} {r['rules']} {u['layer']}: time model "
                   f"{u['model_s'] * 1e6:.4f} µs, replay {u['replay_s'] * 1e6:.4f} µs")
    out += ["", *_totals_by_profile(rows, rules)]
    var_rows = [r for r in rows if r["variants_s"]]
    if var_rows:
        out += ["", "## The replay under other rules (for information; no time-model profile to compare with here)",
                "", f"Totals in ms, the programs compiled under the `{VARIANT_RULES}` rules (not re-optimised for "
                "the variant):", "",
                "| network | array | density | today | " + " | ".join(VARIANTS) + " |",
                "|---|---|---|---|" + "---|" * len(VARIANTS)]
        for r in var_rows:
            out.append(f"| {r['network']} | {r['array']} | {r['mode']} | {r['replay_total_s'] * 1e3:.3f} | "
                       + " | ".join(f"{r['variants_s'][k] * 1e3:.3f}" for k in VARIANTS) + " |")
    return "\n".join(out) + "\n"


def _rules_list(text: str) -> list[str]:
    from tilesparse.hw import get_profile

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of profiles, got nothing")
    try:
        return [get_profile(n).name for n in names]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=_rules_list, default=list(RULES),
                    help=f"comma-separated rule profiles (default: {','.join(RULES)})")
    ap.add_argument("--networks", nargs="*", default=list(NETWORKS))
    ap.add_argument("--arrays", nargs="*", default=list(ARRAYS))
    ap.add_argument("--quick", action="store_true",
                    help="reduced input resolutions (QUICK_SHAPES): minutes, not half an hour")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (one network x density each)")
    ap.add_argument("--out", default=None, help="markdown path (default: results/replay_check.md, "
                    "results/replay_check_quick.md with --quick); the .json beside it")
    ap.add_argument("--resume", action="store_true", help="keep the rows an interrupted run left in the "
                    "rows file (<out>.rows.jsonl) and measure only the missing combinations")
    ap.add_argument("--report", action="store_true", help="measure nothing: write the report from the rows "
                    "file, listing the combinations not run")
    a = ap.parse_args()
    t = time.perf_counter()
    out = Path(a.out) if a.out else RESULTS / ("replay_check_quick.md" if a.quick else "replay_check.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    rows_path, wall_path = out.with_suffix(".rows.jsonl"), out.with_suffix(".wall")
    keys = [(n, arr, m, p) for n in a.networks for arr in a.arrays for m, _ in MODES for p in a.rules]
    old = ([json.loads(line) for line in rows_path.read_text().splitlines() if line.strip()]
           if (a.resume or a.report) and rows_path.exists() else [])
    old_wall = float(wall_path.read_text()) if (a.resume or a.report) and wall_path.exists() else 0.0
    if not (a.resume or a.report):
        rows_path.write_text("")
    done = frozenset(_key(r) for r in old)
    tasks = [(n, m) for n in a.networks for m, _ in MODES] if not a.report else []
    args = ([n for n, _ in tasks], [m for _, m in tasks], [a.arrays] * len(tasks), [a.rules] * len(tasks),
            [a.quick] * len(tasks), [str(rows_path)] * len(tasks), [done] * len(tasks))
    if a.jobs > 1 and tasks:
        with ProcessPoolExecutor(max_workers=a.jobs) as ex:
            parts = list(ex.map(run_one, *args))
    else:
        parts = [run_one(*task) for task in zip(*args, strict=True)]
    order = {k: i for i, k in enumerate(keys)}
    rows = sorted((r for r in [*old, *(r for p in parts for r in p)] if _key(r) in order), key=lambda r: order[_key(r)])
    wall = time.perf_counter() - t + old_wall
    wall_path.write_text(f"{wall:.1f}")
    missing = [k for k in keys if k not in {_key(r) for r in rows}]
    from tilesparse.utils.atomic import atomic_write_text

    cmd = ("python benchmarks/replay_check.py" + (" --quick" if a.quick else "")
           + (f" --rules {','.join(a.rules)}" if list(a.rules) != list(RULES) else "")
           + (f" --networks {' '.join(a.networks)}" if list(a.networks) != list(NETWORKS) else "")
           + (f" --arrays {' '.join(a.arrays)}" if list(a.arrays) != list(ARRAYS) else ""))
    atomic_write_text(out, markdown(rows, cmd, wall, a.rules, a.quick, missing))
    atomic_write_text(out.with_suffix(".json"), json.dumps(rows, indent=1))
    if not missing:  # complete: the report holds every row
        rows_path.unlink(missing_ok=True)
        wall_path.unlink(missing_ok=True)
    n_eq, n = sum(r["equal"] for r in rows), sum(r["layers"] for r in rows)
    print(f"{n_eq}/{n} layers equal over {len(rows)} combinations ({len(missing)} not run); wrote {out} "
          f"in {wall:.0f} s")


if __name__ == "__main__":
    main()
