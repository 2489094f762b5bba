"""Cold-compile CPU time of one network per array, optionally side by side with another source tree.

    python benchmarks/compile_time.py                          # resnet50, the arrays Table II misses most
    python benchmarks/compile_time.py --against OLD/src --rounds 3
    python benchmarks/compile_time.py --network vgg16 --arrays 4x4 --modes dense

Each (tree, mode) runs in its own process (graph built once, as Table II does), the trees
alternating round by round so that both see the same machine load; a cell's figure is the
fastest of its rounds (CPU seconds, ``time.process_time``, of ``compile_graph`` alone). With
``--against``, the other tree's ``src`` (e.g. ``git archive`` of an older commit) is timed the
same way and the ratio old / new printed. Nothing is written: the figures go to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ARRAYS = ["8x2", "4x8", "2x8", "6x6", "4x2"]

_CHILD = """
import json, sys, time
from tilesparse.build import build_graph_from
from tilesparse.compiler.pipeline import compile_graph
net, mode, arrays = sys.argv[1], sys.argv[2], sys.argv[3:]
g = build_graph_from(net, sparsity=0.5 if mode == "sparse" else 0.0, block=(8, 8), quantized=False, seed=0).graph
out = {}
for a in arrays:
    t = time.process_time()
    compile_graph(g, a)
    out[a] = time.process_time() - t
print(json.dumps(out))
"""


def _run(src: Path, network: str, mode: str, arrays: list[str]) -> dict[str, float]:
    """CPU seconds of one cold compile per array, in a fresh process importing ``src``."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", _CHILD, network, mode, *arrays], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--network", default="resnet50")
    ap.add_argument("--arrays", nargs="+", default=ARRAYS)
    ap.add_argument("--modes", nargs="+", default=["dense", "sparse"], choices=["dense", "sparse"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--against", type=Path, help="another tree's src directory, timed side by side")
    args = ap.parse_args()
    trees = {"this": SRC} | ({"against": args.against.resolve()} if args.against else {})
    best: dict[tuple[str, str, str], float] = {}
    for _ in range(args.rounds):
        for mode in args.modes:
            for name, src in trees.items():
                for a, s in _run(src, args.network, mode, args.arrays).items():
                    best[(name, mode, a)] = min(s, best.get((name, mode, a), s))
    print(f"{args.network}: CPU s of one cold compile, fastest of {args.rounds} (load {os.getloadavg()[0]:.1f})")
    for mode in args.modes:
        for a in args.arrays:
            new = best[("this", mode, a)]
            line = f"  {a:>5} {mode:6} {new:6.2f} s"
            if args.against:
                old = best[("against", mode, a)]
                line += f"   against {old:6.2f} s   {old / new:4.2f}x"
            print(line)


if __name__ == "__main__":
    main()
