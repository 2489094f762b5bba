"""``tilesparse simulate``: run a program on the functional simulator, verify it against the
integer reference, and check that the time model charged what the program moved."""

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
    SEED_MAX,
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
from tilesparse.cli.compile_cmd import ACT_COMPRESSION_HELP, act_compression_arg

__all__ = ["register"]

TARGET_HELP = ("A program file from `tilesparse compile` (verified against the model its provenance names), "
               "or a model source to build, compile and simulate on the fly. " + SOURCE_HELP)
ARRAY_HELP_SIM = ARRAY_HELP + " Default 4x4; for a program file: refuse one compiled for another array."
MODEL_HELP = ("For a program file without provenance: rebuild this model source's graph (with --weights, "
              "--sparsity, --block, --input-shape) to verify against. With provenance: must agree with it.")
INPUT_HELP = ("Input .npy (float: quantized with the program's input scale exponent; int8: used as is), or an "
              "image file (.png, .jpg ...: resized and center-cropped to the program's input, ImageNet "
              "normalisation). Default: seeded random.")
TIMING_HELP = ("Also time the program twice, with the time model and with the clocked replay (a discrete-event "
               "run of its engines and locks, docs/replay.md): per layer and in total, side by side, with the "
               "difference.")
SIM_CALIB_HELP = (CALIB_HELP + " For a program file: where its calibration images are now (if moved); they must "
                  "be unchanged.")


def _input(path: Path | None, shape, seed: int, graph, prog_exp: int | None = None):
    import numpy as np

    from tilesparse.errors import ConfigError

    if path is None:
        rng = np.random.default_rng(seed)
        if graph is None:
            return rng.integers(-128, 128, size=shape, dtype=np.int64).astype(np.int8), True
        return rng.standard_normal(shape).astype(np.float32), False
    from tilesparse.data.folder import is_image_file

    x = _read_image(path, shape) if is_image_file(path) else _read_npy(path)
    if int(np.prod(x.shape)) != int(np.prod(shape)):
        raise ConfigError(path, [f"input has shape {x.shape}, the program reads {tuple(shape)}"])
    if x.dtype == np.int8:
        return x, True
    if x.dtype.kind not in "fiu":
        raise ConfigError(path, [f"input dtype {x.dtype}: expected int8 or real values"])
    if x.dtype.kind == "f" and not np.isfinite(x).all():  # NaN would quantize to an arbitrary int8
        raise ConfigError(path, [f"input holds {int((~np.isfinite(x)).sum())} NaN or infinite value(s)"])
    if graph is None and prog_exp is None:
        why = ("a float input needs the input scale: this program has none (meta['input_scale_exp']); "
               "give --model, or an int8 array")
        raise ConfigError(path, [why])
    return x.astype(np.float32), False


def _read_image(path: Path, shape):
    """An image file through the eval transform at the program's input (N, C, H, W)."""
    from tilesparse.data.folder import eval_transform, load_image, read_errors
    from tilesparse.errors import ConfigError

    if len(shape) != 4 or shape[1] not in (1, 3):
        raise ConfigError(path, [f"an image gives 1 or 3 channels; the program reads {tuple(shape)}"])
    try:
        img = load_image(path, shape[1])
    except read_errors() as e:
        raise ConfigError(path, [f"not a readable image ({type(e).__name__}: {str(e)[:200]})"]) from None
    return eval_transform((shape[2], shape[3]), shape[1])(img).unsqueeze(0).numpy()


def _read_npy(path: Path):
    """The array of an ``--input`` file: a real .npy within ``MAX_INPUT_NPY_BYTES`` (checked before
    reading), not an .npz archive or a pickle."""
    import numpy as np

    from tilesparse.errors import ConfigError
    from tilesparse.utils.limits import MAX_INPUT_NPY_BYTES, above

    try:
        size = path.stat().st_size
    except OSError as e:
        raise ConfigError(path, [f"not a readable .npy array ({e.strerror})"]) from None
    if size > MAX_INPUT_NPY_BYTES:
        raise ConfigError(path, [above("file size", f"{size:,}", f"{MAX_INPUT_NPY_BYTES:,}", " B")])
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(path, [f"not a readable .npy array ({str(e)[:200]})"]) from None
    if not isinstance(x, np.ndarray):  # an .npz archive
        x.close()
        raise ConfigError(path, ["an .npz archive: expected one array saved with numpy.save (.npy)"])
    return x


