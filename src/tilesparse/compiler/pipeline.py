"""The back end in one flat pipeline: graph rewrites (``GRAPH_PASSES``) → layers → partition (each
plan followed by ``PLAN_PASSES``) → memory → packing → code → Program (``compile_graph``). Each conv's
weight format (block, the sparse multiply's masked format, or an SDQ layer's parts) is chosen right after the layers
(``compiler.formats``).

From a model source (zoo name, checkpoint, file.py:factory, .pt2) use the front door,
``tilesparse.build.compile_source``, which also records the program's provenance.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tilesparse.compiler.cache import CompileCache
from tilesparse.compiler.codegen import emit_layer, pack_layer, pack_table_layer
from tilesparse.compiler.formats import choose_weight_formats
from tilesparse.compiler.fusion import buffer_of, fusable_adds, order_add_branches
from tilesparse.compiler.layers import LayerSpec, chw, copy_spec, layer_spec, shuffle_specs
from tilesparse.compiler.memory import (
    Allocation,
    Buffer,
    DdrLayout,
    allocate,
    check_allocation,
)
from tilesparse.compiler.pack import dense_weight_bytes, int8_weights
from tilesparse.compiler.partition import Chooser, check_coverage
from tilesparse.compiler.planning import LayerPlan, plan_layer, replan
from tilesparse.compiler.prefetch import network_seconds, prefetch_weights
from tilesparse.compiler.rebalance import rebalance
from tilesparse.errors import UnsupportedOpError
from tilesparse.hw import ArrayConfig, get_profile, load_array
from tilesparse.ir.graph import Graph, Node, Op
from tilesparse.passes.balance import balance_channels, reorder_channels, reorderable
from tilesparse.passes.verify import verify
from tilesparse.program import (
    ChunkRow,
    LayerGeometry,
    LayerRecord,
    Loops,
    Operand,
    Program,
    TensorSlice,
)
from tilesparse.program.packing import LUT_TABLE_BYTES
from tilesparse.program.sparse_format import PARTS
from tilesparse.program.zero_compress import compression_on
from tilesparse.program.zero_compress import decide as decide_compression
from tilesparse.quant.rounding import INT8_MAX, INT8_MIN
from tilesparse.quant.sdq_graph import sdq_layers

__all__ = ["GRAPH_PASSES", "PLAN_PASSES", "compile_graph", "lower_layers"]

_SKIP = (Op.INPUT, Op.OUTPUT)


def lower_layers(g: Graph, fuse_adds: bool = True
                 ) -> tuple[list[LayerSpec], dict[str, dict[str, Any]], dict[str, str]]:
    """Layer specs in schedule order, each with its output buffer, and the input buffers of every
    layer (concat operands not marked ``write_into`` become copy layers, a channel shuffle its
    ``groups`` strided copies, a channel slice nothing; residual adds are fused into the conv that
    produces one operand, unless ``fuse_adds`` is False)."""
    specs: list[LayerSpec] = []
    ins: dict[str, dict[str, Any]] = {}
    fused = fusable_adds(g) if fuse_adds else {}
    fused_adds = {a for a, _ in fused.values()}
    rename = {c: a for c, (a, _) in fused.items()}
    for n in g:
        if n.op in _SKIP or n.name in fused_adds:
            continue
        if n.name in fused:
            add, other = fused[n.name]
            sp = layer_spec(n, g)
            buf, tot, off = buffer_of(g, add, rename)
            specs.append(dataclasses.replace(sp, out_tensor=buf, out_c_total=tot, out_c_offset=off,
                                             fused_add=add, residual=other))
            ins[sp.name] = {"inputs": [buffer_of(g, i, rename) for i in n.inputs] + [buffer_of(g, other, rename)]}
            continue
        if n.op in (Op.SLICE, Op.CHANNEL_SHUFFLE):  # a slice: no layer, readers take its channels
            _lower_shuffle(g, n, rename, specs, ins)  # of the producer's buffer (buffer_of)
            continue
        if n.op is Op.CONCAT:
            off = 0
            shifts = n.attrs.get("input_shifts") or (0,) * len(n.inputs)
            for i, shift in zip(n.inputs, shifts, strict=True):
                src = g.node(i)
                if "write_into" not in src.attrs:
                    sp = copy_spec(n, src, off, shift)
                    if n.inputs.count(i) > 1:  # cat([y, y]): one copy per slice, each named apart
                        sp = dataclasses.replace(sp, name=f"{sp.name}@{off}")
                    buf, tot, o = buffer_of(g, n.name, rename)
                    specs.append(dataclasses.replace(sp, out_tensor=buf, out_c_total=tot, out_c_offset=o + off))
                    ins[sp.name] = {"inputs": [buffer_of(g, i, rename)]}
                off += chw(src)[0]
            continue
        sp = layer_spec(n, g)
        buf, tot, off = buffer_of(g, n.name, rename)
        specs.append(dataclasses.replace(sp, out_tensor=buf, out_c_total=tot, out_c_offset=off))
        ins[sp.name] = {"inputs": [buffer_of(g, i, rename) for i in n.inputs]}
    if not any(s.kind == "conv" for s in specs):
        raise UnsupportedOpError(f"graph {g.name}: no convolution or linear layer to compile")
    return specs, ins, rename


def _lower_shuffle(g: Graph, n: Node, rename: dict[str, str], specs: list[LayerSpec],
                   ins: dict[str, dict[str, Any]]) -> None:
    """A channel shuffle's ``groups`` copy layers, each reading its contiguous channel range of the
    operand's buffer and writing every ``groups``-th channel of the shuffle's (``shuffle_specs``)."""
    if n.op is not Op.CHANNEL_SHUFFLE:
        return
    buf, tot, o = buffer_of(g, n.name, rename)
    sb, st, so = buffer_of(g, n.inputs[0], rename)
    for sp, first in shuffle_specs(n, g.node(n.inputs[0])):
        specs.append(dataclasses.replace(sp, out_tensor=buf, out_c_total=tot, out_c_offset=o + sp.out_c_offset))
        ins[sp.name] = {"inputs": [(sb, st, so + first)]}


def _buffers(g: Graph, specs: list[LayerSpec], ins: dict, rename: dict[str, str]) -> list[Buffer]:
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, sp in enumerate(specs):
        first.setdefault(sp.out_tensor, i)
        last[sp.out_tensor] = max(last.get(sp.out_tensor, i), i)
        for b, _, _ in ins[sp.name]["inputs"]:
            last[b] = max(last.get(b, i), i)
            first.setdefault(b, i)
    outs = {buffer_of(g, o.inputs[0], rename)[0] for o in g.outputs}
    gin = {n.name for n in g.inputs}
    sizes = {n.name: int(np.prod(chw(n))) for n in g}  # int8 activations
    return [Buffer(b, sizes[b], first[b], last[b], forced_ddr=b in outs or b in gin) for b in first]


def _where(alloc: Allocation, ddr: DdrLayout, buf: str) -> Operand:
    p = alloc.placements[buf]
    return Operand.memtile(buf, p.offset) if p.memory == "memtile" else Operand.ddr(ddr.regions[buf][0])


@dataclass
class _Job:
    """One compile's working state, handed from stage to stage (``compile_graph``)."""

    graph: Graph
    hw: ArrayConfig
    chooser: Chooser | None
    balance: bool
    cache: CompileCache
    orders: dict[str, np.ndarray] = field(default_factory=dict)  # node -> channel order (passes.balance)
    specs: list[LayerSpec] = field(default_factory=list)  # in schedule order (lower_layers)
    ins: dict[str, dict[str, Any]] = field(default_factory=dict)  # layer -> its input buffers


