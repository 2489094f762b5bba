"""Training throughput with 1 and 2 processes on CPU: images/s of a masked training step.

    python benchmarks/ddp_throughput.py [--steps 20] [--rounds 3] [--resnet-batch 32] [--digits-batch 256]

Two models, 50 % 8x8 block masks attached (as `tilesparse sparsify` trains them): the digits CNN on
8x8 images and torchvision's ResNet18 (random weights) on 64x64 images. Each is timed as 1 process
with 1 thread, 1 process with 2 threads, and 2 processes with 1 thread each (DistributedDataParallel,
gloo, the global batch split between them), all with the same global batch. A step is forward,
backward (gradients all-reduced across the processes) and an SGD step. After a warm-up the processes
meet at a barrier and rank 0 times ``--steps`` steps; images/s = global batch * steps / seconds. The
three setups are measured in turn, ``--rounds`` times over (so that load from other jobs on the
machine spreads over all of them); the table gives each setup's best round (the least disturbed) and
the median.
Writes benchmarks/results/ddp_throughput.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.multiprocessing as mp
from torch import nn

from tilesparse.sparsify import Recipe, Sparsifier
from tilesparse.utils.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"
WARMUP = 3
SETUPS = (("1 process, 1 thread", 1, 1), ("1 process, 2 threads", 1, 2), ("2 processes, 1 thread each", 2, 1))


def build(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    """The model with 50 % 8x8 masks, and the shape of one input image."""
    torch.manual_seed(0)
    if name == "digits_cnn":
        from tilesparse.models.digits import digits_cnn

        model, shape = digits_cnn(), (1, 8, 8)
    else:
        from torchvision.models import resnet18

        model, shape = resnet18(num_classes=10), (3, 64, 64)
    Sparsifier(Recipe(pattern="8x8", sparsity=0.5)).prepare(model).step()
    return model, shape


def _time(rank: int, world: int, threads: int, name: str, batch: int, steps: int, port: int, out: str) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        tdist.init_process_group("gloo", rank=rank, world_size=world)
    model, shape = build(name)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(batch // world, *shape, generator=gen)
    y = torch.randint(0, 10, (batch // world,), generator=gen)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(WARMUP):
        step()
    if world > 1:
        tdist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if world > 1:
        tdist.barrier()
    seconds = time.perf_counter() - t0
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": seconds, "images_per_s": batch * steps / seconds}))
    if world > 1:
        tdist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def measure(name: str, batch: int, steps: int, world: int, threads: int, tmp: Path) -> dict:
    out = tmp / f"{name}-{world}-{threads}.json"
    mp.spawn(_time, args=(world, threads, name, batch, steps, _free_port(), str(out)), nprocs=world)
    return json.loads(out.read_text())


def _table(rows: list[dict]) -> str:
    lines = ["| model | input | global batch | setup | images/s (best) | images/s (median) | best vs 1 process, "
             "1 thread |", "|---|---|---|---|---|---|---|"]
    base: dict[str, float] = {}
    for r in rows:
        base.setdefault(r["model"], r["best"])
        lines.append(f"| {r['model']} | {r['input']} | {r['batch']} | {r['setup']} | {r['best']:.0f} | "
                     f"{r['median']:.0f} | {r['best'] / base[r['model']]:.2f}x |")
    return "\n".join(lines)


def _setups(name: str, shape: str, batch: int, steps: int, rounds: int, tmp: Path) -> list[dict]:
    runs: dict[str, list[float]] = {setup: [] for setup, _, _ in SETUPS}
    for _ in range(rounds):
        for setup, world, threads in SETUPS:
            runs[setup].append(measure(name, batch, steps, world, threads, tmp)["images_per_s"])
            print(name, setup, f"{runs[setup][-1]:.0f} images/s", flush=True)
    return [{"model": name, "input": shape, "batch": batch, "setup": setup, "processes": world, "threads": threads,
             "images_per_s": runs[setup], "best": max(runs[setup]), "median": statistics.median(runs[setup])}
            for setup, world, threads in SETUPS]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--digits-batch", type=int, default=256)
    ap.add_argument("--resnet-batch", type=int, default=32)
    args = ap.parse_args(argv)
    tmp = RESULTS / ".ddp_tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()[0]
    rows = []
    for name, shape, batch in (("digits_cnn", "1x8x8", args.digits_batch), ("resnet18", "3x64x64", args.resnet_batch)):
        rows += _setups(name, shape, batch, args.steps, args.rounds, tmp)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    meta = {"command": "python benchmarks/ddp_throughput.py " + " ".join(argv or sys.argv[1:]),
            "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(), "steps": args.steps,
            "rounds": args.rounds, "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    atomic_write_text(RESULTS / "ddp_throughput.json", json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    md = (f"# Training throughput with 1 and 2 processes (CPU)\n\n`{meta['command'].strip()}`\n\n"
          f"torch {meta['torch']}, {meta['machine']}, {meta['cpus']} CPU cores shared with other jobs while it ran "
          f"(1-minute load average {meta['load_average'][0]:g} at the start, {meta['load_average'][1]:g} at the end: "
          "the figures are noisy, and with the cores busy, a second thread or process has no free core to run on; "
          f"read the ratios, not the third digit). {args.steps} timed steps after "
          f"{WARMUP} warm-up steps, {args.rounds} rounds; 50 % 8x8 block masks attached; 2 processes = "
          "DistributedDataParallel over gloo, each with half the global batch.\n\n" + _table(rows) + "\n")
    atomic_write_text(RESULTS / "ddp_throughput.md", md)
    print(md)


if __name__ == "__main__":
    main()
