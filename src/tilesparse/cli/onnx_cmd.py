"""``tilesparse export-onnx``: the pruned int8 model as a QDQ ONNX file, checked in onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tilesparse.cli.common import (
    BLOCK_HELP,
    BLOCK_PATTERN_HELP,
    CALIB_HELP,
    CALIB_IMAGES_HELP,
    INPUT_SHAPE_HELP,
    JSON_HELP,
    SOURCE_HELP,
    SPARSITY_HELP,
    WEIGHTS_HELP,
    block_arg,
    block_pattern_args,
    check_outputs,
    console,
    sparsity_arg,
    write_json,
)

__all__ = ["register"]

HALF_UP_HELP = ("Round ties half up as the integer reference does (a half-step Add before each rounding "
                "QuantizeLinear: bit-exact in onnxruntime); --no-half-up writes the plain DQ → op → Q pattern that "
                "runtimes fuse into int8 kernels, whose ties round to even (docs/quantization.md, 'ONNX export').")
VERIFY_HELP = ("Run the file in onnxruntime on this many seeded random inputs and compare every layer with the "
               "integer reference (0: do not).")


def export_onnx_verb(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP, metavar="SOURCE")],
    out: Annotated[Path, typer.Option("--out", "-o", help="ONNX file to write.")] = Path("model.onnx"),
    sparsity: Annotated[float | None, typer.Option(help=SPARSITY_HELP)] = None,
    block: Annotated[str | None, typer.Option(help=BLOCK_HELP)] = None,
    pattern: Annotated[str | None, typer.Option(help=BLOCK_PATTERN_HELP)] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    calib: Annotated[Path | None, typer.Option(help=CALIB_HELP)] = None,
    calib_images: Annotated[int | None, typer.Option(help=CALIB_IMAGES_HELP + " Default 16.", min=1)] = None,
    half_up: Annotated[bool, typer.Option(help=HALF_UP_HELP)] = True,
    verify: Annotated[int, typer.Option(help=VERIFY_HELP, min=0)] = 2,
    json_out: Annotated[Path | None, typer.Option("--json", help=JSON_HELP)] = None,
) -> None:
    """Export the pruned, int8-quantized model (the graph `compile` lowers) as a QDQ ONNX file:
    power-of-two scales, int8 weights with their zero blocks, int32 biases; written atomically.

    Examples:

    * `tilesparse export-onnx resnet18 --input-shape 1,3,32,32 --pattern 8x8@0.5 -o r18.onnx`
    * `tilesparse export-onnx runs/d/sparse.pt -o d.onnx --verify 8` (a sparsify checkpoint: its trained masks)
    """
    from tilesparse.build import build_graph_from
    from tilesparse.cli.compile_cmd import calib_args
    from tilesparse.quant.onnx_export import export_onnx

    sparsity_arg(sparsity), block_arg(block)  # usage errors before any work
    block, sparsity = block_pattern_args(pattern, block, sparsity)
    check_outputs({"--out": out, "--json": json_out})
    built = build_graph_from(source, weights=weights, sparsity=sparsity, block=block, input_shape=input_shape,
                             **calib_args(calib, calib_images))
    export_onnx(built.graph, out, half_up=half_up)
    say = console(json_out)
    say.print(f"wrote {out}: {built.graph.name}, {len(built.graph)} nodes, QDQ int8 with power-of-two scales"
              f"{'' if half_up else ' (plain QDQ: ties round to even)'}")
    summary: dict = {"onnx": str(out), "graph": built.graph.name, "half_up": half_up, "verify_inputs": verify}
    if verify:
        summary["agreement"] = _verify(built.graph, built.input_shape, verify, half_up, say)
    write_json(json_out, summary)


def _verify(g, shape: tuple[int, ...], n: int, half_up: bool, say) -> dict:
    """Every layer's int8 codes (optimizations off: every op as written) and the output alone
    (optimizations on: onnxruntime's fused integer kernels) against the integer reference."""
    from tilesparse.frontend import random_calibration
    from tilesparse.quant.onnx_check import onnx_agreement, output_agreement

    xs = random_calibration(shape, n, seed=1)
    layers = onnx_agreement(g, xs, half_up=half_up)
    total, differ = sum(la.elements for la in layers), sum(la.end_to_end[0] for la in layers)
    worst, local = max(la.end_to_end[1] for la in layers), max(la.local[1] for la in layers)
    say.print(f"onnxruntime vs the integer reference on {n} random inputs, every layer (optimizations off): "
              + ("bit-exact" if not differ else f"{differ} of {total} int8 codes differ, by at most {worst} LSB "
                                                 f"(at most {local} LSB added by any one layer)"))
    out_total, out_differ, out_worst = output_agreement(g, xs, half_up=half_up, optimize=True)
    say.print("the output with all optimizations (fused kernels): "
              + ("bit-exact" if not out_differ else f"{out_differ} of {out_total} differ, by at most {out_worst} LSB"))
    return {"layers": {"elements": total, "differing": differ, "max_lsb": worst, "max_local_lsb": local},
            "output_optimized": {"elements": out_total, "differing": out_differ, "max_lsb": out_worst},
            "per_layer": [{"node": la.node, "op": la.op, "elements": la.elements, "local": list(la.local),
                           "end_to_end": list(la.end_to_end)} for la in layers]}


def register(app: typer.Typer) -> None:
    app.command("export-onnx")(export_onnx_verb)
