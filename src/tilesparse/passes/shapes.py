"""Shape inference for every IR op, the same formulas as PyTorch (used by ``verify``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from tilesparse.ir.graph import Node, Op

__all__ = ["window_out", "infer_shape"]


def window_out(size: int, k: int, s: int, p: int, d: int = 1, ceil_mode: bool = False) -> int:
    """Output extent of a sliding window (PyTorch's conv/pool formula, ceil_mode included)."""
    span = size + 2 * p - d * (k - 1) - 1
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:  # the last window must start inside the input
        out -= 1
    return out


def _spatial(n: Node, shape: Sequence[int], channels: int) -> tuple[int, ...]:
    a = n.attrs
    k, s, p = a["kernel"], a["stride"], a["padding"]
    d = a.get("dilation", (1, 1))
    ceil = bool(a.get("ceil_mode", False))
    hw = [window_out(shape[2 + i], k[i], s[i], p[i], d[i], ceil) for i in range(2)]
    return (shape[0], channels, *hw)


def _conv(n: Node, ins: Sequence[tuple[int, ...]], params: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    # an SDQ layer (quant.sdq_graph) holds its weight as parts of the weight's shape
    key = f"{n.name}.weight" if n.attrs.get("sdq") is None else f"{n.name}.sdq_dense"
    w, x, g = params[key], ins[0], n.attrs["groups"]
    if x[1] != w.shape[1] * g or tuple(w.shape[2:]) != tuple(n.attrs["kernel"]):
        raise ValueError(f"weight {w.shape} (groups {g}) does not fit input {x}")
    return _spatial(n, x, w.shape[0])


def _linear(n: Node, ins: Sequence[tuple[int, ...]], params: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    w, x = params[f"{n.name}.weight"], ins[0]
    if x[-1] != w.shape[1]:
        raise ValueError(f"weight {w.shape} does not fit input {x}")
    return (*x[:-1], w.shape[0])


def _add(n: Node, ins: Sequence[tuple[int, ...]], params: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    if any(s != ins[0] for s in ins):
        raise ValueError(f"add of different shapes {list(ins)}")
    return ins[0]


def _mul(n: Node, ins: Sequence[tuple[int, ...]], params: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    x, y = ins
    if y != x and not (len(x) == len(y) == 4 and y[:2] == x[:2] and y[2:] == (1, 1)):
        raise ValueError(f"mul of {x} by {y}: shapes must match, or the second be (N, C, 1, 1)")
    return x


def _slice(a: Mapping[str, Any], x: tuple[int, ...]) -> tuple[int, ...]:
    start, stop = int(a["start"]), int(a["stop"])
    if int(a.get("axis", 1)) != 1 or len(x) != 4 or not 0 <= start < stop <= x[1]:
        raise ValueError(f"slice [{start}, {stop}) along axis {a.get('axis')} of {x}: only a channel range "
                         f"(axis 1) of an NCHW tensor inside its {x[1] if len(x) > 1 else 0} channels")
    return (x[0], stop - start, *x[2:])


def _shuffle(a: Mapping[str, Any], x: tuple[int, ...]) -> tuple[int, ...]:
    g = int(a["groups"])
    if len(x) != 4 or g < 1 or x[1] % g:
        raise ValueError(f"channel shuffle of {x} into {g} groups: needs NCHW and groups dividing the channels")
    return x


_INFER: dict[Op, Callable[[Node, Sequence[tuple[int, ...]], Mapping[str, np.ndarray]], tuple[int, ...]]] = {
    Op.CONV2D: _conv,
    Op.LINEAR: _linear,
    Op.MAXPOOL: lambda n, ins, p: _spatial(n, ins[0], ins[0][1]),
    Op.AVGPOOL: lambda n, ins, p: _spatial(n, ins[0], ins[0][1]),
    Op.ADAPTIVE_AVGPOOL: lambda n, ins, p: (ins[0][0], ins[0][1], *n.attrs["output_size"]),
    Op.ADD: _add,
    Op.MUL: _mul,
    Op.CONCAT: lambda n, ins, p: _concat(n.attrs["axis"], ins),
    Op.FLATTEN: lambda n, ins, p: _flatten(n.attrs, ins[0], n.out.shape),
    Op.SLICE: lambda n, ins, p: _slice(n.attrs, ins[0]),
    Op.CHANNEL_SHUFFLE: lambda n, ins, p: _shuffle(n.attrs, ins[0]),
}


def infer_shape(
    n: Node, ins: Sequence[tuple[int, ...]], params: Mapping[str, np.ndarray]
) -> tuple[int, ...]:
    """The output shape ``n`` must have given its input shapes (raises ValueError if inconsistent).
    Input, output, batchnorm, relu and relu6 keep their (first) input's shape."""
    rule = _INFER.get(n.op)
    if rule is not None:
        return tuple(rule(n, ins, params))
    return tuple(ins[0]) if ins else tuple(n.out.shape)


def _concat(axis: int, ins: Sequence[tuple[int, ...]]) -> tuple[int, ...]:
    rest = {s[:axis] + s[axis + 1 :] for s in ins}
    if len(rest) != 1:
        raise ValueError(f"concat along {axis} of incompatible shapes {list(ins)}")
    out = list(ins[0])
    out[axis] = sum(s[axis] for s in ins)
    return tuple(out)


def _flatten(attrs: Mapping[str, Any], x: tuple[int, ...], got: tuple[int, ...]) -> tuple[int, ...]:
    k = attrs["start_dim"]
    merged = (*x[:k], math.prod(x[k:]))
    # After lowering a flatten may keep trailing unit dims: (N, C*H*W, 1, 1) (see docs/passes.md).
    return merged + (1,) * (len(got) - len(merged)) if len(got) > len(merged) else merged
