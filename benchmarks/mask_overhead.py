"""Cost of training with masks attached: resnet50 training step, masked vs dense, on CPU.

    python benchmarks/mask_overhead.py [--quick] [--batch 4] [--reps 7]

Both models are built from the same seed; the masked one has 50 % 8x8 block masks on every conv but
the first (the forward pass computes W * mask; the convolutions stay dense). Steps are interleaved
(dense-masked, then masked-dense, ...) after a warm-up, so machine load hits both alike. Headline:
the median over rounds of the per-round ratio masked / dense of this process's CPU time with one torch
thread (robust when other jobs share the machine); wall-time ratios, ratios of medians and of minimums
are reported beside it.
Writes benchmarks/results/mask_overhead.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from tilesparse.models.zoo import get_model
from tilesparse.sparsify import BlockSparsifier, Recipe
from tilesparse.utils.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"
BUDGET = 1.15  # the bar: a masked step costs at most 1.15x a dense step
WARMUP_STEPS = 2


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, weight_decay=1e-4)
    model.train()

    def step() -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) for one training step."""
        t0, c0 = time.perf_counter(), time.process_time()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0, time.process_time() - c0

    return step


def summarize(times: dict[str, list[float]]) -> dict[str, float]:
    paired = [m / d for m, d in zip(times["masked"], times["dense"], strict=True)]
    return {"paired_median": statistics.median(paired),
            "ratio_of_medians": statistics.median(times["masked"]) / statistics.median(times["dense"]),
            "ratio_of_minimums": min(times["masked"]) / min(times["dense"])}


def markdown(args, size, reps, n_layers, cpu, wall, stats, ratio) -> str:
    def row(kind, times):
        return [f"| {name} ({kind}) | {statistics.median(times[name]):.3f} | "
                f"{', '.join(f'{t:.2f}' for t in times[name])} |" for name in ("dense", "masked")]

    def line(kind):
        st = stats[kind]
        return (f"- {kind} time: median of per-round ratios {st['paired_median']:.3f}, ratio of medians "
                f"{st['ratio_of_medians']:.3f}, ratio of minimums {st['ratio_of_minimums']:.3f}")

    return "\n".join([
        "# Mask overhead: resnet50 training step, masked vs dense (CPU)",
        "",
        f"Batch {args.batch}, input 3x{size}x{size}, SGD with momentum, {torch.get_num_threads()} torch "
        f"thread(s), torch {torch.__version__}. {n_layers} convs carry 50 % 8x8 masks (a parametrization "
        f"computing W * mask; the convolutions stay dense). {reps} interleaved rounds after {WARMUP_STEPS} "
        "warm-up rounds. The machine is shared with other jobs, so wall time is noisy; the headline uses this "
        "process's CPU time (one thread: no time spent waiting for other jobs is counted).",
        "",
        "| step | median s | all rounds (s) |",
        "|---|---|---|",
        *row("CPU", cpu), *row("wall", wall),
        "",
        line("cpu"), line("wall"),
        "",
        f"**masked / dense = {ratio:.3f}** (CPU time, median of per-round ratios; budget {BUDGET}: "
        f"{'met' if ratio <= BUDGET else 'NOT met'}).",
        "",
    ])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="112x112 inputs, 3 repetitions")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (1 keeps CPU-time measurements clean on a shared machine)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size, reps = (112, 3) if args.quick else (224, args.reps)
    torch.manual_seed(0)
    x, y = torch.randn(args.batch, 3, size, size), torch.randint(0, 1000, (args.batch,))
    dense, masked = get_model("resnet50", seed=0), get_model("resnet50", seed=0)
    sp = BlockSparsifier(Recipe(sparsity=0.5, block=(8, 8))).prepare(masked)
    sp.step()
    steps = {"dense": make_step(dense, x, y), "masked": make_step(masked, x, y)}
    wall: dict[str, list[float]] = {"dense": [], "masked": []}
    cpu: dict[str, list[float]] = {"dense": [], "masked": []}
    for i in range(WARMUP_STEPS + reps):
        for name in ("dense", "masked") if i % 2 == 0 else ("masked", "dense"):
            w, c = steps[name]()
            if i >= WARMUP_STEPS:
                wall[name].append(w)
                cpu[name].append(c)
    stats = {kind: summarize(times) for kind, times in (("cpu", cpu), ("wall", wall))}
    ratio = stats["cpu"]["paired_median"]
    result = {"model": "resnet50", "batch": args.batch, "input": [3, size, size], "reps": reps,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": platform.processor(),
              "seconds": {"cpu": cpu, "wall": wall}, "stats": stats, "ratio": ratio, "budget": BUDGET,
              "quick": args.quick, "masked_layers": len(sp.layers)}
    md = markdown(args, size, reps, len(sp.layers), cpu, wall, stats, ratio)
    suffix = "_quick" if args.quick else ""
    atomic_write_text(RESULTS / f"mask_overhead{suffix}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(RESULTS / f"mask_overhead{suffix}.md", md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