def _balance_channels(g: Graph, job: _Job) -> Graph:
    """Sparse convs read only by convs get their output channels reordered so that contiguous
    channel ranges keep equal blocks (``passes.balance``; not with ``balance=False``)."""
    if not job.balance or sdq_layers(g):  # an SDQ layer's two weight parts are not reordered (yet)
        return g
    g, job.orders = balance_channels(g)
    return g


def _order_add_branches(g: Graph, job: _Job) -> Graph:
    """An add of two convs' outputs runs inside the one that reads less input (``compiler.fusion``);
    nothing to order when the rule profile keeps adds as layers of their own."""
    return order_add_branches(g) if _fuses_adds(job.hw) else g


def _fuses_adds(hw: ArrayConfig) -> bool:
    """Whether residual adds run inside a conv under the array's rule profile (``hw.rules``;
    ``RuleProfile.residual_fusion``: off under ``paper``, where adds are layers of their own)."""
    return get_profile(hw.rules).residual_fusion


# The graph rewrites, in order; the graph is verified (``passes.verify``) after each.
GRAPH_PASSES: tuple[tuple[str, Callable[[Graph, _Job], Graph]], ...] = (
    ("balance_channels", _balance_channels),
    ("order_add_branches", _order_add_branches),
)


def _node(job: _Job, sp: LayerSpec):
    """The graph node of a layer (None for a concat's copy layer)."""
    return job.graph.node(sp.name) if not sp.name.count(".copy_") else None


