"""The second oracle: the original ``nn.Module``, run in float, against the dequantized int8 values.

The integer reference is built from the captured graph, so a capture that changes the function
(an in-place op read again, a concat along the wrong axis) is bit-exact against it. Here the
module itself is run on the same real-valued input: its output against the simulated output, and
every graph node that stands for an fx node of the module (``node_map``) against that node's value.
The tolerance comes from the quantization steps (``tilesparse.quant.error_model``;
docs/simulator.md, "The second oracle"):

* max error ≤ z · max(envelope), z = sqrt(2 ln(n / FALSE_ALARM)) for n elements — the largest of
  n Gaussian errors of that scale exceeds it with probability below FALSE_ALARM (union bound);
* RMS error ≤ k · the predicted RMS (mean² + variance, averaged), k = the two-sided Gaussian
  quantile of FALSE_ALARM (4.9): exceeded with probability below FALSE_ALARM even if the
  tensor's errors all moved together as one Gaussian, far less if they are independent.

Both plus FLOAT32_SLACK · max|y| for the module's own float32 arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import fx

from tilesparse.ir.graph import Graph, Op
from tilesparse.quant import rounding as R
from tilesparse.quant.error_model import Predicted, predict_errors

__all__ = ["FloatCheck", "FloatLayer", "float_check", "node_map", "simulated_output"]

FALSE_ALARM = 1e-6  # probability that a bound fails a correct tensor, under the error model
# 4.89: P(|Z| > k) = FALSE_ALARM for one Gaussian
RMS_FACTOR = float(torch.special.ndtri(torch.tensor(1 - FALSE_ALARM / 2, dtype=torch.float64)))
FLOAT32_SLACK = 2.0**-12  # the module's float32 arithmetic: fan-in 4096 x unit roundoff 2^-24, of max|y|


@dataclass(frozen=True)
class FloatLayer:
    """One tensor compared: the graph node, the module's fx node, cosine, max and RMS error
    (real units) and their tolerances."""

    layer: str
    torch_node: str
    cosine: float
    max_err: float
    tolerance: float
    rms_err: float
    rms_tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_err <= self.tolerance and self.rms_err <= self.rms_tolerance

    def describe(self) -> str:
        cmp_max, cmp_rms = ("≤" if self.max_err <= self.tolerance else ">"), ("≤" if self.rms_err <=
                                                                                self.rms_tolerance else ">")
        return (f"cosine {self.cosine:.5f}, max err {self.max_err:.3g} {cmp_max} tolerance {self.tolerance:.3g}, "
                f"rms {self.rms_err:.3g} {cmp_rms} {self.rms_tolerance:.3g}")


@dataclass
class FloatCheck:
    """Result of the float comparison: the final output (``output``) and every mapped layer."""

    output: FloatLayer
    layers: list[FloatLayer]
    not_compared: list[str] = field(default_factory=list)  # graph nodes no module value stands for

    @property
    def ok(self) -> bool:
        return self.output.ok and all(c.ok for c in self.layers)

    @property
    def cosine(self) -> float:
        return self.output.cosine

    @property
    def max_err(self) -> float:
        return self.output.max_err

    @property
    def tolerance(self) -> float:
        return self.output.tolerance

    @property
    def first_failure(self) -> FloatLayer | None:
        return next((c for c in self.layers if not c.ok), None)

    def summary(self) -> str:
        head = (f"vs PyTorch in float: output {'within' if self.output.ok else 'OUTSIDE'} tolerance "
                f"({self.output.describe()}); {sum(c.ok for c in self.layers)} of {len(self.layers)} layers within")
        bad = self.first_failure
        return head if bad is None else f"{head}; first outside: {bad.layer!r} ({bad.describe()})"


def float_check(graph: Graph, module: Any, x: np.ndarray, ref: Mapping[str, np.ndarray],
                final: np.ndarray | None = None) -> FloatCheck:
    """Compare ``module`` in float with the quantized ``graph`` on real input ``x``.

    ``ref``: ``IntegerReference(graph).run(..., keep_accumulators=True)`` on x quantized; ``final``:
    the simulated output (dequantized, the output node's shape), else the reference's is used."""
    from tilesparse.ir.capture import trace

    shape = graph.inputs[0].out.shape
    xr = np.asarray(x, np.float32).reshape(shape)
    gm = trace(module, shape, graph.name)
    mapping = node_map(gm, graph)
    values = _record(gm, xr, set(mapping.values()))
    with torch.no_grad():  # the module itself, not our trace of it, for the output
        out = module(torch.from_numpy(xr.copy())).detach().to(torch.float64).numpy()
    layers, output = [], None
    for n, p in predict_errors(graph, xr, ref):
        if n.op is Op.OUTPUT:
            got = p.value if final is None else np.asarray(final, np.float64)
            output = _compare("output", "output", got, out, p)
        elif n.name in mapping:
            layers.append(_compare(n.name, mapping[n.name], p.value, values[mapping[n.name]], p))
    assert output is not None  # a graph has an output node (passes.verify)
    skipped = [n.name for n in graph if n.op not in (Op.INPUT, Op.OUTPUT) and n.name not in mapping]
    return FloatCheck(output, layers, skipped)


def node_map(gm: fx.GraphModule, graph: Graph) -> dict[str, str]:
    """Graph node → the fx node of ``gm`` (``ir.capture.trace``) whose value it holds.

    Capture names IR nodes after fx nodes; the passes fold a batch-norm, an activation or a
    subsampling pool into its producer, which then holds the value of the last of them. So from
    the fx node of the same name, follow the single reader while it is no graph node itself, reads
    only this value and has as many elements (a pool fused as a conv's stride has; a pool whose
    readers took its stride has not) and is no rank-5 view (the start of a channel shuffle)."""
    names = {n.name for n in graph}
    fx_nodes = {n.name: n for n in gm.graph.nodes}
    out = {}
    for n in graph:
        if n.op in (Op.INPUT, Op.OUTPUT) or n.name not in fx_nodes:
            continue
        cur = fx_nodes[n.name]
        while True:
            users = [u for u in cur.users if _numel(u) is not None]
            if len(users) != 1 or users[0].name in names or _numel(users[0]) != n.out.numel:
                break
            if len(users[0].meta["tensor_meta"].shape) > 4:  # a channel shuffle's rank-5 view: not this value
                break
            if [a for a in users[0].all_input_nodes if _numel(a) is not None] != [cur]:
                break
            cur = users[0]
        if _numel(cur) == n.out.numel:
            out[n.name] = cur.name
    return out


def _numel(n: fx.Node) -> int | None:
    """Elements of a node's tensor (None: no single tensor, or the output node)."""
    shape = getattr(n.meta.get("tensor_meta"), "shape", None)
    return None if shape is None or n.op == "output" else math.prod([int(d) for d in shape])


def _record(gm: fx.GraphModule, x: np.ndarray, keep: set[str]) -> dict[str, np.ndarray]:
    """Values of the ``keep`` nodes, copied when computed (a later in-place op changes the tensor)."""
    values: dict[str, np.ndarray] = {}

    class Recorder(fx.Interpreter):
        def run_node(self, node: fx.Node) -> Any:
            res = super().run_node(node)
            if node.name in keep and isinstance(res, torch.Tensor):
                values[node.name] = res.detach().to(torch.float64).numpy().copy()
            return res

    with torch.no_grad():
        Recorder(gm).run(torch.from_numpy(x.copy()))
    return values


def _compare(layer: str, torch_node: str, got: np.ndarray, want: np.ndarray, p: Predicted) -> FloatLayer:
    g, w = got.reshape(-1), want.reshape(-1).astype(np.float64)
    err = np.abs(g - w)
    slack = FLOAT32_SLACK * float(np.abs(w).max(initial=0.0))
    z = math.sqrt(2 * math.log(max(g.size, 1) / FALSE_ALARM))
    rms_pred = math.sqrt(float(np.mean(p.mean**2 + p.var))) if g.size else 0.0
    norm = float(np.linalg.norm(g) * np.linalg.norm(w))
    cosine = float(g @ w) / norm if norm > 0 else float(np.array_equal(g, w))
    return FloatLayer(layer, torch_node, cosine, float(err.max(initial=0.0)),
                      z * float(p.envelope.max(initial=0.0)) + slack,
                      math.sqrt(float(np.mean(err**2))) if g.size else 0.0, RMS_FACTOR * rms_pred + slack)


def simulated_output(program: Any, graph: Graph, final: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The simulated graph output, dequantized, in the graph's channel order; None if the program
    does not show which buffer holds it."""
    src = graph.node(graph.outputs[0].inputs[0])
    buf = src.name if src.name in final else (next(iter(final)) if len(final) == 1 else None)
    if buf is None or final[buf].size != src.out.numel:
        return None
    t = np.asarray(final[buf]).reshape(-1, *final[buf].shape[1:])
    order = program.meta.get("channel_orders", {}).get(buf)
    if order is not None:  # the buffer holds t[order]: put each channel back
        back = np.empty_like(t)
        back[np.asarray(order)] = t
        t = back
    return R.dequantize(t.reshape(graph.outputs[0].out.shape), src.out.scale_exp)  # type: ignore[arg-type]