def simulate_verb(
    target: Annotated[str, typer.Argument(help=TARGET_HELP, metavar="PROGRAM|SOURCE")],
    array: Annotated[str | None, typer.Option("--array", "-a", help=ARRAY_HELP_SIM)] = None,
    model: Annotated[str | None, typer.Option(help=MODEL_HELP)] = None,
    weights: Annotated[Path | None, typer.Option(help=WEIGHTS_HELP)] = None,
    sparsity: Annotated[float | None, typer.Option(help=SPARSITY_HELP)] = None,
    block: Annotated[str | None, typer.Option(help=BLOCK_HELP)] = None,
    pattern: Annotated[str | None, typer.Option(help=COMPILE_PATTERN_HELP)] = None,
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    input_npy: Annotated[Path | None, typer.Option("--input", help=INPUT_HELP)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random input.", min=0, max=SEED_MAX)] = 0,
    check: Annotated[bool, typer.Option(help="Run the ordering (hazard) check first.")] = True,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Save the program compiled from a model "
                                             "source here.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help=JSON_HELP + " Per-layer results.")] = None,
    calib: Annotated[Path | None, typer.Option(help=SIM_CALIB_HELP)] = None,
    calib_images: Annotated[int | None, typer.Option(help=CALIB_IMAGES_HELP + " Default 16; for a program file: "
                                                     "must agree with it.", min=1)] = None,
    timing: Annotated[bool, typer.Option("--timing", help=TIMING_HELP)] = False,
    rules: Annotated[str | None, typer.Option("--rules", help=RULES_HELP + " With --timing.")] = None,
    act_compression: Annotated[str, typer.Option(help=ACT_COMPRESSION_HELP + " Re-decided on a program file "
                                                 "from its recorded zero fractions.")] = "auto",
) -> None:
    """Execute a program instruction by instruction over DDR, MemTiles and core memories; compare
    every layer with the PyTorch integer reference bit for bit, the output and layers with the model
    itself run in float (within a tolerance derived from the quantization steps), and the bytes /
    MACs with the time model. A program file is verified against the model its provenance names,
    rebuilt; flags that contradict the provenance are refused. Exit code 1 on any mismatch.

    Examples:

    * `tilesparse simulate d.tsp` (rebuild the model from d.tsp's provenance, verify bit for bit)
    * `tilesparse simulate d.tsp --input x.npy --json -`
    * `tilesparse simulate r50.tsp --input ~/imagenet/val/n01440764/img1.JPEG` (verify on a real image)
    * `tilesparse simulate digits_cnn -a 2x2 --sparsity 0.5` (compile on the fly, then verify)
    * `tilesparse simulate old.tsp --model resnet50 --sparsity 0.5` (a program without provenance)
    * `tilesparse simulate resnet18 --input-shape 1,3,64,64 --timing` (also: time model vs clocked replay)
    """
    from rich.markup import escape

    from tilesparse.program.zero_compress import decide as decide_compression
    from tilesparse.sim import simulate, verify

    sparsity_arg(sparsity), block_arg(block), act_compression_arg(act_compression)  # usage errors first
    profile = rules_arg(rules) if rules is not None else None
    block, sparsity, nm_pattern = compile_pattern_args(pattern, block, sparsity)
    check_outputs({"--out": out, "--json": json_out})
    con = console(json_out)
    req = {"source": model, "weights": weights, "sparsity": sparsity, "block": block, "input_shape": input_shape,
           "calib": calib, "calib_images": calib_images, "pattern": nm_pattern}
    prog, graph, module, note = _program_and_graph(target, array, out, req)
    prog = decide_compression(prog, act_compression)
    if note:
        con.print(escape(note))
    shape = tuple(prog.buffers[_input_buffer(prog)]["shape"])
    x, is_int8 = _input(input_npy, (1, *shape), seed, graph, prog.meta.get("input_scale_exp"))
    if graph is not None:
        rep = verify(prog, graph, x, module=module, check=check, progress=True, is_int8=is_int8)
        sim, checks = rep.sim, rep.checks
    else:
        sim, checks, rep = simulate(prog, x.reshape(shape), check=check, progress=True), None, None
    con.print(_table(prog, sim, checks, rep))
    ok = sim.accounting_ok and (rep is None or rep.ok)
    con.print(escape(_summary(prog, sim, rep)))
    if sim.compression:
        raw, got, want = (sum(r[k] for r in sim.compression) for k in (2, 3, 4))
        con.print(f"zero-compressed streams ({len(sim.compression)} transfers): {raw:,} B -> {got:,} B carried "
                  f"({got / raw:.1%}); the time model expected {want:,.0f} B from the calibrated zero fractions")
    doc = _json(prog, sim, checks, rep)
    doc["compression"] = [{"layer": n, "op": op, "raw_bytes": r, "compressed_bytes": g, "expected_bytes": w}
                          for n, op, r, g, w in sim.compression]
    if timing:
        doc["timing"] = _timing(prog, con, profile)
    write_json(json_out, doc)
    if not ok:
        raise typer.Exit(1)


def _timing(prog, con, profile) -> dict:
    """Print the time model's and the clocked replay's latency side by side under the rule
    ``profile``; their JSON."""
    from rich.markup import escape

    from tilesparse.cli.sim_timing import engines_line, timing_json, timing_rows, timing_summary, timing_table

    profile = profile or rules_arg(prog.hw.rules, "hw rules")
    rows, model_s, rep = timing_rows(prog, profile)
    con.print(timing_table(prog, rows, model_s, rep.total_s, profile.name))
    con.print(escape(timing_summary(rows, model_s, rep.total_s)))
    con.print(escape(engines_line(rep)))
    return {"rules": profile.name, **timing_json(rows, model_s, rep)}


def _program_and_graph(target: str, array: str | None, out: Path | None, req: dict):
    """(program, graph to verify against or None, its float module or None, a notice or "")."""
    from tilesparse.build import build_graph_from, check_request, graph_from_provenance, not_rebuildable
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.errors import ConfigError
    from tilesparse.program.provenance import package_version, provenance_of, set_provenance

    array_arg(array)  # a bad --array named before anything is built
    if not is_program_file(target):
        from tilesparse.cli.compile_cmd import calib_args

        calib = calib_args(req["calib"], req["calib_images"])
        built = build_graph_from(target, **{k: v for k, v in req.items() if k not in ("source", *_CALIB_KEYS)},
                                 **calib)
        hw = array_arg(array or "4x4")
        prog = compile_graph(built.graph, hw)
        set_provenance(prog, built.provenance(hw.label, True))
        if out is not None:
            prog.save(out)
        return prog, built.graph, built.module, "\n".join(built.notices)
    prog = read_program(target)
    prov = provenance_of(prog, target)
    if prov is not None:
        check_request(prov, target, array=array, **{k: v for k, v in req.items() if k != "calib"})
        if not prov.quantized:
            return prog, None, None, f"{target} is a timing-only (float) program: nothing to verify bit for bit"
        if prov.source_kind == "module":
            return prog, None, None, f"{target} was {not_rebuildable(prov)}; checking byte accounting only"
        notes = [f"{target} was compiled by tilesparse {prov.version}, this is {package_version()}: a "
                 "difference may be the tools', not the program's"] * (prov.version != package_version())
        built = graph_from_provenance(prov, target, notes, model=req["source"], weights=req["weights"],
                                      calib=req["calib"])
        return prog, built.graph, built.module, "\n".join(notes + [f"verifying against {built.source.spec} "
                                                                   "(provenance)"])
    if array:
        prog = read_program(target, hw=array_arg(array))
    if req["source"] is None:
        if req["calib"] is not None:
            raise ConfigError("--calib", [f"{target} records no provenance: give --model SOURCE to verify against"])
        return prog, None, None, (f"{target} records no provenance: checking byte accounting only (give --model "
                                  "SOURCE to verify bit for bit, or recompile)")
    built = _built_for(prog, target, req)
    return prog, built.graph, built.module, ""


def _built_for(prog, target: str, req: dict):
    """The --model graph to verify a program without provenance against, built for the input the
    program reads (--input-shape defaults to it; another one is refused: the model's own default,
    224x224 for a zoo name, would not fit a program compiled for 32x32)."""
    from tilesparse.build import build_graph_from, parse_input_shape
    from tilesparse.errors import ConfigError

    reads = (1, *prog.buffers[_input_buffer(prog)]["shape"])
    given = parse_input_shape(req["input_shape"])
    if given is not None and given != reads:
        raise ConfigError(f"--input-shape {req['input_shape']}", [f"{target} reads an input of {_shape(reads)}"])
    from tilesparse.cli.compile_cmd import calib_args

    kept = {k: v for k, v in req.items() if k != "source" and k not in _CALIB_KEYS}
    return build_graph_from(req["source"], **{**kept, "input_shape": reads},
                            **calib_args(req["calib"], req["calib_images"]))


_CALIB_KEYS = ("calib", "calib_images")


def _shape(shape) -> str:
    return ",".join(str(n) for n in shape)


def _input_buffer(prog) -> str:
    written = {r.output.buffer for r in prog.layers}
    return next(n for n, b in prog.buffers.items() if b.get("graph_io") and n not in written)


def _float_layers(rep) -> dict:
    """Float comparison per graph node (empty without a module)."""
    fc = None if rep is None else rep.float_check
    return {} if fc is None else {c.layer: c for c in fc.layers}


def _float_of(rec, floats: dict):
    """The float comparison standing for a program layer: its fused add's, else its own node's."""
    return floats.get(rec.fused_add) or floats.get(rec.name)


def _table(prog, sim, checks, rep=None):
    from rich.table import Table

    t = Table(title=f"{prog.graph} on {prog.hw.label}: simulated")
    cols = ("layer", "kind", "vs reference", "vs PyTorch (float)", "bytes (busiest ch.)", "charged", "MACs",
            "charged", "ok")
    for col in cols:
        t.add_column(col, justify="left" if col in cols[:4] else "right")
    ref, floats = {c.layer: c for c in checks or []}, _float_layers(rep)
    # accounts cover the layers that ran (every one in a whole-program run)
    for rec, a in zip(prog.layers, sim.accounts, strict=False):
        c, f = ref.get(rec.name), _float_of(rec, floats)
        agree = "-" if c is None else ("bit-exact" if c.ok else f"{c.n_diff} differ at {c.first}")
        near = "-" if f is None else (f"cos {f.cosine:.4f}, err {f.max_err:.2g} " + ("≤" if f.ok else "OUTSIDE")
                                      + f" {f.tolerance:.2g}")
        good = a.ok and (c is None or c.ok) and (f is None or f.ok)
        t.add_row(rec.name, rec.kind, agree, near, f"{sum(a.sim_bytes.values()):,}",
                  f"{sum(a.model_bytes.values()):,}", f"{a.sim_macs:,}", f"{a.model_macs:,}", "yes" if good else "NO")
    return t


def _summary(prog, sim, rep) -> str:
    lv = ", ".join(f"{k} {v:,}" for k, v in sim.by_level.items())
    lines = [f"simulated {len(prog.layers)} layers in {sim.seconds:.2f} s; moved: {lv}"]
    lines.append("accounting: every layer's bytes and MACs equal the time model's" if sim.accounting_ok
                 else "accounting: MISMATCH — " + "; ".join(n for a in sim.accounts for n in a.notes[:1])[:400])
    if rep is not None:
        lines.append(f"reference: {rep.bit_summary()}")
    if rep is not None and rep.float_check is not None:
        lines.append(rep.float_check.summary())
    return "\n".join(lines)


def _float_json(f) -> dict | None:
    if f is None:
        return None
    return {"torch_node": f.torch_node, "ok": f.ok, "cosine": f.cosine, "max_err": f.max_err,
            "tolerance": f.tolerance, "rms_err": f.rms_err, "rms_tolerance": f.rms_tolerance}


def _json(prog, sim, checks, rep) -> dict:
    ref, floats = {c.layer: c for c in checks or []}, _float_layers(rep)
    layers = []
    # accounts cover the layers that ran (every one in a whole-program run)
    for rec, a in zip(prog.layers, sim.accounts, strict=False):
        c = ref.get(rec.name)
        layers.append({"layer": rec.name, "kind": rec.kind, "bit_exact": None if c is None else c.ok,
                       "first_diff": None if c is None or c.ok else {"at": c.first, "got": c.got, "want": c.want},
                       "float": _float_json(_float_of(rec, floats)),
                       "bytes": a.sim_bytes, "charged_bytes": a.model_bytes, "macs": a.sim_macs,
                       "charged_macs": a.model_macs, "cycles": a.sim_cycles, "charged_cycles": a.model_cycles,
                       "notes": a.notes})
    fc = None if rep is None else rep.float_check
    return {"graph": prog.graph, "array": prog.hw.label, "seconds": sim.seconds, "by_level": sim.by_level,
            "accounting_ok": sim.accounting_ok, "bit_exact": None if rep is None else all(c.ok for c in rep.checks),
            "float_check": None if fc is None else {**_float_json(fc.output), "layers_ok": all(c.ok for c in fc.layers),
                                                     "not_compared": fc.not_compared},
            "ok": sim.accounting_ok and (rep is None or rep.ok), "layers": layers}


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate_verb)