def _rebalance(job: _Job, i: int, plan: LayerPlan) -> LayerPlan:
    """Once planned, a reorderable conv's block rows are reordered for the plan's chunks when the
    time model says faster (``compiler.rebalance``); its readers' input channels follow in the
    graph and in their specs, before they are planned. Not with ``balance=False``."""
    node = _node(job, plan.spec)
    if not job.balance or node is None or (readers := reorderable(job.graph, node)) is None:
        return plan
    got = rebalance(plan, job.hw, job.cache)
    if got is None:
        return plan
    plan, rows = got
    job.graph = reorder_channels(job.graph, node, rows, readers, job.orders)
    readers_of = {c.name for c in readers[0]}
    job.specs[i + 1:] = [dataclasses.replace(s, mask=s.mask[:, rows]) if s.name in readers_of else s
                         for s in job.specs[i + 1:]]
    return plan


# Rewrites of a layer's plan (and of the graph), in order, once the layer is planned; the graph is
# verified after each.
PLAN_PASSES: tuple[tuple[str, Callable[[_Job, int, LayerPlan], LayerPlan]], ...] = (
    ("rebalance", _rebalance),
)


def _plan_layers(job: _Job, forced: set[str]) -> list[LayerPlan]:
    """Every layer's plan in schedule order (``planning.plan_layer``, activations in DDR only where
    ``forced``), each followed by ``PLAN_PASSES``."""
    plans = []
    for i in range(len(job.specs)):
        sp = job.specs[i]
        in_ddr = tuple(b in forced for b, _, _ in job.ins[sp.name]["inputs"])
        plan = plan_layer(sp, job.hw, in_ddr, sp.out_tensor in forced, job.chooser, _node(job, sp), job.cache)
        for name, step in PLAN_PASSES:
            graph = job.graph
            plan = step(job, i, plan)
            if job.graph is not graph:
                verify(job.graph, after=f"{name} of {sp.name}")
        check_coverage(plan.spec, plan.part.cores)
        plans.append(plan)
    return plans


def _allocate(job: _Job, plans: list[LayerPlan], buffers: list[Buffer]) -> Allocation:
    """MemTile placement of every buffer, each layer's staging reserved (``compiler.memory``)."""
    alloc = allocate(buffers, [job.hw.memtile.bytes - p.staging_bytes for p in plans], job.hw)
    check_allocation(buffers, alloc)
    return alloc


def _replan(job: _Job, plans: list[LayerPlan], alloc: Allocation) -> list[LayerPlan]:
    """The plans timed again with the activation homes the allocation chose (spills stream from DDR)."""
    return [replan(p, job.hw, tuple(alloc.in_ddr(b) for b, _, _ in job.ins[p.spec.name]["inputs"]),
                   alloc.in_ddr(p.spec.out_tensor), job.cache) for p in plans]


