"""Which torchvision classifiers the tool chain takes, at random weights: compiles? estimated time
dense and 50 % 8x8-block sparse, bit-exact in simulation? and, for each failure, its one-line reason.

    python benchmarks/classifiers.py [--limit 240] [--models resnet18,mnasnet0_5 [--update]] [--no-sim-for vgg16]

Writes benchmarks/results/classifiers.md and classifiers.json. Each model runs in its own
subprocess with a wall-time limit (a timeout is reported as such), torch on one thread. Compile and
estimate at the model's full resolution (224, 299 for inception_v3) on the 4x4 array; the
simulation, which checks every layer of the compiled program against the integer reference of the
graph, runs dense at a reduced resolution (64, 75 for inception_v3) to keep the run short.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5", "shufflenet_v2_x1_0",
          "efficientnet_b0", "densenet121", "resnext50_32x4d", "googlenet", "squeezenet1_0", "regnet_x_400mf",
          "alexnet", "vgg16", "inception_v3"]
ARRAY = "4x4"
SPARSITY = 0.5
LIMIT_S = 240.0


# alexnet's AdaptiveAvgPool2d(6) and vgg16's (7) at 64x64 pool 1x1 and 2x2 maps in unequal windows
# (COMP kind adaptive_avgpool, docs/compiler.md); inception_v3 needs at least 75 px
SIM_SIZE = {"inception_v3": 75}


def _sizes(name: str) -> tuple[int, int]:
    """(estimate resolution, simulate resolution)."""
    return (299 if name == "inception_v3" else 224), SIM_SIZE.get(name, 64)


def _reason(exc: BaseException) -> str:
    """The error's first line, without the list of supported ops an unsupported-op error appends."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first.split('; supported:')[0]}"


def _estimate(name: str, size: int, sparsity: float) -> float:
    from tilesparse.build import compile_source
    from tilesparse.estimate.report import summarize

    prog = compile_source(name, ARRAY, sparsity=sparsity, input_shape=(1, 3, size, size))
    return float(summarize(prog).estimate_ms)


def _simulate(name: str, size: int) -> str:
    import numpy as np

    from tilesparse.build import build_graph_from
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.hw import load_array
    from tilesparse.sim import verify

    shape = (1, 3, size, size)
    built = build_graph_from(name, sparsity=0.0, input_shape=shape)
    prog = compile_graph(built.graph, load_array(ARRAY))
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    rep = verify(prog, built.graph, x, progress=False)
    return "yes" if rep.ok else f"no: {rep.summary().strip().splitlines()[0]}"


def run_one(name: str, sim: bool) -> dict:
    """One model, in this process: every column, a failure recorded as its one-line reason."""
    import torch

    torch.set_num_threads(1)
    full, small = _sizes(name)
    row: dict = {"model": name, "input": full, "sim_input": small}
    t0 = time.perf_counter()
    try:
        row["dense_ms"] = _estimate(name, full, 0.0)
        row["sparse_ms"] = _estimate(name, full, SPARSITY)
        row["compiles"] = True
    except Exception as exc:  # noqa: BLE001 - the reason is the result
        row.update(compiles=False, reason=_reason(exc))
    if sim and row["compiles"]:
        try:
            row["bit_exact"] = _simulate(name, small)
        except Exception as exc:  # noqa: BLE001
            row["bit_exact"] = f"error: {_reason(exc)}"
    elif not sim:
        row["bit_exact"] = "skipped (budget)"
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def _in_subprocess(name: str, sim: bool, limit: float) -> dict:
    cmd = [sys.executable, __file__, "--one", name] + ([] if sim else ["--no-sim-for", name])
    t0 = time.perf_counter()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=False)
    except subprocess.TimeoutExpired:
        return {"model": name, "compiles": False, "reason": f"timeout: over the {limit:g} s per-model limit",
                "seconds": round(time.perf_counter() - t0, 1)}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        tail = (out.stderr.strip().splitlines() or ["no output"])[-1]
        return {"model": name, "compiles": False, "reason": f"crashed (exit {out.returncode}): {tail}",
                "seconds": round(time.perf_counter() - t0, 1)}
    return json.loads(lines[-1])


