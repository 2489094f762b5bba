"""Run one fuzz ``Case`` through the front door, the compiler, the simulator and the time model, and
judge it against both oracles (tests/test_fuzz.py, benchmarks/fuzz_graphs.py).

Outcomes: ``pass``; ``refused`` — a ``TilesparseError`` with a one-line message while building or
compiling (an op or size outside what tilesparse supports: allowed, counted by kind); ``fail`` —
anything else: another exception anywhere, any exception once a program exists (a compiled program
must simulate, save, load and estimate), a layer that is not bit-exact with the integer reference,
an accounting mismatch, an output far from the PyTorch module's, or an estimate below its bound.
"""

from __future__ import annotations

import copy
import inspect
import math
import re
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fuzz_nets import Case, build_module

from tilesparse.errors import TilesparseError

MIN_COSINE = 0.9  # dequantized program output vs the float module (int8, power-of-two scales)
MIN_COSINE_SIZE = 4  # outputs with fewer values report no cosine (one value's is just its sign)
BOUND_SLACK = 1e-9  # relative: an estimate may equal its lower bound, not undercut it


@dataclass
class Outcome:
    status: str  # "pass" | "refused" | "fail"
    kind: str = ""  # refusal / failure class: stage, exception type, where, message shape
    detail: str = ""  # the full message, or the first mismatch
    seconds: float = 0.0
    cosine: float | None = None
    features: dict[str, int] = field(default_factory=dict)


class Failure(Exception):
    """A check that does not hold (``kind`` groups equal bugs, ``detail`` says what differed)."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind, self.detail = kind, detail


def shape_of(msg: str) -> str:
    """A message with its particulars (names, numbers) blanked, to group equal causes."""
    s = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", msg.splitlines()[0] if msg else "")
    s = re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "N", s)
    return s[:160]


def where(exc: BaseException) -> str:
    """``file:function`` of the innermost tilesparse frame of ``exc``'s traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "tilesparse" in f.filename]
    f = frames[-1] if frames else traceback.extract_tb(exc.__traceback__)[-1]
    path = f.filename.split("tilesparse/")[-1] if "tilesparse/" in f.filename else Path(f.filename).name
    return f"{path}:{f.name}"


def run_case(case: Case, *, estimate: bool = True) -> Outcome:
    """Build, compile, simulate (from a saved and reloaded program), verify, estimate one case."""
    t0 = time.perf_counter()
    out = _judge(case, estimate)
    out.seconds, out.features = time.perf_counter() - t0, dict(case.features)
    return out


def _judge(case: Case, estimate: bool) -> Outcome:
    stage = "build"
    try:
        module = build_module(case)
        built, prog = _compile(case, module)
        stage = "check"
        cos = _check(case, module, built, prog, estimate)
        return Outcome("pass", cosine=cos)
    except Failure as f:
        return Outcome("fail", f.kind, f.detail)
    except TilesparseError as e:
        msg = str(e)
        if stage == "build" and "\n" not in msg:
            return Outcome("refused", f"{type(e).__name__}: {shape_of(msg)}", msg)
        why = "multi-line refusal" if stage == "build" else "error on a compiled program"
        return Outcome("fail", f"{why}: {type(e).__name__} at {where(e)}: {shape_of(msg)}", msg)
    except Exception as e:  # noqa: BLE001 - every other exception is a finding
        return Outcome("fail", f"{stage}: {type(e).__name__} at {where(e)}: {shape_of(str(e))}",
                       f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-6)}")


def _compile(case: Case, module):
    from tilesparse.build import build_graph_from
    from tilesparse.compiler.pipeline import compile_graph

    built = build_graph_from(module, sparsity=case.sparsity, block=case.block, input_shape=case.input_shape,
                             seed=case.seed % 1000)
    return built, compile_graph(built.graph, case.hw(), balance=case.balance)


