"""Lower the classifier head to convolutions: linear → 1×1 conv on a C×1×1 tensor.

After this pass every activation is NCHW (rank 4):

* an adaptive average pool (or a 1×1/stride-1 average pool) that maps its input to itself is removed
  (VGG16's ``AdaptiveAvgPool2d((7, 7))`` on a 7×7 input);
* ``flatten(start_dim=1)`` of (N, C, H, W) becomes a FLATTEN node with output (N, C·H·W, 1, 1) — a
  row-major reinterpretation of the batch-1 CHW buffer, channel index c·H·W + h·W + w — and is removed
  entirely when H = W = 1 (ResNet's and Inception's global-pool → flatten);
* ``linear`` (O × I) becomes a 1×1 ``conv2d`` with weight O × I × 1 × 1 on that (N, I, 1, 1) tensor,
  so the linear's block mask over (O, I) is the conv's mask unchanged;
* every later shape (relu, dropout-free chains, the output) is re-derived as rank 4.
"""

from __future__ import annotations

import math

import numpy as np

from tilesparse.errors import UnsupportedOpError
from tilesparse.ir.graph import Graph, Node, Op, TensorType
from tilesparse.passes.rewrite import bypass
from tilesparse.passes.shapes import infer_shape

__all__ = ["lower_linear"]

_CONV1X1 = {"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1}


def _is_identity_pool(n: Node, in_shape: tuple[int, ...]) -> bool:
    if n.op is Op.ADAPTIVE_AVGPOOL:
        return tuple(n.attrs["output_size"]) == tuple(in_shape[2:])
    if n.op is Op.AVGPOOL:
        return (n.attrs["kernel"], n.attrs["stride"], n.attrs["padding"]) == ((1, 1), (1, 1), (0, 0))
    return False


def lower_linear(g: Graph) -> Graph:
    """Return ``g`` with linear layers as 1×1 convs and every tensor rank 4 (see module doc)."""
    shapes = {n.name: n.out.shape for n in g}
    params = dict(g.params)
    removed: dict[str, str] = {}
    nodes: list[Node] = []
    for n in g:
        x = shapes[n.inputs[0]] if n.inputs else ()
        if _is_identity_pool(n, x) or (n.op is Op.FLATTEN and len(x) == 4 and x[2:] == (1, 1)):
            removed[n.name] = n.inputs[0]
        elif n.op is Op.FLATTEN:
            if len(x) != 4 or n.attrs["start_dim"] != 1:
                raise UnsupportedOpError(
                    f"{g.name}: node {n.name!r} ({n.source or 'flatten'}) flattens {x} from dim "
                    f"{n.attrs['start_dim']}; the compiler supports only flatten(x, 1) of NCHW")
            nodes.append(n.with_(out=TensorType((x[0], math.prod(x[1:]), 1, 1), n.out.dtype)))
        elif n.op is Op.LINEAR:
            w = params[f"{n.name}.weight"]
            params[f"{n.name}.weight"] = w.reshape(*w.shape, 1, 1)
            attrs = _CONV1X1 | {"activation": n.attrs.get("activation"), "from_linear": True}
            nodes.append(n.with_(op=Op.CONV2D, attrs=attrs))
        else:
            nodes.append(n)
    return g.replace_nodes(_reinfer(bypass(nodes, removed), params, g.name), params)


def _reinfer(nodes: list[Node], params: dict[str, np.ndarray], gname: str) -> list[Node]:
    """Recompute every shape now that the head is rank 4 (a rank-2 tensor reads as N×C×1×1)."""
    shapes: dict[str, tuple[int, ...]] = {}
    out = []
    for n in nodes:
        shape: tuple[int, ...]
        if n.op is Op.INPUT:
            if len(n.out.shape) != 4:
                raise UnsupportedOpError(
                    f"{gname}: input {n.name!r} has shape {n.out.shape}; the compiler needs NCHW")
            shape = n.out.shape
        elif n.op is Op.FLATTEN:
            shape = n.out.shape
        else:
            shape = tuple(infer_shape(n, [shapes[i] for i in n.inputs], params))
        shapes[n.name] = shape
        out.append(n.with_(out=TensorType(shape, n.out.dtype, n.out.scale_exp)))
    return out
