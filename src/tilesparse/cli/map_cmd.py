"""``tilesparse map``: search mappings of one layer or a whole network with the analytical cost
model, and report latency, energy and EDP per layer."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from tilesparse.cli.common import (
    BLOCK_HELP,
    INPUT_SHAPE_HELP,
    JSON_HELP,
    SEED_MAX,
    SOURCE_HELP,
    SPARSITY_HELP,
    WEIGHTS_HELP,
    array_arg,
    block_arg,
    block_pattern_args,
    check_outputs,
    console,
    sparsity_arg,
    write_json,
)
from tilesparse.errors import ConfigError

LAYER_HELP = ("One layer from plain numbers: 'conv:k=64,c=64,p=56,q=56,r=3,s=3[,stride=1,groups=1,n=1]' "
              "or 'matmul:m=128,k=768,n=768'.")


def parse_layer(spec: str):
    """A Problem from ``kind:key=value,...``."""
    from tilesparse.costmodel import Problem

    kind, _, rest = spec.partition(":")
    try:
        kw = {k.strip(): int(v) for k, v in (item.split("=") for item in rest.split(",") if item)}
    except ValueError:
        raise ConfigError("--layer", [f"cannot parse {spec!r}: {LAYER_HELP}"]) from None
    try:
        if kind == "conv":
            return Problem.conv(name="layer", **kw)
        if kind == "matmul":
            return Problem.matmul(kw.pop("m"), kw.pop("k"), kw.pop("n"), name="layer", **kw)
    except (TypeError, KeyError) as e:
        raise ConfigError("--layer", [f"{spec!r}: {e}; {LAYER_HELP}"]) from None
    raise ConfigError("--layer", [f"unknown layer kind {kind!r}: {LAYER_HELP}"])


def _sparse_spec(density: float | None, fmt: str | None, action: str):
    from tilesparse.costmodel import SparseSpec, Uniform, make_format

    if density is None:
        return None
    return SparseSpec(density={"W": Uniform(density)},
                      formats={"W": make_format(fmt)} if fmt else {}, action=action)


ARCH_HELP = ("Architecture of the cost model: an AIE2 array as compile takes it (4x4, 5x7, phoenix, strix, an "
             "array YAML; also aie2:RxC), aie2 (4x4), eyeriss, or a cost-model YAML file.")


def _architecture(spec: str):
    """A cost-model architecture; an ``--array`` spec of the other verbs (``4x4``) is that AIE2 array."""
    import re

    from tilesparse.costmodel import load_arch
    from tilesparse.costmodel.arch import aie2_arch

    try:
        return load_arch(spec)
    except ConfigError as first:
        try:
            return aie2_arch(spec)
        except ConfigError:
            if re.search(r"\d+x\d+$", spec):  # meant as an array: its own error says what is wrong
                array_arg(spec)
            raise first from None


def _check_target(layer: str | None, source: str | None, **model_flags) -> None:
    """One of --layer / SOURCE; the model's own flags only with a SOURCE (never silently unused)."""
    if (layer is None) == (source is None):
        raise ConfigError("tilesparse map", ["give exactly one of --layer or a model SOURCE"])
    given = [k for k, v in model_flags.items() if v is not None]
    if layer is not None and given:
        flag = "--" + given[0].replace("_", "-")
        raise ConfigError(flag, ["applies to a model SOURCE; for --layer give --density (and --format)"])


def _problems(source: str, sparsity: float | None, weights, input_shape, action: str, block: str | None = None,
              hw=None):
    """(problems, sparse specs or None) of a model source: a model trained to N:M or HSS priced in
    its pattern's format with each layer's measured density, one trained to TASD / SDQ as its
    pattern's terms (one row per term), else from the graph's block masks."""
    from tilesparse.build import parse_input_shape
    from tilesparse.mapper.network import (
        graph_problems,
        mask_specs,
        network_build,
        network_problems,
        pattern_specs,
    )

    built = network_build(source, parse_input_shape(input_shape), sparsity=sparsity, weights=weights, block=block)
    if built is None:
        if sparsity is not None:
            raise ConfigError("--sparsity", ["needs the tilesparse front end (IR graph with masks)"])
        return network_problems(source), None
    graph, problems = built.graph, graph_problems(built.graph)
    if "+" in built.pattern:  # a TASD / SDQ checkpoint: its terms, each of a fixed pattern
        return _pattern_problems(problems, built.pattern, None, hw)
    if built.pattern != "block":  # trained (or pruned) to N:M / HSS
        return problems, pattern_specs(graph, problems, built.pattern, hw=hw, action=action)
    masked = any(not graph.param(n, "mask").all() for n in _sparsifiable(graph))
    return problems, (mask_specs(graph, action=action) if masked else None)


