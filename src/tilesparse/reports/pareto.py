"""Which sparsity pattern to use: every pattern at every sparsity, compiled, with its costs side by side.

For each network and array, every requested pattern is pruned one-shot (lowest magnitude, every layer
but the first conv: ``patterns.oneshot``) at every requested sparsity, compiled (timing only, no
quantization: the estimate and the packed bytes do not depend on the int8 values), and measured:

* **latency**: the time model's estimate (``estimate.timemodel``), with the lower bound;
* **packed weight bytes**: bitmap / masks + kept weights (bias excluded), from the Program;
* **traffic by level**: bytes over DDR (LOAD, LOADW, WRITE) and between MemTile and cores (LOADFM,
  LOADWM, WRITEFM), summed over the Program's instructions (``Instr.nbytes`` is the total of an
  instruction over all channels and iterations), and the MACs the cores execute (COMP);
* **energy** from the Sparseloop-style cost model (``costmodel``): every conv / linear mapped once
  per network and array on the AIE2 preset (dense, energy objective), then evaluated with its
  compiled weight density (kept MACs / MACs of the layer) as a *uniform* density with skipping —
  the cost model does not yet model the patterns' structure, so patterns enter it as densities;
* **accuracy**, joined from an evaluation table when one is given (``load_accuracy``).

Patterns the compiler refuses (TASD, SDQ while their formats are not compilable) become rows
``status = "not compiled: <reason>"`` with no figures. ``pareto_front`` marks the points no other
point dominates.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tilesparse.errors import ConfigError

if TYPE_CHECKING:
    from tilesparse.ir.graph import Graph
    from tilesparse.program import Program

__all__ = ["ALIASES", "ParetoRow", "PointPlan", "load_accuracy", "pareto_front", "plan_points", "run_pareto",
           "measure_program"]

# short names accepted beside the --pattern grammar
ALIASES = {"hss": "8x8/2:4", "tasd": "2:4+1:4", "sdq": "int8-2:4+int4"}
# patterns outside the --pattern grammar (another format), handed to the compiler as given
# spec -> its fixed sparsity: TASD 2:4+1:4 keeps 2/4 + 1/4 of the weights; SDQ keeps every weight (int8 + int4)
EXTRA_PATTERNS = {"2:4+1:4": 0.25, "int8-2:4+int4": 0.0}
SDQ_SPECS = ("int8-2:4+int4",)  # compiled quantized: SDQ's parts are integer codes
STUDY_NETWORKS = {"digits": "digits_cnn", "shapes": "shapes_cnn"}  # accuracy study dataset -> zoo network


@dataclass(frozen=True)
class PointPlan:
    """One pattern at one sparsity: ``spec`` is what the compiler gets (``None`` + sparsity 0: dense)."""

    pattern: str  # as the user named it
    spec: str | None
    sparsity: float  # nominal fraction of zero weights in the pruned layers


@dataclass
class ParetoRow:
    network: str
    array: str
    pattern: str
    spec: str
    sparsity: float
    status: str = "ok"
    latency_ms: float | None = None
    bound_ms: float | None = None
    packed_weight_bytes: int | None = None
    dense_weight_bytes: int | None = None
    ddr_bytes: int | None = None
    memtile_core_bytes: int | None = None
    core_macs: int | None = None
    energy_uj: float | None = None
    accuracy: float | None = None
    limiter_ms: dict[str, float] = field(default_factory=dict)  # estimate time by layer bound (compute/ddr/memtile)
    on_front: bool = False

    @property
    def compiled(self) -> bool:
        return self.status == "ok"


def _fmt_s(s: float) -> str:
    return f"{s:g}"


def plan_points(patterns: Sequence[str], sparsities: Sequence[float]) -> list[PointPlan]:
    """The (pattern, sparsity) points of a sweep. A pattern with a free level (``8x8``, ``8x8/2:4``)
    gets one point per sparsity (for a hierarchy the free level is set so that the whole reaches
    it; a sparsity it cannot reach is skipped); a pattern whose sparsity is fixed (2:4, 1:4,
    ``8x8@0.5/2:4``, TASD) gets one point at its own; ``dense`` one point at 0.

    >>> [(p.spec, p.sparsity) for p in plan_points(["dense", "8x8", "2:4", "hss"], [0.5, 0.75])]
    [(None, 0.0), ('8x8@0.5', 0.5), ('8x8@0.75', 0.75), ('2:4', 0.5), ('8x8@0/2:4', 0.5), ('8x8@0.5/2:4', 0.75)]
    """
    from tilesparse.patterns import check_sparsity, parse_pattern

    for s in sparsities:
        check_sparsity(s, "--sparsity")
    out: list[PointPlan] = []
    for name in patterns:
        spec = ALIASES.get(name.strip().lower(), name.strip())
        if spec.lower() == "dense":
            out.append(PointPlan(name, None, 0.0))
            continue
        if spec in EXTRA_PATTERNS:
            out.append(PointPlan(name, spec, EXTRA_PATTERNS[spec]))
            continue
        p = parse_pattern(spec, "--patterns")
        if not p.free_levels():
            out.append(PointPlan(name, p.spec(), float(p.nominal_sparsity() or 0.0)))
            continue
        for s in sparsities:
            try:
                filled = p.with_sparsity(s)
            except ConfigError:
                continue  # the fixed levels alone are sparser than s
            out.append(PointPlan(name, filled.spec(), float(s)))
    seen: set[tuple[str | None, float]] = set()
    unique = []
    for pt in out:
        if (pt.spec, pt.sparsity) not in seen:
            seen.add((pt.spec, pt.sparsity))
            unique.append(pt)
    return unique


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For points (cost, quality) — lower cost and higher quality better — whether each is on the
    front: no other point is at least as good in both and strictly better in one. Points with a
    nan coordinate are never on the front. O(n log n): sorted by cost, then quality descending.

    >>> pareto_front([(1.0, 0.5), (2.0, 0.9), (2.0, 0.4), (3.0, 0.9)])
    [True, True, False, False]
    """
    order = sorted((i for i, (c, q) in enumerate(points) if not (math.isnan(c) or math.isnan(q))),
                   key=lambda i: (points[i][0], -points[i][1]))
    on = [False] * len(points)
    best: tuple[float, float] | None = None  # the front point of the best quality so far
    for i in order:
        c, q = points[i]
        if best is None or q > best[1]:
            on[i], best = True, (c, q)
        elif (c, q) == best:
            on[i] = True  # an exact duplicate of a front point: neither dominates the other
    return on


