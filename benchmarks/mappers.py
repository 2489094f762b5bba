"""Mapper comparison: quality vs number of evaluations, with and without warm start.

    python benchmarks/mappers.py [--quick]

1. ResNet-50's distinct conv/linear layer shapes on the AIE2 4x4 preset (EDP objective): every
   mapper maps the layers in network order, cold and with warm start (replay buffer). Quality =
   best-so-far EDP / best EDP any run found for that layer (geomean over layers) after n evaluations.
   Warm-start ratio = evaluations a cold search needs to reach its final quality / evaluations the
   warm search needs to reach the same quality (geomean over layers after the first).
2. Small layers whose map space can be enumerated (a 3-level toy accelerator, no bypass search):
   the exhaustive optimum, and the evaluations each mapper needs to come within 5 % of it
   (target: <= 10 000), over several seeds.

Writes benchmarks/results/mappers.{md,json,png}.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse
import json
import time
from pathlib import Path

import numpy as np

from tilesparse.costmodel import Architecture, Problem, load_arch
from tilesparse.mapper import MapSpace, ReplayBuffer, search, space_size
from tilesparse.mapper.base import Evaluator
from tilesparse.mapper.network import network_problems
from tilesparse.mapper.search import exhaustive
from tilesparse.utils.atomic import atomic_write_bytes, atomic_write_text

RESULTS = Path(__file__).parent / "results"
MAPPERS = ("random", "random-pruned", "genetic", "annealing", "surrogate")
CHECKPOINTS = (100, 300, 1000, 3000, 10_000)
WITHIN = 0.05


def toy_arch() -> Architecture:
    """A 3-level accelerator small enough that its map spaces can be enumerated."""
    def lv(name, cap, rd, wr, pj, fan=1):
        return dict(name=name, capacity_bytes=cap, read_bytes_per_cycle=rd, write_bytes_per_cycle=wr,
                    read_pj_per_byte=pj, write_pj_per_byte=pj, fanout=fan)
    return Architecture(name="toy", compute=dict(macs_per_cycle=1, pj_per_mac=0.2), levels=[
        lv("rf", 16, 4, None, 1.0), lv("buf", 128, 4, 4, 6.0, 16), lv("dram", None, 1, 1, 100.0)])


SMALL = [Problem.conv(k=16, c=4, p=4, q=4, name="conv16x4x4x4"),
         Problem.matmul(16, 16, 16, name="matmul16"),
         Problem.conv(k=16, c=8, p=8, q=1, r=3, s=1, name="conv1d16x8x8r3"),
         Problem.conv(k=8, c=4, p=8, q=2, r=3, s=1, name="conv8x4x8x2r3")]


def unique_layers(problems: list[Problem]) -> list[Problem]:
    seen, out = set(), []
    for p in problems:
        key = (p.bounds, p.stride)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out


def run_network(layers, arch, budget: int, seed: int) -> dict:
    """histories[mapper][warm][layer] = best-so-far array."""
    out: dict = {m: {"cold": [], "warm": []} for m in MAPPERS}
    times: dict = {m: {"cold": 0.0, "warm": 0.0} for m in MAPPERS}
    for m in MAPPERS:
        for mode in ("cold", "warm"):
            buf = ReplayBuffer() if mode == "warm" else None
            for p in layers:
                t = time.perf_counter()
                r = search(p, arch, mapper=m, budget=budget, objective="edp", seed=seed, warm=buf)
                times[m][mode] += time.perf_counter() - t
                h = r.history
                out[m][mode].append(np.concatenate([h, np.full(budget - len(h), h[-1])]))
            print(f"  {m:14s} {mode}: {times[m][mode]:.1f} s", flush=True)
    return {"hist": out, "times": times}


def summarize_network(res: dict, n_layers: int, budget: int) -> dict:
    hist = res["hist"]
    ref = np.min([[hist[m][mode][i][-1] for m in MAPPERS for mode in ("cold", "warm")]
                  for i in range(n_layers)], axis=1)  # best EDP any run found, per layer
    curves, ratios = {}, {}
    for m in MAPPERS:
        for mode in ("cold", "warm"):
            q = np.array([hist[m][mode][i] / ref[i] for i in range(n_layers)])
            curves[f"{m}/{mode}"] = np.exp(np.log(q).mean(axis=0))
        r, reached = [], 0
        for i in range(1, n_layers):
            cold, warm = hist[m]["cold"][i], hist[m]["warm"][i]
            target = cold[-1]
            n_cold = int(np.flatnonzero(cold <= target)[0]) + 1
            hit = np.flatnonzero(warm <= target)
            if hit.size:
                reached += 1
                r.append(n_cold / (int(hit[0]) + 1))
        ratios[m] = {"geomean_ratio": float(np.exp(np.mean(np.log(r)))) if r else None,
                     "layers_reached": reached, "layers": n_layers - 1}
    return {"curves": curves, "ratios": ratios}


def run_small(budget: int, seeds: int) -> list[dict]:
    arch = toy_arch()
    rows = []
    for p in SMALL:
        space = MapSpace(p, arch, search_bypass=False)
        size = space_size(space)
        t = time.perf_counter()
        ex = exhaustive(space, Evaluator(space, "edp", budget=size))
        row = {"layer": str(p), "space": size, "optimum": ex.value,
               "exhaustive_s": time.perf_counter() - t, "mappers": {}}
        for m in MAPPERS:
            need, finals = [], []
            for s in range(seeds):
                r = search(p, arch, mapper=m, budget=budget, objective="edp", seed=s, search_bypass=False)
                need.append(r.evals_to_reach(ex.value * (1 + WITHIN)))
                finals.append(r.value / ex.value)
            row["mappers"][m] = {"evals_to_5pct": need, "final_over_opt": finals,
                                 "all_within": all(n is not None for n in need)}
        rows.append(row)
        print(f"  {p}: space {size:,}, exhaustive {row['exhaustive_s']:.1f} s, evals to 5 %: "
              + "; ".join(f"{m} {row['mappers'][m]['evals_to_5pct']}" for m in MAPPERS), flush=True)
    return rows


def plot(curves: dict, small: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, m in enumerate(MAPPERS):
        for mode, ls in (("cold", "-"), ("warm", "--")):
            c = curves[f"{m}/{mode}"]
            ax.plot(np.arange(1, len(c) + 1), c, ls, color=f"C{i}", label=f"{m} ({mode})")
    ax.set(xscale="log", yscale="log", xlabel="evaluations", ylabel="EDP / best found (geomean)",
           title="ResNet-50 layers on AIE2 4x4: mapping quality vs evaluations")
    ax.set_ylim(0.95, None)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    atomic_write_bytes(path, buf.getvalue())


def report(args, layers, net, summ, small, budget) -> str:
    cps = sorted({c for c in CHECKPOINTS if c <= budget} | {budget})
    lines = ["# Mapper comparison", "",
             f"Command: `python benchmarks/mappers.py{' --quick' if args.quick else ''}` (one thread).", "",
             f"## ResNet-50 ({len(layers)} distinct layer shapes), AIE2 4x4, objective EDP, budget {budget:,}",
             "", "Best-so-far EDP / best EDP found by any run, geomean over layers:", "",
             "| mapper | mode | " + " | ".join(f"{c:,}" for c in cps) + " | time s |",
             "|---|---|" + "---:|" * (len(cps) + 1)]
    for m in MAPPERS:
        for mode in ("cold", "warm"):
            c = summ["curves"][f"{m}/{mode}"]
            lines.append(f"| {m} | {mode} | " + " | ".join(f"{c[n - 1]:.3f}" for n in cps)
                         + f" | {net['times'][m][mode]:.1f} |")
    lines += ["", "Warm start: evaluations a cold search needs to reach its final quality / evaluations "
              "the warm search needs for the same quality (geomean over layers 2..n):", "",
              "| mapper | ratio | layers where warm reached it |", "|---|---:|---:|"]
    for m, r in summ["ratios"].items():
        g = "n/a" if r["geomean_ratio"] is None else f"{r['geomean_ratio']:.2f}x"
        lines.append(f"| {m} | {g} | {r['layers_reached']}/{r['layers']} |")
    lines += ["", f"## Enumerable layers (toy 3-level accelerator, no bypass search): evaluations to "
              f"come within {WITHIN:.0%} of the exhaustive optimum (budget {budget:,}; '-' = not reached)", "",
              "| layer | space | exhaustive s | " + " | ".join(MAPPERS) + " |",
              "|---|---:|---:|" + "---|" * len(MAPPERS)]
    for row in small:
        cells = [",".join("-" if n is None else str(n) for n in row["mappers"][m]["evals_to_5pct"])
                 for m in MAPPERS]
        lines.append(f"| {row['layer']} | {row['space']:,} | {row['exhaustive_s']:.1f} | " + " | ".join(cells) + " |")
    for m in ("genetic", "annealing", "surrogate"):
        ok = all(r["mappers"][m]["all_within"] for r in small)
        lines.append(f"\n{m}: within 5 % of the optimum in <= {budget:,} evaluations on every layer "
                     f"and seed: **{'yes' if ok else 'no'}**")
    lines += ["", "![quality vs evaluations](mappers.png)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    budget = 2000 if args.quick else 10_000
    arch = load_arch("aie2")
    layers = unique_layers(network_problems("resnet50"))
    if args.quick:
        layers = layers[:5]
    print("enumerable layers", flush=True)
    small = run_small(budget, seeds=1 if args.quick else 3)
    print(f"ResNet-50: {len(layers)} distinct layers", flush=True)
    net = run_network(layers, arch, budget, seed=0)
    summ = summarize_network(net, len(layers), budget)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(summ["curves"], small, RESULTS / "mappers.png")
    md = report(args, layers, net, summ, small, budget)
    atomic_write_text(RESULTS / "mappers.md", md)
    atomic_write_text(RESULTS / "mappers.json", json.dumps(
        {"budget": budget, "layers": [str(p) for p in layers], "times": net["times"],
         "curves_at": {k: {n: float(v[n - 1]) for n in sorted({*CHECKPOINTS, budget}) if n <= budget}
                       for k, v in summ["curves"].items()},
         "warm_ratios": summ["ratios"], "small": small}, indent=1, default=str))
    print(md)


if __name__ == "__main__":
    main()