def _cell(v: object, fmt: str = "{:.2f}") -> str:
    return "—" if v is None else fmt.format(v)


def to_markdown(rows: list[dict], command: str, limit: float) -> str:
    head = ("| model | input | compiles | dense ms | 50 % 8x8 ms | speed-up | bit-exact (sim input) | reason | s |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    body = ""
    for r in rows:
        d, s = r.get("dense_ms"), r.get("sparse_ms")
        speed = f"{d / s:.2f}×" if d and s else "—"
        sim = r.get("bit_exact", "—")
        sim_at = f" ({r['sim_input']})" if r.get("compiles") and "skipped" not in sim else ""
        body += (f"| {r['model']} | {r.get('input', '—')} | {'yes' if r.get('compiles') else 'no'} | {_cell(d)} | "
                 f"{_cell(s)} | {speed} | {sim}{sim_at} | {r.get('reason', '').replace('|', '/')} | "
                 f"{r.get('seconds', '—')} |\n")
    ok = sum(1 for r in rows if r.get("compiles"))
    exact = sum(1 for r in rows if r.get("bit_exact") == "yes")
    rules = (f"\n{ok}/{len(rows)} compile; {exact} simulated bit-exact.\n\n"
             f"Command: `{command}`\n\nRules: torchvision models at random weights (seed 0), eval mode; "
             f"compile + estimate (`tilesparse.build.compile_source`, `tilesparse.estimate.report.summarize`, "
             f"total ms) at 224×224 (299×299 for inception_v3) on the {ARRAY} array, dense and "
             f"{SPARSITY:.0%} 8x8-block sparse (one-shot L2 pruning); bit-exact = `tilesparse.sim.verify` of the "
             f"dense program against the graph's integer reference, every layer, at the reduced input given in "
             f"brackets (alexnet and vgg16 at 64: their adaptive pool to 6×6 / 7×7 then has unequal windows). "
             f"Each model in its own process, torch on 1 thread, limit {limit:g} s per model (a "
             f"timeout is reported as the reason). The reason is the first line of the error raised.\n")
    return "# torchvision classifiers: compile, estimate, simulate\n\n" + head + body + rules


def merge_rows(path: Path, new: list[dict]) -> list[dict]:
    """The rows of ``path`` (a previous run's JSON) with those of the same models replaced by ``new``,
    in ``MODELS`` order (others after)."""
    old = json.loads(path.read_text()) if path.exists() else []
    by_name = {r["model"]: r for r in old} | {r["model"]: r for r in new}
    order = [m for m in MODELS if m in by_name] + [m for m in by_name if m not in MODELS]
    return [by_name[m] for m in order]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated torchvision names")
    ap.add_argument("--limit", type=float, default=LIMIT_S, help="wall seconds per model")
    ap.add_argument("--update", action="store_true",
                    help="keep the other models' rows of the existing classifiers.json, replace these")
    ap.add_argument("--no-sim-for", default="", help="comma-separated models whose simulation is skipped")
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: one model in this process, JSON to stdout
    args = ap.parse_args(argv)
    no_sim = {m for m in args.no_sim_for.split(",") if m}
    if args.one:
        print(json.dumps(run_one(args.one, args.one not in no_sim)))
        return 0
    from rich.progress import Progress

    rows: list[dict] = []
    names = [m for m in args.models.split(",") if m]
    with Progress() as bar:
        task = bar.add_task("classifiers", total=len(names))
        for name in names:
            bar.update(task, description=name)
            rows.append(_in_subprocess(name, name not in no_sim, args.limit))
            bar.advance(task)
    command = "python benchmarks/classifiers.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.update:
        rows = merge_rows(RESULTS / "classifiers.json", rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "classifiers.json").write_text(json.dumps(rows, indent=2) + "\n")
    md = to_markdown(rows, command.strip(), args.limit)
    (RESULTS / "classifiers.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
