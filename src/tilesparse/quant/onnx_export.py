"""Export a quantized graph as a QDQ ONNX model that onnxruntime runs.

Every node's int8 output becomes ``QuantizeLinear`` (scale 2**e, zero point 0, int8) → tensor
``"<node>:q"`` → ``DequantizeLinear`` → float tensor ``"<node>"`` (the graph input's is
``"<input>:dq"``: the model's real-valued input takes the input node's name); the node's own op runs in float
between the DQ of its inputs and its Q. Conv weights are int8 initializers (the pruned blocks are
their zeros) behind a DequantizeLinear with scale 2**e_w (per tensor, or per output channel on
axis 0); biases are int32 at scale 2**(e_in + e_w), the ONNX QDQ convention. An add or concat
operand whose exponent differs from the output's is first re-quantized to the output's exponent
(a Q/DQ pair), as the integer reference shifts each operand before it sums or concatenates.

How onnxruntime's outputs relate to :class:`~tilesparse.quant.reference.IntegerReference` is
measured by :mod:`tilesparse.quant.onnx_check` and stated in docs/quantization.md ("ONNX export").
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tilesparse.errors import ConfigError
from tilesparse.ir.graph import Graph, Node, Op, shuffle_source
from tilesparse.quant import rounding as R
from tilesparse.quant.quantize import QuantizationError, requant_shifts
from tilesparse.utils.atomic import atomic_write_bytes

__all__ = ["OPSET", "export_onnx", "to_onnx"]

OPSET = 17  # per-axis DequantizeLinear (13+), AveragePool ceil_mode and count_include_pad
_F32_EXP = (-126, 127)  # 2**e is a normal float32: the scale is exact


def export_onnx(g: Graph, path: str | Path, *, half_up: bool = True, int8_outputs: bool = False) -> Path:
    """Write ``g`` (quantized) as a QDQ ONNX model at ``path``, atomically; see :func:`to_onnx`."""
    model = to_onnx(g, half_up=half_up, int8_outputs=int8_outputs)
    return atomic_write_bytes(path, model.SerializeToString())


def to_onnx(g: Graph, *, half_up: bool = True, int8_outputs: bool = False) -> onnx.ModelProto:
    """The QDQ model of quantized graph ``g``, checked by ``onnx.checker``.

    ``half_up``: before each QuantizeLinear that rounds (a conv's requantization, an operand's right
    shift, an average), add half a step of the finer grid the value lies on, so that ONNX's round
    half to even lands where the reference's round half up does (exact: a tie moves just above it,
    every other value stays on its side). False: the plain DQ → op → Q pattern that runtimes fuse
    into integer kernels; ties then round to even (within one LSB per rounding).

    The model's input takes real values (it quantizes them itself); its outputs are the real values
    of the graph outputs. ``int8_outputs`` also exposes every node's int8 codes as an output
    ``"<node>:q"`` (what the integer reference computes), to compare layer by layer.
    """
    b = _Builder(g, half_up)
    for n in g:
        b.add(n)
    outs = [helper.make_tensor_value_info(n.name, TensorProto.FLOAT, ["batch", *n.out.shape[1:]]) for n in g.outputs]
    if int8_outputs:
        outs += [helper.make_tensor_value_info(f"{n.name}:q", TensorProto.INT8,
                                               ["batch", *n.out.shape[1:]])
                 for n in g if n.op is not Op.OUTPUT]
    graph = helper.make_graph(b.nodes, g.name, b.inputs, outs, b.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="tilesparse")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _scale(e: Any, where: str) -> np.ndarray:
    ea = np.asarray(e, np.int64)
    if ea.size and (ea.min() < _F32_EXP[0] or ea.max() > _F32_EXP[1]):
        raise ConfigError(where, [f"exponent {int(ea.min())}..{int(ea.max())} is outside float32's normal range "
                                  f"[{_F32_EXP[0]}, {_F32_EXP[1]}]: 2**e would not be an exact ONNX scale"])
    return np.ldexp(np.ones(ea.shape, np.float32), ea).astype(np.float32)


class _Builder:
    """Accumulates ONNX nodes and initializers, one graph node at a time."""

    def __init__(self, g: Graph, half_up: bool):
        self.g, self.half_up = g, half_up
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []

    def add(self, n: Node) -> None:
        if n.out.scale_exp is None or n.out.dtype != "int8":
            raise QuantizationError(f"graph {self.g.name}: node {n.name!r} is not int8; quantize before export")
        emit = _EMIT.get(n.op)
        if emit is None:
            raise ConfigError(f"graph {self.g.name}", [f"node {n.name!r}: op {n.op.value!r} has no ONNX export"])
        emit(self, n)

    def f(self, node: str) -> str:
        """The float tensor of node ``node``'s int8 output: its name, but for the graph input, whose name
        the model's real-valued input takes."""
        return f"{node}:dq" if self.g.node(node).op is Op.INPUT else node

    def init(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, ins: list[str], out: str, **attrs: Any) -> str:
        self.nodes.append(helper.make_node(op_type, ins, [out], name=out, **attrs))
        return out

    def qdq(self, x: str, e: int, name: str, where: str) -> str:
        """Q(x) at 2**e into ``name + ":q"`` (int8; ``name`` without ":dq"), then DQ into ``name``."""
        base = name.removesuffix(":dq")
        s = self.init(f"{base}:q.scale", _scale(e, where))
        z = self.init(f"{base}:q.zero", np.zeros((), np.int8))
        q = self.op("QuantizeLinear", [x, s, z], f"{base}:q")
        return self.op("DequantizeLinear", [q, s, z], name)

    def nudge(self, x: str, offset: np.ndarray | None, name: str) -> str:
        """``x + offset`` (real units) when rounding half up and the offset is not zero."""
        if not self.half_up or offset is None or not np.any(offset):
            return x
        return self.op("Add", [x, self.init(f"{name}:half", np.asarray(offset, np.float32))], f"{name}:half_up")

    def finish(self, n: Node, y: str, offset: np.ndarray | None = None) -> None:
        """The half-up nudge, the clamp (a fused relu / relu6), then the node's own Q/DQ pair."""
        y = self.nudge(y, offset, n.name)
        lo, hi = n.attrs.get("clamp", (R.INT8_MIN, R.INT8_MAX))
        e = int(n.out.scale_exp)  # type: ignore[arg-type]
        if (lo, hi) == (0, R.INT8_MAX):
            y = self.op("Relu", [y], f"{n.name}:relu")
        elif (lo, hi) != (R.INT8_MIN, R.INT8_MAX):
            bounds = [self.init(f"{n.name}:clip.{k}", np.ldexp(np.float32(v), e).astype(np.float32))
                      for k, v in (("lo", lo), ("hi", hi))]
            y = self.op("Clip", [y, *bounds], f"{n.name}:clip")
        self.qdq(y, e, n.name, f"node {n.name!r}")

    def aligned(self, n: Node, shifts: tuple[int, ...]) -> list[str]:
        """Each operand at the node's exponent: re-quantized where the reference shifts it (an add
        needs it only for right shifts: a left shift is exact and an add does not saturate operands)."""
        out = []
        for i, s in zip(n.inputs, shifts, strict=True):
            if s > 0 or (s < 0 and n.op is Op.CONCAT):
                e_i = int(self.g.node(i).out.scale_exp)  # type: ignore[arg-type]
                x = self.nudge(self.f(i), np.ldexp(np.float32(1), e_i - 1) if s > 0 else None, f"{n.name}:{i}")
                out.append(self.qdq(x, int(n.out.scale_exp), f"{n.name}:{i}", f"node {n.name!r}"))  # type: ignore[arg-type]
            else:
                out.append(self.f(i))
        return out


