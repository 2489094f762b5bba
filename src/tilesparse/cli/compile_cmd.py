"""``tilesparse compile``, ``tilesparse estimate`` and ``tilesparse explore``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tilesparse.cli.common import (
    ARRAY_HELP,
    BLOCK_HELP,
    CALIB_HELP,
    CALIB_IMAGES_HELP,
    COMPILE_PATTERN_HELP,
    INPUT_SHAPE_HELP,
    JSON_HELP,
    RULES_HELP,
    SOURCE_HELP,
    SPARSITY_HELP,
    WEIGHTS_HELP,
    array_arg,
    block_arg,
    check_outputs,
    compile_pattern_args,
    console,
    is_program_file,
    read_program,
    rules_arg,
    sparsity_arg,
    write_json,
)
from tilesparse.errors import ConfigError

__all__ = ["act_compression_arg", "calib_args", "compile_source_with_progress", "load_or_compile", "register"]

_MODEL_FLAGS = {"weights": "--weights", "sparsity": "--sparsity", "block": "--block", "input_shape": "--input-shape",
                "pattern": "--pattern"}

BALANCE_HELP = ("Reorder the output channels of sparse convs read only by convs so that every core's channels "
                "keep equal blocks, and again for each layer's chosen weight chunks (same outputs; "
                "docs/compiler.md, 'Channel balancing'); --no-balance keeps the model's channel order.")


def with_rules(hw, rules: str | None):
    """``hw`` with its ``rules`` set to the profile named by --rules (unchanged without one)."""
    return hw if rules is None else hw.model_copy(update={"rules": rules_arg(rules).name})


ACT_COMPRESSION_HELP = ("DMA activation zero compression: 'auto' compresses each layer's LOADFM / WRITEFM where "
                        "the array's dma_compression is enabled and the layer's calibrated zero fraction saves "
                        "bytes; 'off' never (docs/time-model.md, 'Activation compression').")


def act_compression_arg(mode: str) -> str:
    """--act-compression checked: auto or off."""
    from tilesparse.program.zero_compress import MODES

    if mode not in MODES:
        raise ConfigError(f"--act-compression {mode}", [f"expected one of {', '.join(MODES)}"])
    return mode


def compile_source_with_progress(source: str, array, *, balance: bool = True, **build_kwargs):
    """The front door (``tilesparse.build.compile_source``) behind a spinner; its notices (a
    checkpoint's model file found next to it) on stderr."""
    from rich.markup import escape
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from tilesparse.build import compile_source

    notices: list[str] = []
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as bar:
        label = array if isinstance(array, str) else array.label
        bar.add_task(f"front end + compile: {source} for {label}", total=1)
        prog = compile_source(source, array, balance=balance, notices=notices, **build_kwargs)
    for note in notices:
        console("-").print(escape(note), soft_wrap=True)
    return prog


def calib_args(calib: Path | None, calib_images: int | None, quantized: bool = True) -> dict:
    """``build_graph_from``'s calibration arguments for --calib / --calib-images, checked before any work."""
    if calib is None:
        if calib_images is not None:
            raise ConfigError("--calib-images", ["takes its images from --calib DIR; give the folder too"])
        return {}
    if not quantized:
        raise ConfigError("--calib", ["calibrates the int8 quantization; a --no-quantized program has none"])
    from tilesparse.build import N_CALIB_IMAGES
    from tilesparse.data.folder import calibration_root

    calibration_root(calib)
    return {"calib": calib, "calib_images": calib_images or N_CALIB_IMAGES}


def _summary_json(prog, s, out: Path | None) -> dict:
    from tilesparse.program.provenance import provenance_of

    prov = provenance_of(prog)
    return {"program": None if out is None else str(out), "graph": prog.graph, "array": prog.hw.label,
            "layers": len(prog.layers), "instructions": len(prog.instrs), "estimate_ms": s.estimate_ms,
            "bound_ms": s.bound_ms, "packed_weight_bytes": s.packed_weight_bytes,
            "dense_weight_bytes": s.dense_weight_bytes, "provenance": prov.to_dict() if prov else None}


def _formats_note(prog) -> str:
    """", 52 of 53 convs on the sparse multiply (masked weights)" when some conv is masked."""
    counts = (prog.meta.get("weight_formats") or {}).get("counts") or {}
    masked = counts.get("masked", 0)
    return f"; {masked} of {masked + counts.get('block', 0)} convs on the sparse multiply (masked weights)" \
        if masked else ""


def compile_verb(
    source: Annotated[str, typer.Argument(help=SOURCE_HELP, metavar="SOURCE")],
    array: Annotated[str, typer.Option("--array", "-a", help=ARRAY_HELP)] = "4x4",
    sparsity: Annotated[float | None, typer.Option(help=SPARSITY_HELP)] = None,
    block: Annotated[str | None, typer.Option(help=BLOCK_HELP)] = None,
    pattern: Annotated[str | None, typer.Option(help=COMPILE_PATTERN_HELP)] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Program file to write.")] = Path("program.tsp"),
    json_out: Annotated[Path | None, typer.Option("--json", help=JSON_HELP)] = None,
    listing: Annotated[Path | None, typer.Option(help="Also write a readable listing here ('-' = stdout).")] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    quantized: Annotated[bool, typer.Option(help="Quantize (int8) in the front end; --no-quantized for a "
                                                 "timing-only program.")] = True,
    balance: Annotated[bool, typer.Option(help=BALANCE_HELP)] = True,
    calib: Annotated[Path | None, typer.Option(help=CALIB_HELP)] = None,
    calib_images: Annotated[int | None, typer.Option(help=CALIB_IMAGES_HELP + " Default 16.", min=1)] = None,
    rules: Annotated[str | None, typer.Option("--rules", help=RULES_HELP + " The compiler searches its schedules "
                                              "under these rules; the program's array records them.")] = None,
    act_compression: Annotated[str, typer.Option(help=ACT_COMPRESSION_HELP)] = "auto",
) -> None:
    """Compile a model to an AIE2 Program (instructions + packed weights + provenance), saved atomically.
    `tilesparse simulate PROGRAM` then verifies it with no other argument.

    Examples:

    * `tilesparse compile resnet50 -a 7x7 --sparsity 0.5 -o r50.tsp --listing r50.txt`
    * `tilesparse compile resnet50 -a 4x4 --pattern 2:4 -o r50-24.tsp` (2 of every 4 input channels kept:
      the sparse multiply's masked format)
    * `tilesparse compile runs/d/sparse.pt -a 4x4 -o d.tsp` (a sparsify checkpoint: its trained masks)
    * `tilesparse compile my_net.py:make_model --input-shape 1,3,64,64 --sparsity 0.5 -o mine.tsp`
    * `tilesparse compile runs/r50/sparse.pt -a 7x7 --calib ~/imagenet --calib-images 64 -o r50.tsp`
      (calibrated on 64 validation images)
    * `tilesparse compile resnet50 -a 4x4 --rules paper -o r50-paper.tsp` (schedules searched under the
      paper's timing rules)
    """
    from tilesparse.estimate.report import summarize
    from tilesparse.program.zero_compress import decide as decide_compression

    sparsity_arg(sparsity), block_arg(block), act_compression_arg(act_compression)  # usage errors first
    hw = with_rules(array_arg(array), rules)
    block, sparsity, nm_pattern = compile_pattern_args(pattern, block, sparsity)
    if str(listing) == "-" and str(json_out) == "-":
        raise ConfigError("--listing -", ["--json - writes to stdout already; give the listing a file name"])
    check_outputs({"--out": out, "--listing": listing, "--json": json_out})
    calib_kwargs = calib_args(calib, calib_images, quantized)
    prog = compile_source_with_progress(source, hw, balance=balance, weights=weights, sparsity=sparsity,
                                        block=block, input_shape=input_shape, quantized=quantized, pattern=nm_pattern,
                                        **calib_kwargs)
    prog = decide_compression(prog, act_compression)
    prog.save(out)
    s = summarize(prog)
    console(json_out).print(f"wrote {out}: {len(prog.layers)} layers, {len(prog.instrs)} instructions, weights "
                    f"{s.packed_weight_bytes / 1e6:.2f} MB packed of {s.dense_weight_bytes / 1e6:.2f} MB dense "
                    f"({100 * s.weight_fraction:.1f} %), estimate {s.estimate_ms:.3f} ms (bound {s.bound_ms:.3f} ms)"
                    + _formats_note(prog))
    if listing is not None:
        text = prog.listing()
        if str(listing) == "-":
            print(text)
        else:
            from tilesparse.utils.atomic import atomic_write_text

            atomic_write_text(listing, text)
    write_json(json_out, _summary_json(prog, s, out))


def load_or_compile(target: str, array: str | None, out: Path | None = None, rules: str | None = None,
                    **build_kwargs):
    """A program file as is (refusing one compiled for another ``array`` and flags that contradict
    its provenance), or a model source compiled on the fly under the ``rules`` profile (saved to
    ``out`` if given)."""
    from tilesparse.build import check_request
    from tilesparse.program.provenance import provenance_of

    hw = array_arg(array)
    if is_program_file(target):
        if out is not None:
            raise ConfigError("--out", [f"saves a program compiled from a model source; {target} is one already"])
        prog = read_program(target)
        req = {k: v for k, v in build_kwargs.items() if k in _MODEL_FLAGS and v is not None}
        prov = provenance_of(prog, target)
        if prov is not None:
            check_request(prov, target, array=array, **req)
        elif req:
            raise ConfigError(_MODEL_FLAGS[next(iter(req))], [f"applies to a model source; {target} is a program "
                                                               "without provenance to check it against"])
        elif array:
            prog = read_program(target, hw=hw)
        return prog
    prog = compile_source_with_progress(target, with_rules(array_arg(array or "4x4"), rules), **build_kwargs)
    if out is not None:
        prog.save(out)
    return prog


def estimate_verb(
    target: Annotated[str, typer.Argument(help="A program file from `tilesparse compile`, or a model source. "
                                               + SOURCE_HELP, metavar="PROGRAM|SOURCE")],
    array: Annotated[str | None, typer.Option("--array", "-a", help=ARRAY_HELP + " Default 4x4; for a program "
                                              "file: refuse one compiled for another array.")] = None,
    sparsity: Annotated[float | None, typer.Option(help=SPARSITY_HELP + " (model sources)")] = None,
    block: Annotated[str | None, typer.Option(help=BLOCK_HELP)] = None,
    pattern: Annotated[str | None, typer.Option(help=COMPILE_PATTERN_HELP)] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Save the program compiled from a model "
                                             "source here.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help=JSON_HELP + " Per-layer numbers.")] = None,
    timeline: Annotated[Path | None, typer.Option(help="Write a timeline chart (.html or .png).")] = None,
    top: Annotated[int, typer.Option(help="Rows of the per-layer table (slowest first; 0 = all).", min=0)] = 25,
    rules: Annotated[str | None, typer.Option("--rules", help=RULES_HELP)] = None,
    act_compression: Annotated[str, typer.Option(help=ACT_COMPRESSION_HELP + " Re-decided on a program file "
                                                 "from its recorded zero fractions.")] = "auto",
) -> None:
    """Per-layer and total latency of a program (or a model compiled on the fly, timing only), with
    the lower bound and roofline beside every layer, and the network bound (each resource's work
    summed over the network).

    Examples:

    * `tilesparse estimate d.tsp --top 0` (every layer; flags must agree with the program's provenance)
    * `tilesparse estimate r50.tsp --timeline r50.html --json -`
    * `tilesparse estimate resnet50 -a 8x8 --sparsity 0.5`
    * `tilesparse estimate resnet50 -a 4x4 --pattern 1:4`
    * `tilesparse estimate resnet50 -a 4x4 --rules paper` (the paper's timing rules, same schedule)
    """
    from rich.table import Table

    from tilesparse.estimate.report import layer_rows, summarize
    from tilesparse.estimate.timemodel import estimate_program
    from tilesparse.program.zero_compress import decide as decide_compression

    sparsity_arg(sparsity), block_arg(block), act_compression_arg(act_compression)  # usage errors first
    profile = rules_arg(rules) if rules is not None else None
    block, sparsity, nm_pattern = compile_pattern_args(pattern, block, sparsity)
    if timeline is not None and timeline.suffix not in (".html", ".png"):  # before the work, not after
        raise ConfigError(f"--timeline {timeline}", ["expected a .html or .png file name"])
    check_outputs({"--out": out, "--json": json_out, "--timeline": timeline})
    prog = load_or_compile(target, array, out, weights=weights, sparsity=sparsity, block=block,
                           input_shape=input_shape, quantized=False, pattern=nm_pattern, rules=rules)
    prog = decide_compression(prog, act_compression)
    profile = profile or rules_arg(prog.hw.rules, "hw rules")
    pt = estimate_program(prog, profile)
    rows = layer_rows(prog, pt)
    s = summarize(prog, pt)
    shown = sorted(rows, key=lambda r: -r["time_us"])[: top or None]
    t = Table(title=f"{prog.graph} on {prog.hw.label}, {profile.name} rules")
    for col in ("layer", "kind", "weights", "time us", "bound us", "limit", "roofline us", "x bound", "grid", "sub",
                "loops", "zeros in/out"):
        t.add_column(col, justify="right" if "us" in col or col == "x bound" else "left")
    for r in shown:
        t.add_row(r["layer"], r["kind"], r["weights"], f"{r['time_us']:.1f}", f"{r['bound_us']:.1f}", r["limiter"],
                  f"{r['roofline_us']:.1f}", f"{r['ratio']:.2f}", r["grid"], r["sub"], r["loops"], _zeros_cell(r))
    con = console(json_out)
    con.print(t)
    con.print(f"total {s.estimate_ms:.3f} ms, lower bound {s.bound_ms:.3f} ms ({s.ratio:.2f}x), compute at "
              f"peak {s.compute_ms:.3f} ms; weights {100 * s.weight_fraction:.1f} % of dense")
    con.print(f"network bound {s.net_bound_ms:.3f} ms ({s.net_ratio:.2f}x; limited by {s.net_limiter}): "
              f"each resource's work summed over the network")
    if timeline is not None:
        from tilesparse.estimate.timeline import write_timeline

        write_timeline(prog, pt, timeline)
        con.print(f"timeline: {timeline}")
    write_json(json_out, {"graph": prog.graph, "array": prog.hw.label, "rules": profile.name,
                          "estimate_ms": s.estimate_ms, "bound_ms": s.bound_ms, "network_bound_ms": s.net_bound_ms,
                          "network_limiter": s.net_limiter, "layers": rows})


def _zeros_cell(r: dict) -> str:
    """"52%/48% F W": the calibrated zero fractions of a layer's input and output, then the
    transfers that travel zero-compressed (F = LOADFM, W = WRITEFM); "-" when none were measured."""
    if not (r["in_zero_frac"] or r["out_zero_frac"]):
        return "-"
    tags = " ".join({"LOADFM": "F", "WRITEFM": "W"}[op] for op in r["compressed"])
    return f"{r['in_zero_frac']:.0%}/{r['out_zero_frac']:.0%}" + (f" {tags}" if tags else "")


def explore_verb(
    networks: Annotated[str, typer.Option(help="Comma-separated zoo names.")] = "resnet50,inception_v3,vgg16",
    arrays: Annotated[str, typer.Option(help="Comma-separated arrays (RxC).")] = "2x2,3x3,4x4,5x5,6x6,7x7,8x8",
    rect: Annotated[str, typer.Option(help="Extra rectangular arrays, first network only ('' for none).")
                    ] = "4x2,8x2,4x8,2x8",
    sparsity: Annotated[float, typer.Option(help=SPARSITY_HELP)] = 0.5,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for table2.md / .csv / .png.")] = Path("explore"),
    out_dir: Annotated[Path | None, typer.Option("--out-dir", hidden=True, help="Old name of --out.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help=JSON_HELP + " One record per cell.")] = None,
    jobs: Annotated[int, typer.Option(help="Worker processes.", min=1)] = 2,
    paper_compile: Annotated[bool, typer.Option(
        "--paper-compile/--no-paper-compile",
        help="Also compile every cell under the paper's rules (the 'paper rules' columns; about doubles "
             "the run). Without it those columns are empty; the tilesparse programs re-timed under the "
             "paper's rules are shown either way.")] = True,
) -> None:
    """Networks x arrays x dense/sparse: the Table II analog (CSV + Markdown + plot) with the
    paper's numbers side by side, ours under the paper's rules (compiled under them, and the same
    program re-timed under them) and under tilesparse's (docs/time-model.md, "Profiles").

    Example: `tilesparse explore --networks resnet50,vgg16 --arrays 2x2,4x4,8x8 --rect 4x2 -o table2/`
    """
    from dataclasses import asdict

    from tilesparse.reports.table2 import run_table, write_table

    sparsity_arg(sparsity)  # usage errors before any worker starts
    check_outputs({"--json": json_out}, ("--out", out_dir or out, [f"table2.{ext}" for ext in ("csv", "md", "png")]))
    for a in [a for a in arrays.split(",") if a]:
        array_arg(a, "--arrays")
    for a in [a for a in rect.split(",") if a]:
        array_arg(a, "--rect")
    rows = run_table([n for n in networks.split(",") if n], [a for a in arrays.split(",") if a],
                     [a for a in rect.split(",") if a], sparsity, jobs=jobs, progress=True, paper_opt=paper_compile)
    paths = write_table(rows, out_dir or out)
    typer.echo("wrote " + ", ".join(str(p) for p in paths), err=str(json_out) == "-")
    write_json(json_out, [asdict(c) for c in rows])


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_verb)
    app.command("estimate")(estimate_verb)
    app.command("explore")(explore_verb)