# --------------------------------------------------------------------------------------------- accuracy


def _canon_pattern(text: str, sparsity: float) -> str:
    """A pattern name as the join compares it: aliases resolved, a free level filled with
    ``sparsity``, the grammar's own spelling (``8x8`` at 0.5 is ``8x8@0.5``)."""
    t = str(text).strip()
    t = ALIASES.get(t.lower(), t)
    if t.lower() == "dense":
        return "dense"
    if t in EXTRA_PATTERNS:
        return t
    from tilesparse.patterns import parse_pattern

    try:
        p = parse_pattern(t, "accuracy table")
        return (p.with_sparsity(sparsity) if p.free_levels() else p).spec()
    except ConfigError:
        return t


def _key(network: str, pattern: str, sparsity: float) -> tuple[str, str, float]:
    return network, _canon_pattern(pattern, float(sparsity)), round(float(sparsity), 4)


def load_accuracy(path: str | Path, method: str = "oneshot") -> dict[tuple[str, str, float], float]:
    """(network, pattern, sparsity) -> accuracy from an evaluation file: CSV or JSON (a list of
    records) with columns network, pattern, accuracy and density or sparsity (density = 1 -
    sparsity); or the accuracy study's .jsonl (``benchmarks/accuracy_study.py``: datasets digits /
    shapes as the zoo networks digits_cnn / shapes_cnn, trained patterns of ``method`` and the
    dense runs, mean over seeds). Patterns are compared in the grammar's spelling (``8x8@0.5`` and
    ``8x8`` at 0.5 are one key)."""
    path = Path(path)
    sums: dict[tuple[str, str, float], list[float]] = {}
    for i, r in enumerate(_read_records(path)):
        got = _record(r, f"--accuracy {path}: record {i + 1}", method)
        if got is not None:
            sums.setdefault(got[0], []).append(got[1])
    return {k: sum(v) / len(v) for k, v in sums.items()}


def _read_records(path: Path) -> list[Any]:
    if not path.is_file():
        raise ConfigError(f"--accuracy {path}", ["no such file"])
    text = path.read_text()
    try:
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        if path.suffix == ".json":
            data = json.loads(text)
            return data if isinstance(data, list) else data.get("rows", [])
        return list(csv.DictReader(text.splitlines()))
    except (json.JSONDecodeError, csv.Error, AttributeError) as e:
        raise ConfigError(f"--accuracy {path}", [f"cannot read it as {path.suffix or 'CSV'}: {e}"]) from None