PATTERN_HELP = ("Sparsity pattern the cost model prices: 8x8[@s] (blocks: block bitmap, kept blocks computed), "
                "2:4 / 1:4 (N:M along input channels in the AIE-ML masked format, at the sparse multiply's rate), "
                "8x8@0.5/2:4 (HSS: bitmap + masked inside kept blocks), 2:4+1:4 (TASD: terms add), int8-2:4+int4 "
                "(SDQ: a 2:4 int8 part + a dense int4 part at the int8xint4 rate). With a SOURCE a block pattern "
                "(8x8 with --sparsity) prunes the model and uses each layer's actual mask, as before; other "
                "patterns are modelled from their densities (layers whose input channels do not divide M stay "
                "dense). Multi-term patterns show one row per term.")


def _is_block_pattern(pattern: str | None) -> bool:
    from tilesparse.patterns import Block
    from tilesparse.patterns.grammar import parse_pattern

    return pattern is not None and "+" not in pattern and isinstance(parse_pattern(pattern), Block)


def _fits(problem, pattern: str) -> bool:
    """Whether every N:M term's M divides the layer's input channels per group."""
    import re

    return all(problem.bound("C") % int(m) == 0 for m in re.findall(r"\d+:(\d+)", pattern))


def _pattern_problems(problems, pattern: str, sparsity: float | None, hw):
    """One (problem, spec) per term of ``pattern`` per layer (dense where the pattern does not fit)."""
    from tilesparse.costmodel.pattern import pattern_terms

    out_p, out_s = [], []
    for p in problems:
        if not _fits(p, pattern):
            out_p.append(p)
            out_s.append(None)
            continue
        terms = pattern_terms(p, pattern, sparsity=sparsity, hw=hw)
        for t in terms:
            out_p.append(t.problem if len(terms) == 1 else replace(t.problem, name=f"{p.name}/{t.label}"))
            out_s.append(t.spec)
    return out_p, out_s


def _pattern_hw(spec: str):
    """The hw description a pattern's rules come from: the array itself when --array names one."""
    from tilesparse.hw import load_array

    base = spec.partition(":")[2] if spec.lower().startswith("aie2:") else spec
    try:
        return load_array(base)
    except ConfigError:
        return None  # not an AIE2 array (eyeriss, a cost-model YAML): the shipped AIE2 rules


def _sparsifiable(graph):
    from tilesparse.passes.masks import sparsifiable_layers

    return sparsifiable_layers(graph)