def compile_graph(graph: Graph, hw: ArrayConfig | str, *, chooser: Chooser | None = None,
                  balance: bool = True, cache: CompileCache | None = None, act_compression: str = "auto") -> Program:
    """Compile a lowered (and ideally quantized) IR graph for array ``hw`` into a ``Program``.

    ``chooser(node, hw) -> SubVolume | None`` may impose a layer's per-core sub-volume (validated;
    ``CapacityError`` / ``ConfigError`` naming the layer if it does not fit). ``balance=True`` reorders
    the output channels of sparse convs read only by convs so that contiguous channel ranges keep
    equal blocks (``passes.balance``), and again once each such conv is planned, for the chunks of
    its plan (``rebalance``); the program's ``meta["channel_orders"]`` records the orders, the
    network's output is unchanged. An add of two convs' outputs runs inside the one that reads less
    input (``fusion.order_add_branches``), unless the array's rule profile (``hw.rules``) turns
    residual fusion off (``paper``): then every add is a layer of its own. ``cache``: what the
    compile memoizes (``compiler.cache``; a fresh one if None, so no compile depends on an earlier
    one). SDQ layers (``quantize(..., sdq=...)``) take the ``parts`` weight format
    (``compiler.formats``); a graph holding some is not channel-balanced.
    """
    t0 = time.perf_counter()
    job = _Job(graph, load_array(hw), chooser, balance, CompileCache() if cache is None else cache)
    for name, rewrite in GRAPH_PASSES:  # 1. graph rewrites
        job.graph = verify(rewrite(job.graph, job), after=name)
    job.specs, job.ins, rename = lower_layers(job.graph, _fuses_adds(job.hw))  # 2. layers and their buffers
    job.specs, formats = choose_weight_formats(job.graph, job.specs, job.hw, job.cache)  # block or masked
    buffers = _buffers(job.graph, job.specs, job.ins, rename)
    if compression_on(job.hw, act_compression):  # the planner prices transfers as they will travel
        job.specs = [dataclasses.replace(sp, act_zero_fracs=_zero_fracs(job.graph, sp, [b for b, _, _ in
                                                                                         job.ins[sp.name]["inputs"]]))
                     for sp in job.specs]
    plans = _plan_layers(job, {b.name for b in buffers if b.forced_ddr})  # 3. partition, PLAN_PASSES
    alloc = _allocate(job, plans, buffers)  # 4. memory
    plans = _replan(job, plans, alloc)  # 5. the time model with the final activation homes
    prog = _assemble(job.graph, job.hw, plans, job.ins, buffers, alloc, t0, job.cache)  # 6. pack, code
    prog.meta["channel_orders"] = {k: v.tolist() for k, v in job.orders.items()}
    prog.meta["weight_formats"] = formats
    return decide_compression(prog, act_compression)