def _record(r: Any, where: str, method: str) -> tuple[tuple[str, str, float], float] | None:
    """One record's (key, accuracy), or None for a study record outside the join."""
    if not isinstance(r, dict):
        raise ConfigError(where, ["expected an object with network, pattern, density/sparsity, accuracy"])
    if "dataset" in r and "kind" in r:  # the accuracy study's own records
        net = str(STUDY_NETWORKS.get(r["dataset"], r["dataset"]))
        if r["kind"] == "dense":
            return (net, "dense", 0.0), float(r["accuracy"])
        if r["kind"] == "train" and r.get("method") == method and r.get("spec"):
            return _key(net, str(r["spec"]), r["sparsity"]), float(r["accuracy"])
        return None
    missing = [k for k in ("network", "pattern", "accuracy") if r.get(k) in (None, "")]
    if r.get("density") in (None, "") and r.get("sparsity") in (None, ""):
        missing.append("density or sparsity")
    if missing:
        raise ConfigError(where, [f"missing {', '.join(missing)}"])
    try:
        acc = float(r["accuracy"])
        sp = 1.0 - float(r["density"]) if r.get("density") not in (None, "") else float(r["sparsity"])
    except (TypeError, ValueError) as e:
        raise ConfigError(where, [f"not a number: {e}"]) from None
    return _key(str(r["network"]), str(r["pattern"]), sp), acc


def accuracy_of(table: dict[tuple[str, str, float], float], row: ParetoRow) -> float | None:
    return table.get(_key(row.network, row.spec, row.sparsity))


# ------------------------------------------------------------------------------------------- the sweep

DDR_OPS = ("LOAD", "LOADW", "WRITE")
MEMTILE_CORE_OPS = ("LOADFM", "LOADWM", "WRITEFM")


def measure_program(prog: Program) -> dict[str, Any]:
    """Latency, bytes and traffic of one compiled Program (no energy)."""
    from tilesparse.estimate.bounds import program_bounds
    from tilesparse.estimate.report import summarize
    from tilesparse.estimate.timemodel import estimate_program

    pt = estimate_program(prog)
    s = summarize(prog, pt)
    by_op: dict[str, int] = {}
    for ins in prog.instrs:
        by_op[ins.op] = by_op.get(ins.op, 0) + int(ins.nbytes)
    limiter: dict[str, float] = {}
    for (_, _, secs), b in zip(pt.layers, program_bounds(prog), strict=True):
        limiter[b.limiter] = limiter.get(b.limiter, 0.0) + secs * 1e3
    return {"latency_ms": s.estimate_ms, "bound_ms": s.bound_ms, "packed_weight_bytes": s.packed_weight_bytes,
            "dense_weight_bytes": s.dense_weight_bytes, "ddr_bytes": sum(by_op.get(o, 0) for o in DDR_OPS),
            "memtile_core_bytes": sum(by_op.get(o, 0) for o in MEMTILE_CORE_OPS),
            "core_macs": by_op.get("COMP", 0), "limiter_ms": limiter}


class EnergyModel:
    """The cost model's energy of a network at per-layer weight densities: each conv / linear mapped
    once (dense problem, ``objective`` energy, ``budget`` evaluations) on the AIE2 preset of the array,
    then evaluated with its density as ``Uniform`` weights and ``skip`` (patterns passed as densities)."""

    def __init__(self, graph: Graph, hw: Any, budget: int = 300, seed: int = 0):
        from tilesparse.costmodel.arch import aie2_arch
        from tilesparse.costmodel.problem import Problem
        from tilesparse.ir.graph import Op
        from tilesparse.mapper import map_network

        self.arch = aie2_arch(hw)
        nodes = graph.of(Op.CONV2D, Op.LINEAR)
        self.problems = {n.name: Problem.from_node(n, in_shape=graph.node(n.inputs[0]).out.shape) for n in nodes}
        results = map_network(list(self.problems.values()), self.arch, mapper="genetic", budget=budget,
                              objective="energy", seed=seed)
        self.mappings = {name: r.mapping for name, r in zip(self.problems, results, strict=True)}

    def energy_uj(self, densities: dict[str, float]) -> float:
        """Total energy (uJ) with ``densities`` by layer name (layers not named: dense)."""
        from tilesparse.costmodel.density import Uniform
        from tilesparse.costmodel.formats import Bitmask
        from tilesparse.costmodel.model import SparseSpec, evaluate

        total = 0.0
        for name, problem in self.problems.items():
            d = min(1.0, max(densities.get(name, 1.0), 1e-6))
            spec = None if d >= 1.0 else SparseSpec(density={"W": Uniform(d)}, formats={"W": Bitmask()},
                                                    action="skip")
            total += evaluate(problem, self.arch, self.mappings[name], spec).energy_pj
        return total / 1e6