def _input(b: _Builder, n: Node) -> None:
    b.inputs.append(helper.make_tensor_value_info(n.name, TensorProto.FLOAT, ["batch", *n.out.shape[1:]]))
    b.qdq(n.name, int(n.out.scale_exp), b.f(n.name), f"input {n.name!r}")  # type: ignore[arg-type]


def _conv(b: _Builder, n: Node) -> None:
    if n.attrs.get("sdq") is not None:
        raise ConfigError(f"graph {b.g.name}", [f"node {n.name!r}: an SDQ layer (two weight parts) has no ONNX "
                                                "export; quantize without sdq"])
    g, a = b.g, n.attrs
    w = g.param(n.name, "weight")
    e_in = int(g.node(n.inputs[0]).out.scale_exp)  # type: ignore[arg-type]
    per_channel = a.get("weight_exp") is None
    e_w = g.param(n.name, "weight_exps").astype(np.int64) if per_channel else np.int64(a["weight_exp"])
    if not np.array_equal(np.broadcast_to(e_in + e_w + requant_shifts(g, n), (w.shape[0],)),
                          np.full(w.shape[0], n.out.scale_exp)):
        raise QuantizationError(f"node {n.name!r}: e_in + e_w + shift is not the output exponent")
    axis = {"axis": 0} if per_channel else {}
    zshape = (w.shape[0],) if per_channel else ()
    wdq = b.op("DequantizeLinear", [b.init(f"{n.name}.weight", w.astype(np.int8)),
                                    b.init(f"{n.name}.weight:scale", _scale(e_w, f"node {n.name!r} weight")),
                                    b.init(f"{n.name}.weight:zero", np.zeros(zshape, np.int8))],
               f"{n.name}.weight:dq", **axis)
    bdq = b.op("DequantizeLinear", [b.init(f"{n.name}.bias", g.param(n.name, "bias").astype(np.int32)),
                                    b.init(f"{n.name}.bias:scale", _scale(e_in + e_w, f"node {n.name!r} bias")),
                                    b.init(f"{n.name}.bias:zero", np.zeros(zshape, np.int32))],
               f"{n.name}.bias:dq", **axis)
    (ph, pw) = a["padding"]
    y = b.op("Conv", [b.f(n.inputs[0]), wdq, bdq], f"{n.name}:conv", kernel_shape=list(w.shape[2:]),
             strides=list(a["stride"]), pads=[ph, pw, ph, pw], dilations=list(a["dilation"]), group=a["groups"])
    shifts = np.broadcast_to(requant_shifts(g, n), (w.shape[0],))
    e_acc = np.broadcast_to(e_in + e_w, (w.shape[0],))
    half = np.where(shifts > 0, np.ldexp(np.float32(1), e_acc - 1), 0).astype(np.float32)  # half an acc LSB
    b.finish(n, y, half.reshape(1, -1, 1, 1))