def _assemble(graph, hw, plans: list[LayerPlan], ins, buffers, alloc, t0, cache: CompileCache) -> Program:
    ddr = DdrLayout(hw)
    image = bytearray()
    records: list[LayerRecord] = []
    instrs: list = []
    per_iter: list[np.ndarray] = []
    offset, quantized = 0, True
    wbase = 0
    spans_all = []
    for plan in plans:
        rows: list[ChunkRow] = []
        spans: dict[tuple[int, int], tuple[int, int]] = {}
        if plan.spec.kind == "conv" and plan.spec.weight_format == PARTS:  # SDQ: int8 part + int4 part
            bias = _bias(graph, plan.spec)
            rows, spans = pack_layer(plan, np.asarray(graph.param(plan.spec.name, "sdq_sparse")), bias, image,
                                     wbase, np.asarray(graph.param(plan.spec.name, "sdq_dense")), cache)
            _check_packed(plan, rows)
        elif plan.spec.kind == "conv":
            w8, q = int8_weights(np.asarray(graph.param(plan.spec.name, "weight")), cache)
            quantized &= q
            bias = _bias(graph, plan.spec)
            rows, spans = pack_layer(plan, w8, bias, image, wbase, cache=cache)
            _check_packed(plan, rows)
        elif plan.spec.kind == "lut":
            table = _table(graph, plan.spec)
            quantized &= table is not None
            rows, spans = pack_table_layer(plan, np.zeros(LUT_TABLE_BYTES, np.int8) if table is None else table,
                                           image, wbase)
        spans_all.append((rows, spans))
    ddr.add("weights", len(image))
    for b in buffers:
        if alloc.in_ddr(b.name):
            ddr.add(b.name, b.nbytes)
    for li, (plan, (rows, spans)) in enumerate(zip(plans, spans_all, strict=True)):
        sp = plan.spec
        in_bufs = ins[sp.name]["inputs"]
        code, offset = emit_layer(li, plan, spans, _where(alloc, ddr, in_bufs[0][0]),
                                  _where(alloc, ddr, sp.out_tensor), per_iter, offset, rows, cache)
        instrs += code
        records.append(_record(graph, plan, in_bufs, rows))
    instrs, prefetched = prefetch_weights(instrs, per_iter, alloc, hw)  # 7. cross-layer weight prefetch
    est = network_seconds(plans, {int(k) for k in prefetched}, hw)
    meta = {"weight_prefetch": prefetched, "compile_s": time.perf_counter() - t0, "estimate_s": est,
            # the graph input's power-of-two exponent: run the program on a real-valued input
            # without the graph (x_int8 = quantize_real(x, input_scale_exp)); None if float graph
            "input_scale_exp": graph.inputs[0].out.scale_exp,
            "memtile_peak": list(alloc.peak), "memtile_capacity": list(alloc.capacity),
            "spilled": sorted(b.name for b in buffers if alloc.in_ddr(b.name) and not b.forced_ddr)}
    bufs = {b.name: {"memory": alloc.placements[b.name].memory,
                     "offset": alloc.placements[b.name].offset if not alloc.in_ddr(b.name) else ddr.regions[b.name][0],
                     "part_bytes": alloc.placements[b.name].part_bytes, "nbytes": b.nbytes,
                     "shape": list(chw(graph.node(b.name))), "live": [b.start, b.end],
                     "graph_io": b.forced_ddr} for b in buffers}
    return Program(hw, graph.name, quantized, tuple(records), tuple(instrs),
                   np.concatenate(per_iter) if per_iter else np.zeros(0),
                   np.frombuffer(bytes(image), np.uint8), bufs,
                   {k: list(v) for k, v in ddr.regions.items()}, _quant_params(graph), meta)


def _bias(graph: Graph, sp: LayerSpec) -> np.ndarray:
    key = f"{sp.name}.bias"
    if key in graph.params:
        b = np.asarray(graph.params[key])
        return b.astype(np.int32) if b.dtype.kind in "iu" else np.rint(b).astype(np.int32)
    return np.zeros(sp.co, np.int32)


def _table(graph: Graph, sp: LayerSpec) -> np.ndarray | None:
    """A lut layer's int8 table (``quant.lut``); None in a float graph (sized, not executable)."""
    t = graph.params.get(f"{sp.name}.table")
    return None if t is None else np.asarray(t)


def _check_packed(plan: LayerPlan, rows: list[ChunkRow]) -> None:
    """The packed chunk sizes must be the ones the time model charged."""
    widx = plan.widx
    assert widx is not None
    if not rows:
        return
    oc0, oc1, cb0, cb1, bias = (np.array(v) for v in zip(*((r.oc0, r.oc1, r.cb0, r.cb1, r.with_bias)
                                                             for r in rows), strict=True))
    want = widx.chunk_bytes_many(oc0, oc1, cb0, cb1, bias)  # every chunk at once (VGG16: ~45 000)
    for r, w in zip(rows, want.tolist(), strict=True):
        if w != r.nbytes:
            raise AssertionError(f"{plan.spec.name}: chunk {r.key} packed {r.nbytes} B, modelled {w} B")