def layer_densities(prog: Program) -> dict[str, float]:
    """The fraction of its dense MACs each conv / linear layer of a Program performs, by layer
    name: kept MACs / MACs (zero blocks skipped), halved for a layer in the masked format (the
    sparse multiply performs 2 of every 4 products, whatever the pattern inside — 1:4 as 2:4)."""
    from tilesparse.program.sparse_format import MASKED

    out = {}
    for r in prog.layers:
        if getattr(r, "macs", 0):
            masked = r.kind == "conv" and r.geometry.weight_format == MASKED
            out[r.name] = r.kept_macs / r.macs * (0.5 if masked else 1.0)
    return out


def _refusal(e: Exception) -> str:
    text = str(e).replace("\n", " ").strip()
    return f"not compiled: {text[:200]}"


def run_pareto(networks: Sequence[str], arrays: Sequence[str], patterns: Sequence[str],
               sparsities: Sequence[float], *, input_shape: str | None = None,
               accuracy: dict[tuple[str, str, float], float] | None = None, energy: bool = True,
               energy_budget: int = 300, on_point: Callable[[str], None] | None = None) -> list[ParetoRow]:
    """The sweep: every network x array x planned point (``plan_points``) compiled and measured.
    ``on_point`` is called with a description before each compile (a progress bar)."""
    from tilesparse.build import build_graph_from, compile_source
    from tilesparse.hw import load_array

    plan = plan_points(patterns, sparsities)
    rows: list[ParetoRow] = []
    for net in networks:
        for array in arrays:
            hw = load_array(array)
            em = None
            if energy:
                dense = build_graph_from(net, sparsity=0.0, input_shape=input_shape, quantized=False)
                em = EnergyModel(dense.graph, hw, budget=energy_budget)
            for pt in plan:
                if on_point is not None:
                    on_point(f"{net} {hw.label} {pt.pattern} @{_fmt_s(pt.sparsity)}")
                row = ParetoRow(net, hw.label, pt.pattern, pt.spec or "dense", pt.sparsity)
                kw: dict[str, Any] = ({"sparsity": 0.0} if pt.spec is None else
                                      {"block": pt.spec.split("@")[0], "sparsity": pt.sparsity}
                                      if _is_block(pt.spec) else {"pattern": pt.spec})
                try:
                    prog = compile_source(net, hw, input_shape=input_shape, quantized=pt.spec in SDQ_SPECS, **kw)
                except (ConfigError, NotImplementedError, ValueError) as e:
                    row.status = _refusal(e)
                    rows.append(row)
                    continue
                for k, v in measure_program(prog).items():
                    setattr(row, k, v)
                if em is not None:
                    row.energy_uj = em.energy_uj(layer_densities(prog))
                if accuracy:
                    row.accuracy = accuracy_of(accuracy, row)
                rows.append(row)
    mark_fronts(rows)
    return rows


def _is_block(spec: str) -> bool:
    from tilesparse.patterns import Block, parse_pattern

    try:
        return isinstance(parse_pattern(spec, "--patterns"), Block)
    except ConfigError:
        return False


def front_axes(rows: Iterable[ParetoRow]) -> str:
    """"accuracy" when some compiled row of the group has one (rows without are then off the
    front), else "density"."""
    return "accuracy" if any(r.compiled and r.accuracy is not None for r in rows) else "density"


def mark_fronts(rows: Sequence[ParetoRow]) -> None:
    """Set ``on_front`` per (network, array): latency (lower better) against accuracy when the
    group has accuracies, else against density (1 - sparsity: more weights kept is better)."""
    groups: dict[tuple[str, str], list[ParetoRow]] = {}
    for r in rows:
        groups.setdefault((r.network, r.array), []).append(r)
    for group in groups.values():
        ok = [r for r in group if r.compiled]
        axis = front_axes(ok)
        pts = [(math.nan if r.latency_ms is None else float(r.latency_ms),
                (math.nan if r.accuracy is None else float(r.accuracy)) if axis == "accuracy" else 1.0 - r.sparsity)
               for r in ok]
        for r, on in zip(ok, pareto_front(pts), strict=True):
            r.on_front = on


def row_dict(r: ParetoRow) -> dict[str, Any]:
    d = asdict(r)
    d["limiter_ms"] = dict(r.limiter_ms)
    return d
