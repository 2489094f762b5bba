"""Graph invariants checked between passes: shapes agree with the ops, nothing dangles."""

from __future__ import annotations

from tilesparse.errors import TilesparseError
from tilesparse.ir.graph import Graph, Op
from tilesparse.ir.lut import LUT_FUNCTIONS
from tilesparse.passes.shapes import infer_shape

__all__ = ["GraphVerifyError", "verify"]

ACTIVATIONS = (None, "relu", "relu6")
_WEIGHTED = (Op.CONV2D, Op.LINEAR, Op.BATCHNORM)
_SDQ_PARAMS = ("sdq_sparse", "sdq_mask", "sdq_dense", "bias")  # quant.sdq_graph's layout, in place of weight


class GraphVerifyError(TilesparseError):
    """A graph broke an IR invariant (names the pass after which it happened and every problem)."""


def verify(g: Graph, after: str = "capture") -> Graph:
    """Raise :class:`GraphVerifyError` listing every broken invariant of ``g``; return ``g``."""
    errs = [*_shape_errors(g), *_dangling_errors(g), *_param_errors(g)]
    if errs:
        lines = "\n".join(f"  - {e}" for e in errs)
        raise GraphVerifyError(f"graph {g.name} is inconsistent after {after}:\n{lines}")
    return g


def _shape_errors(g: Graph) -> list[str]:
    shapes = {n.name: n.out.shape for n in g}
    errs = []
    for n in g:
        if n.op is Op.INPUT:
            continue
        try:
            want = infer_shape(n, [shapes[i] for i in n.inputs], g.params)
        except (ValueError, KeyError, IndexError) as e:
            errs.append(f"node {n.name!r} ({n.op.value}): {e}")
            continue
        if tuple(want) != tuple(n.out.shape):
            errs.append(f"node {n.name!r} ({n.op.value}): shape {n.out.shape}, expected {want}")
        act = n.attrs.get("activation")
        if act not in ACTIVATIONS:
            errs.append(f"node {n.name!r}: activation {act!r} not one of {ACTIVATIONS}")
        if n.op is Op.LUT and n.attrs.get("fn") not in LUT_FUNCTIONS:
            errs.append(f"node {n.name!r} (lut): fn {n.attrs.get('fn')!r} not one of {tuple(LUT_FUNCTIONS)}")
    return errs


def _dangling_errors(g: Graph) -> list[str]:
    used = {i for n in g for i in n.inputs}
    errs = [f"node {n.name!r} ({n.op.value}) has no consumer" for n in g
            if n.op is not Op.OUTPUT and n.name not in used]
    if not g.outputs:
        errs.append("graph has no output node")
    return errs


def _param_errors(g: Graph) -> list[str]:
    names = {n.name for n in g}
    errs = [f"parameter {k!r} belongs to no node" for k in g.params if k.rsplit(".", 1)[0] not in names]
    errs += [f"node {n.name!r} ({n.op.value}) has no weight" for n in g
             if n.op in _WEIGHTED and n.attrs.get("sdq") is None and f"{n.name}.weight" not in g.params]
    errs += [f"node {n.name!r} ({n.op.value}) is an SDQ layer without its parameter {p!r}" for n in g
             if n.attrs.get("sdq") is not None for p in _SDQ_PARAMS if f"{n.name}.{p}" not in g.params]
    return errs
