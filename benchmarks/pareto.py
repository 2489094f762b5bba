"""The pattern Pareto study: ResNet50, InceptionV3, VGG16 on 4x4 and 8x8, every pattern at 50 % and
75 % sparsity, and the digits CNN with accuracy from the accuracy study.

    python benchmarks/pareto.py            # resumable: finished (network, array) groups are kept
    python benchmarks/pareto.py --render   # rewrite pareto.md / .csv / .png from pareto.json

Writes benchmarks/results/pareto.{json,csv,md,png}.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, fields
from pathlib import Path

from tilesparse.reports.pareto import ParetoRow, load_accuracy, mark_fronts, plan_points, run_pareto
from tilesparse.reports.pareto_render import markdown, write_csv, write_markdown, write_plot
from tilesparse.utils.atomic import atomic_write_text

HERE = Path(__file__).resolve().parent
OUT = HERE / "results"
NETWORKS = ("resnet50", "inception_v3", "vgg16")
ARRAYS = ("4x4", "8x8")
PATTERNS = ("dense", "8x8", "2:4", "1:4", "hss", "tasd", "sdq")
SPARSITIES = (0.5, 0.75)
DIGITS = ("digits_cnn", "4x4")
ENERGY_BUDGET = 100


def _load(path: Path) -> dict[str, dict]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _rows(cache: dict[str, dict]) -> list[ParetoRow]:
    names = {f.name for f in fields(ParetoRow)}
    rows = [ParetoRow(**{k: v for k, v in r.items() if k in names}) for g in cache.values() for r in g["rows"]]
    nominal = {p.spec: p.sparsity for p in plan_points(PATTERNS, SPARSITIES)}
    for r in rows:  # a refused point's sparsity is its pattern's nominal one (TASD 2:4+1:4 is 0.25)
        if not r.compiled:
            r.sparsity = nominal.get(r.spec, r.sparsity)
    mark_fronts(rows)
    return rows


def _winners(rows: list[ParetoRow]) -> list[str]:
    """Per (network, array) and target sparsity: the fastest compiled pattern, and where the dense
    network spends its time (layers by their bound)."""
    out = []
    groups: dict[tuple[str, str], list[ParetoRow]] = {}
    for r in rows:
        groups.setdefault((r.network, r.array), []).append(r)
    for (net, array), g in groups.items():
        ok = [r for r in g if r.compiled]
        dense = next((r for r in ok if r.spec == "dense"), None)
        parts = []
        if dense is not None and dense.latency_ms:
            share = ", ".join(f"{k} {100 * dense.limiter_ms.get(k, 0.0) / dense.latency_ms:.0f} %"
                              for k in ("compute", "ddr", "memtile"))
            parts.append(f"dense {dense.latency_ms:.3f} ms ({share} of it in layers bound by)")
        for s in sorted({r.sparsity for r in ok if r.sparsity > 0}):
            at = sorted((r for r in ok if r.sparsity == s), key=lambda r: r.latency_ms or 0.0)
            if at:
                parts.append(f"at {s:g}: " + " < ".join(f"{r.spec} {r.latency_ms:.3f}" for r in at))
        out.append(f"- **{net} {array}**: " + "; ".join(parts))
    return out


def render(cache: dict[str, dict], seconds: float) -> None:
    rows = _rows(cache)
    write_csv(rows, OUT / "pareto.csv")
    write_plot(rows, OUT / "pareto.png")
    pre = PREAMBLE.format(seconds=seconds / 60, budget=ENERGY_BUDGET)
    pre += "## Fastest pattern per network, array and sparsity (latency ms, estimate)\n\n"
    pre += "\n".join(_winners(rows)) + "\n\n" + ANALYSIS + "\n## Tables\n\n"
    write_markdown(rows, OUT / "pareto.md", pre)
    print(markdown(rows)[:400])


PREAMBLE = """# Pattern Pareto study

Command: `python benchmarks/pareto.py` (resumable; `--render` rewrites the tables and the plot from
pareto.json); the same sweep as `tilesparse pareto --networks resnet50,inception_v3,vgg16 --arrays 4x4,8x8
--energy-budget {budget}`. Total compute {seconds:.0f} min on a shared 2-core machine.

Rules:

- Networks at their full resolution (ResNet50 and VGG16 224x224, InceptionV3 299x299), random weights
  (seed 0) pruned one-shot by magnitude to each pattern, every conv / linear but the first conv; compiled
  timing-only (no int8 calibration: latency and bytes do not depend on the values).
- Patterns: dense; 8x8 blocks at 50 % and 75 %; 2:4 (50 %) and 1:4 (75 %), packed in the sparse
  multiply's masked format; HSS 8x8/2:4 with the block level set so the whole is 50 % (8x8@0/2:4, i.e.
  2:4) or 75 % (8x8@0.5/2:4); TASD (2:4+1:4, 25 % sparse) and SDQ (int8 2:4 + int4, every weight kept;
  compiled quantized) are listed and reported "not compiled: <reason>" while the compiler refuses them
  (on main they are not in the --pattern grammar yet).
- Latency: the time model's estimate; bound: the per-layer lower bound (estimate/bounds.py).
  Weights: packed bytes (masks + kept weights, bias excluded). Traffic: bytes of the Program's
  instructions over DDR (LOAD, LOADW, WRITE) and between MemTile and cores (LOADFM, LOADWM, WRITEFM).
- Energy: the cost model (costmodel/) on the AIE2 preset of each array; every conv / linear mapped once
  (dense, energy objective, genetic mapper, {budget} evaluations per layer), then evaluated with the
  layer's compiled MAC density as a uniform weight density with skipping (kept MACs / MACs; halved for
  a masked-format layer, whose sparse multiply performs 2 of 4 products). The cost model does not model
  the patterns' structure yet, so patterns enter it only as densities.
- Accuracy: digits CNN (the accuracy study's digits network) from benchmarks/results/accuracy_study.jsonl,
  one-shot method, mean over its 3 seeds; a point the study did not train (8x8@0/2:4) has none.
- Front: per network and array, latency (lower better) against accuracy where accuracies exist, else
  against density (1 - sparsity; a denser network is assumed no less accurate). A point is on the
  front (*) if no other point is at least as good in both and strictly better in one.

"""

ANALYSIS = ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--render", action="store_true", help="only rewrite md/csv/png from pareto.json")
    args = ap.parse_args()
    path = OUT / "pareto.json"
    cache = _load(path)
    if not args.render:
        acc = load_accuracy(OUT / "accuracy_study.jsonl")
        jobs = [(n, a, None) for n in NETWORKS for a in ARRAYS] + [(DIGITS[0], DIGITS[1], acc)]
        for net, array, table in jobs:
            key = f"{net}|{array}"
            if key in cache:
                continue
            t0 = time.perf_counter()
            rows = run_pareto([net], [array], list(PATTERNS), list(SPARSITIES), accuracy=table,
                              energy_budget=ENERGY_BUDGET, on_point=lambda d: print(d, flush=True))
            cache[key] = {"seconds": time.perf_counter() - t0, "rows": [asdict(r) for r in rows]}
            atomic_write_text(path, json.dumps(cache, indent=1))
    render(cache, sum(g["seconds"] for g in cache.values()))


if __name__ == "__main__":
    main()
