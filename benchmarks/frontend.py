"""Front-end cost and fidelity: time of each front-end stage (capture, lower, masks, quantize) and
the integer reference's distance to the float model, for the paper's three networks.

    python benchmarks/frontend.py [--quick]

Writes benchmarks/results/frontend.md and frontend.json. Random weights (latency of the compiler
does not depend on values); the quantization error of random-weight networks is an upper bound
of what trained ones show (their activations are better conditioned).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tilesparse.frontend import default_input_shape, random_calibration
from tilesparse.ir.capture import capture
from tilesparse.models import get_model
from tilesparse.passes import attach_block_masks, lower
from tilesparse.quant import IntegerReference, quantize
from tilesparse.utils.atomic import atomic_write_text

RESULTS = Path(__file__).parent / "results"
FULL = [("resnet50", None), ("inception_v3", None), ("vgg16", None)]
QUICK = [("resnet18", (1, 3, 64, 64)), ("resnet50", (1, 3, 64, 64))]
N_CALIB = 2  # build_graph's default


def _timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def measure(name: str, shape: tuple[int, ...] | None) -> dict:
    shape = shape or default_input_shape(name)
    model = get_model(name)
    cpu0 = time.process_time()
    g, t_cap = _timed(capture, model, shape, name)
    low, t_low = _timed(lower, g)
    masked, t_mask = _timed(attach_block_masks, low)
    q, t_quant = _timed(quantize, masked, random_calibration(shape, N_CALIB, seed=0))
    cpu_build = time.process_time() - cpu0  # CPU time: robust to other jobs sharing the machine
    x = random_calibration(shape, 1, seed=99)[0]  # held out from calibration
    ref = IntegerReference(q)
    y, t_ref = _timed(ref.dequantized_output, x)
    with torch.no_grad():
        f = model(torch.from_numpy(x)).numpy().reshape(-1)
    y = y.reshape(-1)
    return {
        "network": name, "input": list(shape), "nodes_captured": len(g), "nodes_lowered": len(q),
        "capture_s": t_cap, "lower_s": t_low, "masks_s": t_mask, "quantize_s": t_quant,
        "build_total_s": t_cap + t_low + t_mask + t_quant, "build_cpu_s": cpu_build,
        "torch_threads": torch.get_num_threads(), "reference_s": t_ref,
        "rel_l2_error": float(np.linalg.norm(y - f) / np.linalg.norm(f)),
        "correlation": float(np.corrcoef(y, f)[0, 1]),
        "top1_agrees": bool(np.argmax(y) == np.argmax(f)),
    }


def to_markdown(rows: list[dict]) -> str:
    head = ("| network | input | nodes (captured → lowered) | capture s | lower s | masks s | "
            "quantize s | build total s | build CPU s | int reference s | rel. L2 error | corr. | "
            "top-1 agrees |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['network']} | {'×'.join(map(str, r['input'][1:]))} | {r['nodes_captured']} → "
        f"{r['nodes_lowered']} | {r['capture_s']:.2f} | {r['lower_s']:.2f} | {r['masks_s']:.2f} | "
        f"{r['quantize_s']:.2f} | {r['build_total_s']:.2f} | {r['build_cpu_s']:.2f} | "
        f"{r['reference_s']:.2f} | "
        f"{r['rel_l2_error']:.3f} | {r['correlation']:.4f} | {r['top1_agrees']} |\n" for r in rows)
    note = (f"\nQuantize includes calibration on {N_CALIB} random inputs; errors are the int8 "
            "reference's dequantized logits vs the float PyTorch model on a held-out random input. "
            "Model construction (random init) is not counted. Wall times are noisy on a shared machine; "
            f"CPU time is summed over torch's {torch.get_num_threads()} thread(s).\n")
    return "# Front end: time per stage and int8 fidelity\n\n" + head + body + note


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small inputs, two ResNets (~20 s)")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    rows = [measure(n, s) for n, s in (QUICK if args.quick else FULL)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    atomic_write_text(RESULTS / f"frontend{suffix}.md", to_markdown(rows))
    atomic_write_text(RESULTS / f"frontend{suffix}.json", json.dumps(rows, indent=2))
    print(to_markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