def _check(case: Case, module, built, prog, estimate: bool) -> float | None:
    from tilesparse.program import Program
    from tilesparse.sim import verify

    with tempfile.TemporaryDirectory() as tmp:  # what a user runs is a program file
        prog = Program.load(prog.save(Path(tmp) / "fuzz.tsp"))
    x = np.random.default_rng(case.seed).standard_normal(case.input_shape).astype(np.float32)
    oracle = "module" in inspect.signature(verify).parameters and getattr(built, "module", None) is not None
    rep = verify(prog, built.graph, x, progress=False, **({"module": built.module} if oracle else {}))
    bad = rep.first_mismatch
    if bad is not None:
        raise Failure(f"not bit-exact: layer kind {_layer_kind(prog, bad.layer)}", rep.summary())
    if not rep.sim.accounting_ok:
        notes = [f"{a.name}: {a.notes}" for a in rep.sim.accounts if not a.ok]
        raise Failure("accounting mismatch", "; ".join(map(str, notes))[:2000])
    fc = getattr(rep, "float_check", None)
    if fc is not None:  # PyTorch as the second oracle, in verify
        if not fc.ok:
            where = "output" if not fc.output.ok else f"layer kind {_layer_kind(prog, fc.first_failure.layer)}"
            raise Failure(f"float oracle: {where} outside the tolerance of PyTorch", fc.summary())
        cos: float | None = fc.cosine
    else:
        cos = _float_check(case, module, built, rep, x)
    if estimate:
        _estimate(prog)
    return cos


def _layer_kind(prog, name: str) -> str:
    return next((r.kind for r in prog.layers if r.name == name), "?")


# -- PyTorch as the float oracle: INTERIM ----------------------------------------------------------
# Used only while ``verify`` has no ``module=`` (no ``rep.float_check``, the second oracle in
# tilesparse.sim); remove once it has. Two checks against the pruned module run in float:
# 1. capture: the float graph the front door builds (quantized=False) computes the module's function
#    (to float rounding): a capture that changes the function fails here, free of quantization noise;
# 2. the program's output is the integer reference's (dequantized, bit for bit), and on a calibration
#    input (where nothing saturates) near the module's: cosine >= MIN_COSINE, or an error within a
#    first-order bound propagated up the output's chain of single-input layers.


def _float_check(case: Case, module, built, rep, x: np.ndarray) -> float | None:
    from tilesparse.build import N_CALIB, build_graph_from
    from tilesparse.frontend import random_calibration
    from tilesparse.ir.interpret import run_float
    from tilesparse.patterns import prune_oneshot
    from tilesparse.quant import IntegerReference
    from tilesparse.quant import rounding as R

    pruned = copy.deepcopy(module)
    if built.selection == "l2-oneshot":
        prune_oneshot(pruned, built.sparsity, built.block)
    with torch.no_grad():
        want = pruned(torch.from_numpy(x.copy())).double().numpy().ravel()
    fg = build_graph_from(module, sparsity=case.sparsity, block=case.block, input_shape=case.input_shape,
                          seed=case.seed % 1000, quantized=False).graph
    vals = {k: np.asarray(v, np.float64) for k, v in run_float(fg, x).items()}
    out = fg.outputs[0]
    fl = vals[out.name].ravel()
    scale = max(float(np.abs(want).max()), 1e-6)
    if fl.shape != want.shape or float(np.abs(fl - want).max()) > 1e-4 * scale + 1e-6:
        raise Failure("capture: float graph differs from PyTorch",
                      f"max error {float(np.abs(fl - want).max()) if fl.shape == want.shape else fl.shape} "
                      f"(output range {scale:.4g})")
    node = built.graph.outputs[0]
    (q,) = rep.sim.final.values() if len(rep.sim.final) == 1 else (rep.sim.final[node.inputs[0]],)
    got = R.dequantize(np.asarray(q), int(node.out.scale_exp)).ravel()
    ref = IntegerReference(built.graph)
    if got.shape != want.shape or not np.array_equal(got, ref.dequantized_output(x).ravel()):
        raise Failure("program output differs from the reference output",
                      f"program output {got.shape}, module {want.shape}, or other values than the reference's")
    # the quantization on a calibration input (nothing saturates by construction: the program's
    # bits are the reference's, checked above on x, which may saturate)
    xc = random_calibration(case.input_shape, N_CALIB, built.seed)[0]
    with torch.no_grad():
        want = pruned(torch.from_numpy(xc.copy())).double().numpy().ravel()
    got = ref.dequantized_output(xc).ravel()
    vals = {k: np.asarray(v, np.float64) for k, v in run_float(fg, xc).items()}
    lsb = 2.0 ** int(node.out.scale_exp)
    cos = _agree(got, want, 4 * lsb + _tail_noise(fg, vals, out.inputs[0]))
    return cos if got.size >= MIN_COSINE_SIZE else None


