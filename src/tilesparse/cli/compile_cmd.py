"""``tilesparse compile``, ``tilesparse estimate`` and ``tilesparse explore``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]

MODEL_HELP = "Model: a torchvision / zoo name (resnet50, inception_v3, vgg16, ...)."
ARRAY_HELP = "Array: RxC (rows x columns, e.g. 4x4, 5x7, 8x2), base-RxC, phoenix, strix, or a YAML file."
SPARSITY_HELP = "Zero this fraction of lowest-L2 blocks in every conv/linear but the first (0 = dense)."


def model_graph(model: str, sparsity: float, block: str, input_shape: str | None,
                weights: Path | None = None, quantized: bool = True):
    """Zoo model -> (optionally) block-sparse -> front end graph."""
    from tilesparse.compiler.sparsity import apply_block_sparsity
    from tilesparse.errors import ConfigError
    from tilesparse.frontend import build_graph
    from tilesparse.models.zoo import get_model
    from tilesparse.patterns import parse_block_shape

    shape = None
    if input_shape:
        try:
            shape = tuple(int(x) for x in input_shape.replace("x", ",").split(","))
        except ValueError:
            raise ConfigError("--input-shape", [f"expected N,C,H,W such as 1,3,224,224, got {input_shape!r}"]) from None
    m = get_model(model, weights=weights)
    bs = parse_block_shape(block)
    if sparsity > 0:
        apply_block_sparsity(m, sparsity, (bs.out, bs.in_), name=model)
    from tilesparse.frontend import default_input_shape

    return build_graph(m, input_shape=shape or default_input_shape(model), block=(bs.out, bs.in_),
                       quantized=quantized)


def _compile(model, array, sparsity, block, input_shape, weights, quantized, balance=True):
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.hw import load_array

    hw = load_array(array)
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task(f"front end: {model}", total=2)
        g = model_graph(model, sparsity, block, input_shape, weights, quantized)
        bar.update(task, advance=1, description=f"compiling {model} for {hw.label}")
        prog = compile_graph(g, hw, balance=balance)
        bar.update(task, advance=1)
    return prog


def compile_verb(
    model: Annotated[str, typer.Argument(help=MODEL_HELP)],
    array: Annotated[str, typer.Option("--array", "-a", help=ARRAY_HELP)] = "4x4",
    sparsity: Annotated[float, typer.Option(help=SPARSITY_HELP)] = 0.0,
    block: Annotated[str, typer.Option(help="Block shape OUTxIN.")] = "8x8",
    out: Annotated[Path, typer.Option("--out", "-o", help="Program file to write.")] = Path("program.tsp"),
    listing: Annotated[Path | None, typer.Option(help="Also write a readable listing here ('-' = stdout).")] = None,
    input_shape: Annotated[str | None, typer.Option(help="N,C,H,W (default: the model's).")] = None,
    weights: Annotated[Path | None, typer.Option(help="Local state-dict file (else random weights).")] = None,
    quantized: Annotated[bool, typer.Option(help="Quantize (int8) in the front end; --no-quantized for a "
                                                 "timing-only program.")] = True,
    balance: Annotated[bool, typer.Option(help="Reorder the output channels of sparse convs read only by "
                                               "convs so that every core's channels keep equal blocks, "
                                               "and again for each layer's chosen weight chunks "
                                               "(same outputs; docs/compiler.md, 'Channel balancing'); "
                                               "--no-balance keeps the model's channel order.")] = True,
) -> None:
    """Compile a model to an AIE2 Program (instructions + packed weights), saved atomically."""
    from rich.console import Console

    from tilesparse.estimate.report import summarize

    prog = _compile(model, array, sparsity, block, input_shape, weights, quantized, balance)
    prog.save(out)
    s = summarize(prog)
    con = Console()
    con.print(f"wrote {out}: {len(prog.layers)} layers, {len(prog.instrs)} instructions, "
              f"weights {s.packed_weight_bytes / 1e6:.2f} MB packed of {s.dense_weight_bytes / 1e6:.2f} MB dense "
              f"({100 * s.weight_fraction:.1f} %), estimate {s.estimate_ms:.3f} ms (bound {s.bound_ms:.3f} ms)")
    if listing is not None:
        text = prog.listing()
        if str(listing) == "-":
            print(text)
        else:
            from tilesparse.utils.atomic import atomic_write_text

            atomic_write_text(listing, text)


def estimate_verb(
    target: Annotated[str, typer.Argument(help="A program file from `tilesparse compile`, or a model name.")],
    array: Annotated[str, typer.Option("--array", "-a", help=ARRAY_HELP + " (model targets only)")] = "4x4",
    sparsity: Annotated[float, typer.Option(help=SPARSITY_HELP + " (model targets only)")] = 0.0,
    block: Annotated[str, typer.Option(help="Block shape OUTxIN.")] = "8x8",
    input_shape: Annotated[str | None, typer.Option(help="N,C,H,W (default: the model's).")] = None,
    timeline: Annotated[Path | None, typer.Option(help="Write a timeline chart (.html or .png).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write per-layer numbers as JSON.")] = None,
    top: Annotated[int, typer.Option(help="Rows of the per-layer table (slowest first; 0 = all).")] = 25,
) -> None:
    """Per-layer and total latency of a program (or a model compiled on the fly), with the lower
    bound and roofline beside every layer."""
    from rich.console import Console
    from rich.table import Table

    from tilesparse.program import Program
    from tilesparse.estimate.report import layer_rows, summarize
    from tilesparse.estimate.timemodel import estimate_program

    path = Path(target)
    prog = Program.load(path) if path.is_file() else _compile(target, array, sparsity, block, input_shape,
                                                              None, False)
    pt = estimate_program(prog)
    rows = layer_rows(prog, pt)
    s = summarize(prog, pt)
    shown = sorted(rows, key=lambda r: -r["time_us"])[: top or None]
    t = Table(title=f"{prog.graph} on {prog.hw.label}")
    for col in ("layer", "kind", "time us", "bound us", "limit", "roofline us", "x bound", "grid", "sub", "loops"):
        t.add_column(col, justify="right" if "us" in col or col == "x bound" else "left")
    for r in shown:
        t.add_row(r["layer"], r["kind"], f"{r['time_us']:.1f}", f"{r['bound_us']:.1f}", r["limiter"],
                  f"{r['roofline_us']:.1f}", f"{r['ratio']:.2f}", r["grid"], r["sub"], r["loops"])
    con = Console()
    con.print(t)
    con.print(f"total {s.estimate_ms:.3f} ms, lower bound {s.bound_ms:.3f} ms ({s.ratio:.2f}x), compute at "
              f"peak {s.compute_ms:.3f} ms; weights {100 * s.weight_fraction:.1f} % of dense")
    if timeline is not None:
        from tilesparse.estimate.timeline import write_timeline

        write_timeline(prog, pt, timeline)
        con.print(f"timeline: {timeline}")
    if json_out is not None:
        from tilesparse.utils.atomic import atomic_write_text

        atomic_write_text(json_out, json.dumps({"graph": prog.graph, "array": prog.hw.label,
                                                "estimate_ms": s.estimate_ms, "bound_ms": s.bound_ms,
                                                "layers": rows}, indent=1))


def explore_verb(
    networks: Annotated[str, typer.Option(help="Comma-separated model names.")] = "resnet50,inception_v3,vgg16",
    arrays: Annotated[str, typer.Option(help="Comma-separated arrays (RxC).")] = "2x2,3x3,4x4,5x5,6x6,7x7,8x8",
    rect: Annotated[str, typer.Option(help="Extra rectangular arrays, resnet50 only ('' for none).")] = "4x2,8x2,4x8,2x8",
    sparsity: Annotated[float, typer.Option(help=SPARSITY_HELP)] = 0.5,
    out_dir: Annotated[Path, typer.Option(help="Folder for table2.md / .csv / .png.")] = Path("explore"),
    jobs: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Networks x arrays x dense/sparse: the Table II analog (CSV + Markdown + plot) with the
    paper's numbers side by side."""
    from tilesparse.estimate.explore import run_table, write_table

    rows = run_table([n for n in networks.split(",") if n], [a for a in arrays.split(",") if a],
                     [a for a in rect.split(",") if a], sparsity, jobs=jobs, progress=True)
    paths = write_table(rows, out_dir)
    typer.echo("wrote " + ", ".join(str(p) for p in paths))


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_verb)
    app.command("estimate")(estimate_verb)
    app.command("explore")(explore_verb)
