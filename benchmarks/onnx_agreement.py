"""Per-layer agreement of the exported QDQ model (onnxruntime, CPU) with the integer reference.

    PYTHONPATH=src python benchmarks/onnx_agreement.py [--model resnet18] [--inputs 8]

Writes benchmarks/results/onnx_agreement.md: for each layer, the int8 codes that differ and by how
many LSB, with the half-up nudge and without it (plain QDQ, ties to even), locally (the reference
run on onnxruntime's own inputs of that layer) and end to end; the model output with all of
onnxruntime's graph optimizations (its fused QLinearConv kernels); and each conv's largest
Σ|x·w| + |b| (float32 adds integers exactly below 2**24, and the nudge needs 2**23).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tilesparse.build import build_graph_from
from tilesparse.frontend import random_calibration
from tilesparse.ir.graph import Graph, Op
from tilesparse.quant.onnx_check import onnx_agreement, output_agreement
from tilesparse.quant.reference import IntegerReference
from tilesparse.utils.atomic import atomic_write_text

OUT = Path(__file__).parent / "results" / "onnx_agreement.md"


def abs_sums(g: Graph, xs: list[np.ndarray]) -> dict[str, int]:
    """Largest Σ|x·w| + |b| of each conv over the inputs: a bound on every partial sum's magnitude."""
    ref, worst = IntegerReference(g), {}
    for x in xs:
        vals = ref.run(x)
        for n in g.of(Op.CONV2D):
            a = n.attrs
            xin = torch.from_numpy(np.abs(vals[n.inputs[0]].astype(np.float64)))
            w = torch.from_numpy(np.abs(g.param(n.name, "weight").astype(np.float64)))
            s = F.conv2d(xin, w, None, a["stride"], a["padding"], a["dilation"], a["groups"]).numpy()
            s = s + np.abs(g.param(n.name, "bias").astype(np.float64)).reshape(1, -1, 1, 1)
            worst[n.name] = max(worst.get(n.name, 0), int(s.max()))
    return worst


def _cell(pair: tuple[int, int], elements: int) -> str:
    return "0" if not pair[0] else f"{pair[0]} ({100 * pair[0] / elements:.1f} %), max {pair[1]}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--inputs", type=int, default=8)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    torch.set_num_threads(1)
    shape = (1, 3, 32, 32)
    g = build_graph_from(args.model, sparsity=0.5, block="8x8", input_shape=shape).graph
    xs = random_calibration(shape, args.inputs, seed=1)
    exact, plain = onnx_agreement(g, xs), onnx_agreement(g, xs, half_up=False)
    sums = abs_sums(g, xs)
    lines = [
        f"# ONNX export (QDQ) vs the integer reference: {args.model}, 50 % 8x8 blocks, 32x32, {args.inputs} inputs",
        "",
        f"`PYTHONPATH=src python benchmarks/onnx_agreement.py --model {args.model} --inputs {args.inputs}` "
        "(onnx " + __import__("onnx").__version__ + ", onnxruntime " + __import__("onnxruntime").__version__
        + ", CPU execution provider, seeded standard-normal inputs).",
        "",
        "Cells: int8 codes that differ from the reference (fraction), max difference in LSB. *local*: the",
        "reference run on onnxruntime's own int8 inputs of that layer (what the layer adds); *end to end*: from",
        "the model input. Graph optimizations off (every int8 code is an output, which also keeps onnxruntime",
        "from fusing). Σ|x·w|+|b|: the largest, over the inputs, of each conv's absolute sum (float32 is exact",
        "below 2^24 = 16777216).",
        "",
        "| layer | op | codes | half-up: end to end | plain QDQ: local | plain QDQ: end to end | Σ\\|x·w\\|+\\|b\\| |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for e, p in zip(exact, plain, strict=True):
        lines.append(f"| {e.node} | {e.op} | {e.elements} | {_cell(e.end_to_end, e.elements)} | "
                     f"{_cell(p.local, p.elements)} | {_cell(p.end_to_end, p.elements)} | {sums.get(e.node, '')} |")
    lines += ["", "Model output, the exported model as is (no intermediate outputs):", "",
              "| rounding | graph optimizations | outputs differing | max LSB |", "|---|---|---:|---:|"]
    for half_up in (True, False):
        for optimize in (False, True):
            total, differ, worst = output_agreement(g, xs, half_up=half_up, optimize=optimize)
            lines.append(f"| {'half-up nudge' if half_up else 'plain QDQ'} | {'all' if optimize else 'off'} | "
                         f"{differ} of {total} | {worst} |")
    atomic_write_text(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
