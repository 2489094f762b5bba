"""Cost-model throughput: mapping evaluations per second on one core (batched numpy).

    python benchmarks/costmodel_speed.py [--quick]

Writes benchmarks/results/costmodel_speed.{md,json}. Mappings are random repaired (valid) mappings
of ResNet-50 layers on the AIE2 4x4 preset and on the Eyeriss-like preset; the timed call is
``evaluate_batch`` (dense, and sparse with a uniform 50 % weight density, bitmask, skipping) and,
separately, the validity check plus evaluation as a mapper sees it.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"  # one core, set before numpy loads

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from tilesparse.costmodel import (
    Problem,
    SparseSpec,
    Uniform,
    check_batch,
    evaluate_batch,
    load_arch,
    make_format,
)
from tilesparse.mapper.space import MapSpace
from tilesparse.utils.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"
TARGET = 100_000
LAYERS = [
    Problem.conv(k=64, c=3, p=112, q=112, r=7, s=7, stride=2, name="conv1"),
    Problem.conv(k=64, c=64, p=56, q=56, r=3, s=3, name="layer1.conv2"),
    Problem.conv(k=256, c=128, p=28, q=28, name="layer2.conv3"),
    Problem.conv(k=512, c=512, p=7, q=7, r=3, s=3, name="layer4.conv2"),
    Problem.matmul(1, 2048, 1000, name="fc"),
]


def _rate(fn, n: int, repeats: int) -> float:
    fn()  # warm up
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def _rates(p, arch, b, sparse, n: int, repeats: int) -> dict[str, float]:
    """Evaluations per second of the batch ``b``: dense, sparse, and checked then evaluated."""
    return {"dense_eval_per_s": _rate(lambda: evaluate_batch(p, arch, b), n, repeats),
            "sparse_eval_per_s": _rate(lambda: evaluate_batch(p, arch, b, sparse), n, repeats),
            "check_plus_eval_per_s": _rate(lambda: (check_batch(p, arch, b), evaluate_batch(p, arch, b)), n, repeats)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    batch_n, repeats = (5000, 3) if args.quick else (10_000, 5)
    sparse = SparseSpec(density={"W": Uniform(0.5)}, formats={"W": make_format("bitmask")}, action="skip")
    rows = []
    for arch_name in ("aie2", "eyeriss"):
        arch = load_arch(arch_name)
        for p in LAYERS:
            space = MapSpace(p, arch)
            rng = np.random.default_rng(0)
            b = space.decode(space.repair(space.random(batch_n, rng), rng))
            rows.append({"arch": arch.name, "layer": p.name, "batch": batch_n,
                         **_rates(p, arch, b, sparse, batch_n, repeats)})
    med = {k: float(np.median([r[k] for r in rows]))
           for k in ("dense_eval_per_s", "sparse_eval_per_s", "check_plus_eval_per_s")}
    lines = ["# Cost-model speed (one core)", "",
             f"Command: `python benchmarks/costmodel_speed.py{' --quick' if args.quick else ''}` "
             f"({platform.processor() or platform.machine()}, numpy {np.__version__}, 1 thread, "
             f"batches of {batch_n}, best of {repeats}).", "",
             "| arch | layer | dense eval/s | sparse eval/s | check + eval/s |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['arch']} | {r['layer']} | {r['dense_eval_per_s']:,.0f} | {r['sparse_eval_per_s']:,.0f} "
              f"| {r['check_plus_eval_per_s']:,.0f} |" for r in rows]
    ok = med["dense_eval_per_s"] >= TARGET
    lines += ["", f"Median dense: **{med['dense_eval_per_s']:,.0f}** evaluations/s; sparse "
              f"{med['sparse_eval_per_s']:,.0f}/s; check + eval {med['check_plus_eval_per_s']:,.0f}/s. "
              f"Target >= {TARGET:,}/s: **{'met' if ok else 'NOT met'}**."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS / "costmodel_speed.md", "\n".join(lines) + "\n")
    atomic_write_text(RESULTS / "costmodel_speed.json", json.dumps({"rows": rows, "median": med,
                                                                    "target": TARGET}, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