def _tail_noise(fg, vals: dict[str, np.ndarray], name: str) -> float:
    """A first-order bound of the quantization error at the output, propagated up the chain of
    single-input nodes ending at the output: two steps where the chain starts (a multi-input node
    or the input), then each conv multiplies it by twice its largest weight row norm (independent
    rounding errors add like random signs, not all alike) and adds its weight rounding (½ weight
    step × √fan-in × largest input) and half an output step; other nodes add half a step.

    Steps are the ideal ones, from the float ranges (so a wrongly coarse exponent does not excuse
    itself), except where the design keeps an input's exponent (pools, flatten, relu; a concat
    takes its coarsest operand's: docs/quantization.md; a global average pool of a wide-range
    tensor is coarse by design)."""
    from tilesparse.ir.graph import Op
    from tilesparse.quant import rounding as R

    def step(n) -> float:
        while n.op in (Op.MAXPOOL, Op.AVGPOOL, Op.ADAPTIVE_AVGPOOL, Op.FLATTEN, Op.RELU, Op.RELU6):
            n = fg.node(n.inputs[0])
        if n.op is Op.CONCAT:  # the coarsest operand's step (operands all zero on the input aside)
            live = [fg.node(i) for i in n.inputs if np.abs(vals[i]).max() > 0]
            return max((step(o) for o in live), default=1.0)
        return 2.0 ** R.pow2_exponent(float(np.abs(vals[n.name]).max()))

    chain = []
    n = fg.node(name)
    while n.op is not Op.INPUT and len(n.inputs) == 1:
        chain.append(n)
        n = fg.node(n.inputs[0])
    tol = 2 * step(n)
    for m in reversed(chain):
        if m.op is Op.CONV2D:
            w = np.abs(fg.param(m.name, "weight").astype(np.float64))
            w = w.reshape(w.shape[0], -1)
            x_max = float(np.abs(vals[m.inputs[0]]).max())
            w_step = 2.0 ** R.pow2_exponent(float(w.max(initial=0.0)))
            row = float(np.sqrt((w * w).sum(axis=1)).max())
            tol = 2 * row * tol + 0.5 * w_step * math.sqrt(w.shape[1]) * x_max + 0.5 * step(m)
        else:
            tol += 0.5 * step(m)
    return tol


def _agree(got: np.ndarray, want: np.ndarray, tol: float) -> float:
    """Cosine of ``got`` and ``want``; a failure below MIN_COSINE unless within ``tol`` everywhere."""
    err = float(np.abs(got - want).max())
    norm = float(np.linalg.norm(got) * np.linalg.norm(want))
    cos = float(got @ want / norm) if norm > 0 else float(np.array_equal(got, want))
    if cos < MIN_COSINE and err > tol:
        raise Failure("float oracle: output differs from PyTorch",
                      f"cosine {cos:.3f}, max error {err:.4g} > tolerance {tol:.4g} (range "
                      f"{float(np.abs(want).max()):.4g})")
    return cos


def _estimate(prog) -> None:
    """What ``tilesparse estimate`` and ``compile --listing`` print and write, on this program."""
    from tilesparse.estimate.report import layer_rows, summarize
    from tilesparse.estimate.timeline import write_timeline
    from tilesparse.estimate.timemodel import estimate_program

    pt = estimate_program(prog)
    s = summarize(prog, pt)
    rows = layer_rows(prog, pt)
    prog.listing()
    with tempfile.TemporaryDirectory() as tmp:
        write_timeline(prog, pt, Path(tmp) / "timeline.html")
    if not (math.isfinite(s.estimate_ms) and s.estimate_ms > 0 and math.isfinite(s.bound_ms)):
        raise Failure("estimate not finite", f"estimate {s.estimate_ms} ms, bound {s.bound_ms} ms")
    low = [r["layer"] for r in rows if r["time_us"] < r["bound_us"] * (1 - BOUND_SLACK)]
    if low:
        raise Failure("estimate below its lower bound", f"layers {low}")
    if s.estimate_ms < s.net_bound_ms * (1 - BOUND_SLACK):
        raise Failure("estimate below the network bound", f"{s.estimate_ms} < {s.net_bound_ms} ms ({s.net_limiter})")