def _record(graph: Graph, plan: LayerPlan, in_bufs, rows: list[ChunkRow]) -> LayerRecord:
    sp, part = plan.spec, plan.part
    packed = sum(r.nbytes for r in rows)
    bias = sum(4 * (r.oc1 - r.oc0) for r in rows if r.with_bias)
    return LayerRecord(
        sp.name, LayerGeometry.of(sp), tuple(TensorSlice(b, t, o) for b, t, o in in_bufs),
        TensorSlice(sp.out_tensor, sp.out_c_total, sp.out_c_offset, sp.out_c_stride), part.grid, part.sub,
        Loops(part.n_s, part.n_k, part.n_q, part.tiles_per_group, part.n_tiles, sp.slides),
        part.cores, tuple(rows), _attrs(graph, sp), dense_weight_bytes(sp) if sp.kind == "conv" else 0,
        packed - bias, bias, sp.kept_macs, sp.macs, sp.fused_add, sp.residual,
        *_zero_fracs(graph, sp, [b for b, _, _ in in_bufs]))


def _zero_frac(graph: Graph, name: str) -> float:
    """The calibrated zero fraction (``quant.zero_fractions``) of node ``name``'s output; 0 for a
    graph not quantized or a name that is no node."""
    try:
        v = graph.node(name).attrs.get("zero_frac", 0.0)
    except KeyError:
        return 0.0
    return float(v) if isinstance(v, (int, float)) else 0.0


def _zero_fracs(graph: Graph, sp: LayerSpec, in_bufs: list[str]) -> tuple[float, float]:
    """(zero fraction of the window inputs — their mean —, of the output) of a layer. The inputs
    are the node's producers (a buffer may be named after another node when an add writes in
    place); a concat copy reads its buffer's node."""
    try:
        node = graph.node(sp.name) if sp.kind != "copy" else None
    except KeyError:
        node = None
    if node is not None and node.inputs:
        window = list(node.inputs[:1]) if sp.kind == "conv" else list(node.inputs)
    else:
        window = in_bufs[:len(in_bufs) - bool(sp.fused_add)] or in_bufs
    z_in = sum(_zero_frac(graph, b) for b in window) / len(window) if window else 0.0
    out = sp.fused_add or (sp.name if sp.kind != "copy" else sp.out_tensor)
    return round(z_in, 4), _zero_frac(graph, out)


def _attrs(graph: Graph, sp: LayerSpec) -> dict[str, Any]:
    """The node's JSON attributes and output exponent (a concat copy's shift and clamp; a fused
    add's attributes under ``add``)."""
    node = graph.node(sp.name) if sp.kind != "copy" else None
    attrs = {k: v for k, v in (node.attrs.items() if node else []) if _jsonable(v)}
    if node is not None:
        attrs["out_scale_exp"] = node.out.scale_exp
        if node.attrs.get("sdq") is not None:  # the parts' left shifts onto the accumulator's exponent
            sdq, e_w = node.attrs["sdq"], int(node.attrs["weight_exp"])
            attrs["parts_shifts"] = [int(sdq["sparse_exp"]) - e_w, int(sdq["dense_exp"]) - e_w]
    else:  # a concat copy: saturate(shift_round(x, shift)) into the concat's exponent
        attrs.update(shift=sp.copy_shift, clamp=[INT8_MIN, INT8_MAX],
                     out_scale_exp=graph.node(sp.out_tensor).out.scale_exp)
    if sp.fused_add:
        add = graph.node(sp.fused_add)
        attrs["add"] = {k: v for k, v in add.attrs.items() if _jsonable(v)}
        attrs["add"]["out_scale_exp"] = add.out.scale_exp
        attrs["add"]["inputs"] = list(add.inputs)
    return json.loads(json.dumps(attrs))  # as a loaded program holds them (lists, not tuples)


def _jsonable(v: Any) -> bool:
    return isinstance(v, (int, float, str, bool, type(None))) or (
        isinstance(v, (tuple, list)) and all(_jsonable(x) for x in v))


def _quant_params(graph: Graph) -> dict[str, np.ndarray]:
    """Per-channel quantization arrays the simulator needs (everything but weight/bias/mask and
    batch-norm statistics)."""
    skip = ("weight", "bias", "mask", "running_mean", "running_var", "table",  # a table travels as its chunk
            "sdq_sparse", "sdq_dense", "sdq_mask")  # SDQ parts travel as their chunks
    return {k: np.asarray(v) for k, v in graph.params.items() if k.rsplit(".", 1)[-1] not in skip}