def _add(b: _Builder, n: Node) -> None:
    b.finish(n, b.op("Add", b.aligned(n, tuple(n.attrs["input_shifts"])), f"{n.name}:add"))


def _concat(b: _Builder, n: Node) -> None:
    b.finish(n, b.op("Concat", b.aligned(n, tuple(n.attrs["input_shifts"])), f"{n.name}:concat",
                     axis=n.attrs["axis"]))


def _pads(p: tuple[int, int]) -> list[int]:
    return [p[0], p[1], p[0], p[1]]


def _maxpool(b: _Builder, n: Node) -> None:
    a = n.attrs
    b.finish(n, b.op("MaxPool", [b.f(n.inputs[0])], f"{n.name}:pool", kernel_shape=list(a["kernel"]),
                     strides=list(a["stride"]), pads=_pads(a["padding"]), dilations=list(a["dilation"]),
                     ceil_mode=int(a["ceil_mode"])))


def _avg_half(n: Node, divisors: np.ndarray) -> np.ndarray:
    """A quarter of a 1/d step (real units) per output position: sum/d lies on the 1/d grid of the
    output's step, so a tie (d even) moves above one half, and the nearest value below a half,
    1/d (d even) or 1/(2d) (d odd) below it, stays below; float32 division errs far less."""
    return (np.ldexp(1.0, int(n.out.scale_exp)) / (4.0 * divisors)).astype(np.float32)  # type: ignore[arg-type]


def _avgpool(b: _Builder, n: Node) -> None:
    a = n.attrs
    y = b.op("AveragePool", [b.f(n.inputs[0])], f"{n.name}:pool", kernel_shape=list(a["kernel"]),
             strides=list(a["stride"]), pads=_pads(a["padding"]), ceil_mode=int(a["ceil_mode"]),
             count_include_pad=int(a["count_include_pad"]))
    (h, w), (oh, ow) = b.g.node(n.inputs[0]).out.shape[2:], n.out.shape[2:]
    div = R.pool_divisors((h, w), (oh, ow), a["kernel"], a["stride"],
                          a["padding"], a["count_include_pad"])
    b.finish(n, y, _avg_half(n, div)[None, None])