def register(app: typer.Typer) -> None:
    @app.command("map")
    def map_cmd(
        source: str = typer.Argument(None, metavar="SOURCE", help=SOURCE_HELP + " A whole network; or --layer."),
        layer: str = typer.Option(None, "--layer", "-l", help=LAYER_HELP),
        model: str = typer.Option(None, "--model", "-m", hidden=True, help="Old spelling of SOURCE."),
        array: str = typer.Option(None, "--array", "-a", help=ARCH_HELP + " Default aie2."),
        arch: str = typer.Option(None, "--arch", hidden=True, help="Old name of --array."),
        weights: Path = typer.Option(None, help=WEIGHTS_HELP),
        input_shape: str = typer.Option(None, help=INPUT_SHAPE_HELP),
        mapper: str = typer.Option("genetic", help="random, random-pruned, exhaustive, genetic, annealing, surrogate."),
        budget: int = typer.Option(10_000, help="Mapping evaluations per layer."),
        objective: str = typer.Option("edp", help="latency, energy or edp."),
        density: float = typer.Option(None, help="Weight density in [0, 1] (uniform random); omit for dense."),
        fmt: str = typer.Option(None, "--format", help="Weight format with --density: bitmask, coordinate, "
                                "offset_pairs, run_length, block_index, block_bitmap, masked (AIE-ML sparse multiply), "
                                "block_masked. --pattern sets its own."),
        action: str = typer.Option("skip", help="With --density or masks: skip (time + energy) or gate (energy "
                                   "only) zero MACs."),
        sparsity: float = typer.Option(None, help=SPARSITY_HELP + " Each layer is modelled with its actual mask "
                                       "(block-index format). A checkpoint's masks are used without it."),
        prune: float = typer.Option(None, hidden=True, help="Old name of --sparsity."),
        block: str = typer.Option(None, help=BLOCK_HELP),
        pattern: str = typer.Option(None, help=PATTERN_HELP),
        warm_start: bool = typer.Option(True, help="Seed each layer's search with earlier layers' best mappings."),
        seed: int = typer.Option(0, help="Random seed.", min=0, max=SEED_MAX),
        progress: bool = typer.Option(True, help="Show a progress bar."),
        json_out: Path = typer.Option(None, "--json", help=JSON_HELP + " Per-layer results."),
        output: Path = typer.Option(None, "--output", "-o", hidden=True, help="Old name of --json."),
        explain: bool = typer.Option(False, help="Print each layer's breakdown and loop nest."),
    ) -> None:
        """Search mappings of one layer (--layer) or a network (SOURCE) on an architecture and
        report latency, energy, EDP and utilization per layer (analytical, Sparseloop-style model).

        Examples:

        * `tilesparse map resnet50 -a 4x4 --sparsity 0.5 --mapper genetic --budget 10000`
        * `tilesparse map runs/d/sparse.pt -a 2x2` (each layer with its trained mask; N:M / HSS in their
          format, at each layer's measured density)
        * `tilesparse map --layer conv:k=64,c=64,p=56,q=56,r=3,s=3 --density 0.5 --format bitmask --explain`
        * `tilesparse map --layer conv:k=64,c=64,p=56,q=56,r=3,s=3 --pattern 2:4` (masked format, sparse multiply)
        * `tilesparse map resnet18 -a 4x4 --pattern 8x8@0.5/2:4` (HSS, every layer from its densities)
        * `tilesparse map --layer conv:k=64,c=64,p=28,q=28,r=3,s=3 --pattern int8-2:4+int4` (SDQ: one row per term)
        """
        from tilesparse.mapper import map_network

        source = source or model
        sparsity = sparsity_arg(sparsity if sparsity is not None else prune)
        block_arg(block)
        by_terms = pattern is not None and (layer is not None or not _is_block_pattern(pattern))
        if by_terms and (density is not None or fmt is not None or block is not None):
            raise ConfigError("--pattern", [f"{pattern}: the pattern sets the density and format; drop "
                                            "--density / --format / --block"])
        if not by_terms:
            block, sparsity = block_pattern_args(pattern, block, sparsity)
        pattern_sparsity, sparsity = (sparsity, None) if by_terms else (None, sparsity)
        _check_target(layer, source, sparsity=sparsity, block=block, weights=weights, input_shape=input_shape)
        check_outputs({"--json": json_out or output})
        a = _architecture(array or arch or "aie2")
        specs = None
        if layer:
            problems = [parse_layer(layer)]
        else:
            problems, specs = _problems(source, sparsity, weights, input_shape, action, block,
                                        _pattern_hw(array or arch or "aie2"))
        if by_terms:
            hw = _pattern_hw(array or arch or "aie2")
            problems, specs = _pattern_problems(problems, pattern, pattern_sparsity, hw)
        if specs is None:
            specs = [_sparse_spec(density, fmt, action)] * len(problems)
        results = map_network(problems, a, warm_start=warm_start, mapper=mapper, budget=budget,
                              objective=objective, sparse_specs=specs, seed=seed, progress=progress)
        _report(problems, results, a, explain, json_out or output, {"mapper": mapper, "objective": objective})


def _report(problems, results, arch, explain: bool, json_out: Path | None, search: dict) -> None:
    """The table (and each layer's breakdown with --explain), and the JSON record."""
    con = console(json_out)
    con.print(_table(problems, results, arch))
    if explain:
        for p, r in zip(problems, results, strict=True):
            con.print(r.breakdown.explain().replace(str(r.breakdown.problem), str(p), 1))
            con.print(r.mapping.describe(arch))
    rows = [_row(p, r) for p, r in zip(problems, results, strict=True)]
    write_json(json_out, {"arch": arch.name, **search, "layers": rows})


def _row(p, r) -> dict:
    b = r.breakdown
    return {"layer": p.name, "bounds": list(p.bounds), "macs": p.macs, "cycles": b.cycles,
            "seconds": b.seconds(), "energy_pj": b.energy_pj, "edp": b.edp,
            "utilization": b.utilization, "bottleneck": b.bottleneck, "evaluations": r.n_evals,
            "mapping": r.mapping.describe(b.arch)}


def _table(problems, results, arch):
    from rich.table import Table

    t = Table(title=f"mappings on {arch.name}")
    for col in ("layer", "MACs", "cycles", "latency us", "energy uJ", "util", "bound by"):
        t.add_column(col, justify="right" if col != "layer" else "left")
    tot_c = tot_e = 0.0
    for p, r in zip(problems, results, strict=True):
        b = r.breakdown
        tot_c, tot_e = tot_c + b.cycles, tot_e + b.energy_pj
        t.add_row(p.name, f"{p.macs:,}", f"{b.cycles:,.0f}", f"{b.seconds() * 1e6:,.1f}",
                  f"{b.energy_pj / 1e6:,.2f}", f"{b.utilization:.0%}", b.bottleneck)
    if len(problems) > 1:
        t.add_row("total", f"{sum(p.macs for p in problems):,}", f"{tot_c:,.0f}",
                  f"{tot_c / arch.clock_hz * 1e6:,.1f}", f"{tot_e / 1e6:,.2f}", "", "")
    return t
