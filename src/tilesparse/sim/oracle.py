"""``simulate`` a program and ``verify`` it bit for bit against the integer reference — and, given
the module, in float against PyTorch (``tilesparse.sim.torch_oracle``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tilesparse.sim.accounting import LayerAccount
from tilesparse.sim.executor import Executor
from tilesparse.sim.memory import SimulationError

__all__ = ["LayerCheck", "Report", "SimResult", "compare", "expected_outputs", "program_input", "simulate", "verify"]


@dataclass
class SimResult:
    """What a simulation produced: each layer's output slice (C, H, W int8, right after the layer
    ran), the graph output buffer(s), counted-vs-charged accounting per layer, bytes per memory
    level, and the wall time."""

    outputs: dict[str, np.ndarray]
    final: dict[str, np.ndarray]
    accounts: list[LayerAccount]
    by_level: dict[str, int]
    seconds: float = 0.0
    # per zero-compressed transfer: (layer, op, raw B, compressed B carried, B the time model expected)
    compression: list[tuple[str, str, int, int, float]] = field(default_factory=list)

    @property
    def accounting_ok(self) -> bool:
        return all(a.ok for a in self.accounts)


@dataclass(frozen=True)
class LayerCheck:
    layer: str
    reference: str  # the reference tensor compared (node name, channel slice)
    ok: bool
    n_diff: int = 0
    first: tuple[int, ...] | None = None  # (c, h, w) of the first differing element
    got: int | None = None
    want: int | None = None


@dataclass
class Report:
    """Result of ``verify``: per-layer agreement with the integer reference, the simulation, and
    (given the module) the float comparison with PyTorch (``torch_oracle.FloatCheck``)."""

    checks: list[LayerCheck]
    sim: SimResult
    reference_s: float = 0.0
    float_check: Any = None  # tilesparse.sim.torch_oracle.FloatCheck, or None without a module

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks) and (self.float_check is None or self.float_check.ok)

    @property
    def first_mismatch(self) -> LayerCheck | None:
        return next((c for c in self.checks if not c.ok), None)

    def summary(self) -> str:
        bits = self.bit_summary()
        return bits if self.float_check is None else f"{bits}; {self.float_check.summary()}"

    def bit_summary(self) -> str:
        """The integer-reference half of ``summary``."""
        bad = self.first_mismatch
        if bad is None:
            return f"all {len(self.checks)} layers bit-exact"
        return (f"first mismatch in layer {bad.layer!r} (reference {bad.reference}) at (c, h, w) = {bad.first}: "
                f"simulated {bad.got}, reference {bad.want}; {bad.n_diff} elements differ")


def program_input(program, x: np.ndarray) -> np.ndarray:
    """The int8 input the program runs on: ``x`` itself if int8, else the real-valued ``x``
    quantized with the program's ``meta["input_scale_exp"]`` (as ``quant.quantize_input`` does
    with the graph)."""
    from tilesparse.quant import rounding as R

    x = np.asarray(x)
    if x.dtype == np.int8:
        return x
    e = program.meta.get("input_scale_exp")
    if x.dtype.kind not in "fiu" or e is None:
        raise SimulationError(f"program for {program.graph}: a {x.dtype} input needs the input scale "
                              f"exponent (meta['input_scale_exp'], absent: old or float program); give int8")
    return R.quantize_real(x, int(e)).astype(np.int8)


def simulate(program, x: np.ndarray, *, check: bool = True, progress: bool = True) -> SimResult:
    """Run ``program`` on input ``x`` (C, H, W or 1×C×H×W): int8, or real-valued and quantized
    with the program's input exponent (``program_input``).

    ``check`` first runs the ordering check (``tilesparse.sim.hazards``): a hazard raises
    ``HazardError`` naming both instructions. Memory overflows and bad addresses raise
    ``SimulationError``. Example::

        >>> res = simulate(prog, np.zeros((3, 32, 32), np.int8), progress=False)  # doctest: +SKIP
        >>> res.accounting_ok                                                       # doctest: +SKIP
        True
    """
    t0 = time.perf_counter()
    if check:
        from tilesparse.sim.hazards import check_ordering

        check_ordering(program)
    ex = Executor(program)
    ex.load_input(program_input(program, x))
    _run_layers(ex, progress)
    final = {n: ex.bufs.snapshot(n, 0, b["shape"][0]) for n, b in program.buffers.items()
             if b.get("graph_io") and n in {r.output.buffer for r in program.layers}}
    return SimResult(ex.outputs, final, ex.acct.compare(), ex.acct.by_level(),
                     time.perf_counter() - t0, ex.acct.compression())


def _run_layers(ex: Executor, progress: bool) -> None:
    if not progress:
        for li in range(len(ex.views)):
            ex.run_layer(li)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    cols = (TextColumn("simulating {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, transient=True) as bar:
        task = bar.add_task(ex.p.graph, total=len(ex.views))
        for li, v in enumerate(ex.views):
            bar.update(task, description=f"{ex.p.graph}: {v.name}")
            ex.run_layer(li)
            bar.advance(task)


def expected_outputs(program, ref: dict[str, np.ndarray], graph=None) -> dict[str, tuple[str, np.ndarray]]:
    """Per layer: what its output slice must hold, from the reference's node tensors. A layer
    writing into a concat's buffer (a concat operand or copy) must leave there the concat's channel
    slice (which includes the concat's requantization of that operand); otherwise the node itself
    (or its fused add), in the channel order the compiler gave it (``meta["channel_orders"]``)."""
    out = {}
    orders = program.meta.get("channel_orders", {})
    for rec in program.layers:
        buf, o, co, st = rec.output.buffer, rec.output.c_offset, rec.geometry.co, rec.output.c_stride
        node = rec.fused_add or rec.name
        # an add that overwrites its operand's buffer (reuse_input) holds the whole sum there, even
        # when that operand is a concat; anything else writing a concat's buffer fills a slice
        into_concat = rec.kind == "copy" or (buf != rec.name and _is_concat(graph, buf)
                                             and not _reuses_operand(graph, node))
        name, sl = (buf, (o, o + (co - 1) * st + 1)) if into_concat else (node, None)
        if name not in ref:
            raise SimulationError(f"layer {rec.name!r}: the reference has no tensor {name!r}; "
                                  f"is this the graph the program was compiled from?")
        shape = tuple(program.buffers[buf]["shape"])
        t = np.asarray(ref[name]).reshape(-1, *shape[1:])
        if name in orders:  # the compiler reordered this tensor's channels (passes.balance)
            t = t[np.asarray(orders[name])]
        if sl is not None:
            t = t[sl[0]:sl[1]:st]
        label = name if sl is None else f"{name}[{sl[0]}:{sl[1]}{f':{st}' if st > 1 else ''}]"
        out[rec.name] = (label, t.astype(np.int8))
    return out


def _reuses_operand(graph, name: str) -> bool:
    try:
        return graph is not None and graph.node(name).attrs.get("reuse_input") is not None
    except KeyError:
        return False


def _is_concat(graph, name: str) -> bool:
    if graph is None:
        return False
    try:
        return graph.node(name).op.value == "concat"
    except (KeyError, ValueError):
        return False


def compare(sim: SimResult, want: dict[str, tuple[str, np.ndarray]]) -> list[LayerCheck]:
    """Bit-for-bit comparison of every layer's output, in schedule order."""
    checks = []
    for layer, got in sim.outputs.items():
        label, ref = want[layer]
        if got.shape != ref.shape:
            checks.append(LayerCheck(layer, label, False, got.size, None))
            continue
        diff = np.argwhere(got != ref)
        if not len(diff):
            checks.append(LayerCheck(layer, label, True))
            continue
        c = tuple(int(v) for v in diff[0])
        checks.append(LayerCheck(layer, label, False, len(diff), c, int(got[c]), int(ref[c])))
    return checks


def verify(program, graph, x, *, module=None, check: bool = True, progress: bool = True,
           is_int8: bool = False) -> Report:
    """Simulate ``program`` and compare every layer's output with
    ``tilesparse.quant.IntegerReference(graph)`` on the same input (real-valued ``x`` is quantized
    with the graph's input exponent; pass ``is_int8`` for an int8 tensor).

    With ``module`` (the ``nn.Module`` the graph was captured from, e.g. ``Built.module``) the
    simulated output and every layer that stands for a module value are also compared with the
    module run in float on the real input (an int8 ``x`` is dequantized), within a tolerance
    derived from the quantization steps: ``Report.float_check``, and ``Report.ok`` is False when
    it fails. Example::

        >>> built = build_graph_from("digits_cnn", sparsity=0.5)                        # doctest: +SKIP
        >>> rep = verify(compile_graph(built.graph, "2x2"), built.graph, x, module=built.module)  # doctest: +SKIP
        >>> rep.float_check.cosine > 0.99, rep.float_check.max_err <= rep.float_check.tolerance   # doctest: +SKIP
        (True, True)
    """
    from tilesparse.quant import IntegerReference, quantize_input

    q = np.asarray(x, np.int8) if is_int8 else quantize_input(graph, x).astype(np.int8)
    t0 = time.perf_counter()
    ref = IntegerReference(graph).run(q.astype(np.int64), is_int8=True, keep_accumulators=module is not None)
    t_ref = time.perf_counter() - t0
    sim = simulate(program, q.reshape(q.shape[-3:]), check=check, progress=progress)
    rep = Report(compare(sim, expected_outputs(program, ref, graph)), sim, t_ref)
    if module is not None and not any(n.attrs.get("sdq") is not None for n in graph.nodes):
        # (the float check's error model reads one int8 weight per conv; SDQ layers hold two parts
        # and are checked bit-exact against the integer reference only)
        from tilesparse.sim.torch_oracle import float_check, simulated_output

        real = _real_input(graph, x, q, is_int8)
        rep.float_check = float_check(graph, module, real, ref, simulated_output(program, graph, sim.final))
    return rep


def _real_input(graph, x, q: np.ndarray, is_int8: bool) -> np.ndarray:
    """What the float module reads: ``x`` itself, or an int8 ``x`` at the graph's input exponent."""
    from tilesparse.quant import rounding as R

    return R.dequantize(q, graph.inputs[0].out.scale_exp) if is_int8 else np.asarray(x, np.float32)