def _adaptive(b: _Builder, n: Node) -> None:
    (h, w), (oh, ow) = b.g.node(n.inputs[0]).out.shape[2:], n.attrs["output_size"]
    x = b.f(n.inputs[0])
    if (oh, ow) == (1, 1):
        y = b.op("GlobalAveragePool", [x], f"{n.name}:pool")
    elif h % oh == 0 and w % ow == 0:
        k = [h // oh, w // ow]
        y = b.op("AveragePool", [x], f"{n.name}:pool", kernel_shape=k, strides=k)
    else:
        y = _window_means(b, n, x, (h, w), (oh, ow))
    counts = [[(h1 - h0) * (w1 - w0) for w0, w1 in R.adaptive_windows(w, ow)] for h0, h1 in R.adaptive_windows(h, oh)]
    b.finish(n, y, _avg_half(n, np.array(counts, np.float64)[None, None]))


def _window_means(b: _Builder, n: Node, x: str, hw: tuple[int, int], out: tuple[int, int]) -> str:
    """Overlapping adaptive windows (no ONNX pool has them): each window's sum as a MatMul of the
    flattened map with a 0/1 matrix (integer sums, exact in float32), divided by its size."""
    (h, w), (oh, ow) = hw, out
    ones = np.zeros((h, w, oh, ow), np.float32)
    for i, (h0, h1) in enumerate(R.adaptive_windows(h, oh)):
        for j, (w0, w1) in enumerate(R.adaptive_windows(w, ow)):
            ones[h0:h1, w0:w1, i, j] = 1
    flat = b.op("Reshape", [x, b.init(f"{n.name}:flat", np.array([0, 0, h * w], np.int64))], f"{n.name}:flat_in")
    sums = b.op("MatMul", [flat, b.init(f"{n.name}:windows", ones.reshape(h * w, oh * ow))], f"{n.name}:sums")
    div = b.op("Div", [sums, b.init(f"{n.name}:sizes", ones.sum(axis=(0, 1)).reshape(-1))], f"{n.name}:means")
    return b.op("Reshape", [div, b.init(f"{n.name}:shape", np.array([0, 0, oh, ow], np.int64))], f"{n.name}:pool")


def _relu(b: _Builder, n: Node) -> None:
    b.finish(n, b.f(n.inputs[0]))


def _flatten(b: _Builder, n: Node) -> None:
    shape = b.init(f"{n.name}:shape", np.array([0, *n.out.shape[1:]], np.int64))  # 0: keep the batch
    b.finish(n, b.op("Reshape", [b.f(n.inputs[0]), shape], f"{n.name}:reshape"))


def _slice(b: _Builder, n: Node) -> None:
    """A channel range: ONNX Slice along axis 1 (values and exponent unchanged)."""
    a = n.attrs
    ins = [b.f(n.inputs[0])] + [b.init(f"{n.name}:{k}", np.array([v], np.int64))
                                for k, v in (("starts", a["start"]), ("ends", a["stop"]), ("axes", 1))]
    b.finish(n, b.op("Slice", ins, f"{n.name}:slice"))


def _channel_shuffle(b: _Builder, n: Node) -> None:
    """A channel shuffle: ONNX Gather of the channels in shuffled order (``shuffle_source``)."""
    idx = b.init(f"{n.name}:order", shuffle_source(n.out.shape[1], int(n.attrs["groups"])).astype(np.int64))
    b.finish(n, b.op("Gather", [b.f(n.inputs[0]), idx], f"{n.name}:gather", axis=1))


def _output(b: _Builder, n: Node) -> None:
    b.op("Identity", [b.f(n.inputs[0])], n.name)


_EMIT: dict[Op, Callable[[_Builder, Node], None]] = {
    Op.INPUT: _input, Op.CONV2D: _conv, Op.ADD: _add, Op.CONCAT: _concat, Op.MAXPOOL: _maxpool,
    Op.AVGPOOL: _avgpool, Op.ADAPTIVE_AVGPOOL: _adaptive, Op.RELU: _relu, Op.RELU6: _relu,
    Op.FLATTEN: _flatten, Op.SLICE: _slice, Op.CHANNEL_SHUFFLE: _channel_shuffle, Op.OUTPUT: _output,
}
