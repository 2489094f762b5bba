"""Measure how an exported QDQ model run by onnxruntime agrees with the integer reference.

Runs the model of :func:`tilesparse.quant.onnx_export.to_onnx` with every node's int8 codes
exposed and compares them, node by node, with :class:`IntegerReference` on the same real inputs.
Measured, not assumed: the documented bound (docs/quantization.md, "ONNX export") comes from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tilesparse.ir.graph import Graph, Op
from tilesparse.quant import rounding as R
from tilesparse.quant.onnx_export import to_onnx
from tilesparse.quant.reference import IntegerReference

__all__ = ["LayerAgreement", "onnx_agreement", "output_agreement", "run_onnx"]


@dataclass(frozen=True)
class LayerAgreement:
    """One node's int8 codes, onnxruntime vs the integer reference, over all inputs.

    ``local``: the reference run on onnxruntime's own int8 inputs of this node (what this layer
    adds); ``end_to_end``: the reference run from the model input (earlier differences propagate).
    Each is (elements differing, max difference in LSB).
    """

    node: str
    op: str
    elements: int
    local: tuple[int, int]
    end_to_end: tuple[int, int]

    @property
    def local_fraction(self) -> float:
        return self.local[0] / self.elements if self.elements else 0.0

    @property
    def end_to_end_fraction(self) -> float:
        return self.end_to_end[0] / self.elements if self.elements else 0.0


def run_onnx(model_bytes: bytes, x: np.ndarray, *, optimize: bool = False) -> dict[str, np.ndarray]:
    """Every output of the model on real input ``x`` (CPU, one thread); ``optimize`` False runs with
    graph optimizations disabled (every op as written), True with all of them (QDQ fusion)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    sess = ort.InferenceSession(model_bytes, opts, providers=["CPUExecutionProvider"])
    feed = {sess.get_inputs()[0].name: np.asarray(x, np.float32)}
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feed), strict=True))


def onnx_agreement(g: Graph, inputs: Sequence[np.ndarray], *, half_up: bool = True,
                   optimize: bool = False) -> list[LayerAgreement]:
    """Per node (schedule order): elements compared, and how many differ by at most how many LSB,
    locally and end to end (see :class:`LayerAgreement`)."""
    model = to_onnx(g, half_up=half_up, int8_outputs=True).SerializeToString()
    ref = IntegerReference(g)
    tally: dict[str, list[int]] = {n.name: [0, 0, 0, 0, 0] for n in g}
    for x in inputs:
        x = np.asarray(x, np.float32).reshape(g.inputs[0].out.shape)
        got, want = run_onnx(model, x, optimize=optimize), ref.run(x)
        for n in g:
            if n.op is Op.OUTPUT:
                continue
            mine = got[f"{n.name}:q"].astype(np.int64)
            local = want[n.name] if n.op is Op.INPUT else ref.step(n, [got[f"{i}:q"] for i in n.inputs])
            t = tally[n.name]
            t[0] += mine.size
            for k, other in ((1, local), (3, want[n.name])):
                d = np.abs(mine - np.asarray(other, np.int64))
                t[k] += int((d > 0).sum())
                t[k + 1] = max(t[k + 1], int(d.max(initial=0)))
    return [LayerAgreement(n.name, n.op.value, t[0], (t[1], t[2]), (t[3], t[4]))
            for n in g if n.op is not Op.OUTPUT for t in [tally[n.name]]]


def output_agreement(g: Graph, inputs: Sequence[np.ndarray], *, half_up: bool = True,
                     optimize: bool = False) -> tuple[int, int, int]:
    """(elements, differing, max LSB) of the graph output alone, on the model as exported (no
    intermediate outputs): exposing every Q output keeps onnxruntime from fusing DQ → Conv → Q into
    its integer kernels (QLinearConv), so only this measures the fused model."""
    model = to_onnx(g, half_up=half_up).SerializeToString()
    ref, node = IntegerReference(g), g.outputs[0]
    e = int(node.out.scale_exp)  # type: ignore[arg-type]
    total = differing = worst = 0
    for x in inputs:
        x = np.asarray(x, np.float32).reshape(g.inputs[0].out.shape)
        got = R.quantize_real(run_onnx(model, x, optimize=optimize)[node.name], e)  # exact: DQ of int8 codes
        d = np.abs(got - ref.run(x)[node.name].astype(np.int64))
        total, differing, worst = total + d.size, differing + int((d > 0).sum()), max(worst, int(d.max(initial=0)))
    return total, differing, worst
