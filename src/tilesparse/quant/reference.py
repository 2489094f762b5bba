"""Integer reference of a quantized graph: the oracle the compiled program must match bit for bit.

Convolutions run in float64 on integer values, which is exact while every partial sum stays below
2**53 (checked per layer from its fan-in before running it); everything else is int64 numpy using
the rules of :mod:`tilesparse.quant.rounding`. Accumulators must fit int32 (the AIE2 accumulator
the simulator models): the reference raises if one does not. An SDQ layer (``quant.sdq_graph``)
sums its two parts' exact accumulations, each shifted left to the common exponent.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from tilesparse.ir.graph import Graph, Node, Op, shuffle_source
from tilesparse.quant import rounding as R
from tilesparse.quant.lut import LUT_ENTRIES
from tilesparse.quant.quantize import QuantizationError, requant_shifts

__all__ = ["IntegerReference", "quantize_input"]

FLOAT64_EXACT = 2**53  # integers up to this are exact in float64
_INT8_PRODUCT_MAX = 128 * 128  # |int8 × int8|
_INT64_SAFE = 2**62  # a shifted SDQ part below this cannot wrap int64 when the two are added


def _exp(node: Node) -> int:
    if node.out.scale_exp is None:
        raise QuantizationError(f"node {node.name!r} has no scale exponent: graph not quantized")
    return node.out.scale_exp


def quantize_input(g: Graph, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """The int8 tensor the graph's input node holds for the real input ``x``."""
    node = g.inputs[0]
    xa = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return R.quantize_real(xa.reshape(node.out.shape), _exp(node)).astype(np.int8)


class IntegerReference:
    """Execute a quantized graph exactly.

    Example:
        >>> from tilesparse.frontend import build_graph
        >>> g = build_graph("resnet18", input_shape=(1, 3, 32, 32))
        >>> outs = IntegerReference(g).run(np.zeros((1, 3, 32, 32), np.float32))
        >>> outs["output"].dtype
        dtype('int8')
    """

    def __init__(self, g: Graph):
        bad = [n.name for n in g if n.out.dtype != "int8" or n.out.scale_exp is None]
        if bad:
            raise QuantizationError(f"graph {g.name}: not quantized (e.g. node {bad[0]!r}); "
                                    f"run tilesparse.quant.quantize first")
        self.g = g

    def run(
        self, x: np.ndarray | torch.Tensor, *, is_int8: bool = False, keep_accumulators: bool = False
    ) -> dict[str, np.ndarray]:
        """Every node's int8 output (node name → array); ``x`` is real-valued unless ``is_int8``.

        With ``keep_accumulators`` each conv also reports its int32 accumulator (bias included,
        before the shift) under ``"<node>.acc"``.
        """
        q = np.asarray(x, np.int64) if is_int8 else quantize_input(self.g, x).astype(np.int64)
        vals: dict[str, np.ndarray] = {}
        out: dict[str, np.ndarray] = {}
        for n in self.g:
            if n.op is Op.INPUT:
                vals[n.name] = q.reshape(n.out.shape)
            elif n.op is Op.CONV2D and keep_accumulators:
                acc = self._accumulate(n, vals[n.inputs[0]])
                out[f"{n.name}.acc"] = acc.astype(np.int32)
                vals[n.name] = R.requantize(acc, requant_shifts(self.g, n).reshape(1, -1, 1, 1),
                                            tuple(n.attrs["clamp"]))
            else:
                vals[n.name] = self.step(n, [vals[i] for i in n.inputs])
            out[n.name] = vals[n.name].astype(np.int8)
        return out

    def step(self, n: Node, inputs: list[np.ndarray]) -> np.ndarray:
        """Node ``n`` (not the input) on the given integer operands (int64): one layer on its own."""
        if n.op is Op.CONV2D:
            acc = self._accumulate(n, np.asarray(inputs[0], np.int64))
            return R.requantize(acc, requant_shifts(self.g, n).reshape(1, -1, 1, 1), tuple(n.attrs["clamp"]))
        if n.op is Op.LUT:
            return self._lookup(n, np.asarray(inputs[0], np.int64))
        return _OPS[n.op](n, [np.asarray(x, np.int64) for x in inputs])

    def dequantized_output(self, x: np.ndarray | torch.Tensor) -> np.ndarray:
        """The graph output as real values (int8 × 2**exp), float64."""
        node = self.g.outputs[0]
        return R.dequantize(self.run(x)[node.name], _exp(node))

    def _lookup(self, n: Node, x: np.ndarray) -> np.ndarray:
        """A ``lut`` node: entry ``x + 128`` of its int8 table (``quant.lut``)."""
        table = np.asarray(self.g.param(n.name, "table"))
        if table.shape != (LUT_ENTRIES,) or table.dtype != np.int8:
            raise QuantizationError(f"node {n.name!r}: table is {table.dtype} {table.shape}, expected int8 "
                                    f"({LUT_ENTRIES},)")
        if x.size and (x.min() < R.INT8_MIN or x.max() > R.INT8_MAX):
            raise QuantizationError(f"node {n.name!r}: input outside int8, the table has no entry for it")
        return table.astype(np.int64)[x - R.INT8_MIN]

    def _accumulate(self, n: Node, x: np.ndarray) -> np.ndarray:
        acc = self._sdq_sum(n, x) if n.attrs.get("sdq") is not None else self._conv(n, x, "weight")
        acc = acc + self.g.param(n.name, "bias").astype(np.int64).reshape(1, -1, 1, 1)
        if acc.size and (acc.max() > R.INT32_MAX or acc.min() < R.INT32_MIN):
            raise QuantizationError(f"node {n.name!r}: accumulator {int(np.abs(acc).max())} overflows int32")
        return acc

    def _conv(self, n: Node, x: np.ndarray, param: str) -> np.ndarray:
        """Σ x · w over each window for the int8 weight ``param``, exact (int64)."""
        a = n.attrs
        w = self.g.param(n.name, param)
        fan_in = int(np.prod(w.shape[1:]))
        if fan_in * _INT8_PRODUCT_MAX >= FLOAT64_EXACT:
            raise QuantizationError(f"node {n.name!r}: fan-in {fan_in} too large for exact float64")
        y = F.conv2d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(w.astype(np.float64)),
                     None, a["stride"], a["padding"], a["dilation"], a["groups"])
        return np.rint(y.numpy()).astype(np.int64)

    def _sdq_sum(self, n: Node, x: np.ndarray) -> np.ndarray:
        """An SDQ layer: each part's exact sum, left-shifted from its exponent to ``weight_exp``."""
        parts = n.attrs["sdq"]
        acc = np.zeros((), np.int64)
        for param, exp in (("sdq_sparse", parts["sparse_exp"]), ("sdq_dense", parts["dense_exp"])):
            s = int(exp) - int(n.attrs["weight_exp"])
            if s < 0:
                raise QuantizationError(f"node {n.name!r}: {param} exponent {exp} is below weight_exp "
                                        f"{n.attrs['weight_exp']}; the parts cannot align exactly")
            part = self._conv(n, x, param)
            if part.size and int(np.abs(part).max()) << s >= _INT64_SAFE:
                raise QuantizationError(f"node {n.name!r}: {param} accumulator shifted left by {s} leaves int64")
            acc = acc + (part << s)
        return acc


def _add(n: Node, xs: list[np.ndarray]) -> np.ndarray:
    s_a, s_b = n.attrs["input_shifts"]
    total = R.shift_round(xs[0], s_a) + R.shift_round(xs[1], s_b)
    return R.saturate(total, *n.attrs["clamp"])


def _concat(n: Node, xs: list[np.ndarray]) -> np.ndarray:
    parts = [R.saturate(R.shift_round(x, s)) for x, s in zip(xs, n.attrs["input_shifts"], strict=True)]
    return np.concatenate(parts, axis=n.attrs["axis"])


def _maxpool(n: Node, xs: list[np.ndarray]) -> np.ndarray:
    # Padding acts as -inf in PyTorch; every window holds a real element, so the max is exact.
    a = n.attrs
    y = F.max_pool2d(torch.from_numpy(xs[0].astype(np.float64)), a["kernel"], a["stride"],
                     a["padding"], a["dilation"], a["ceil_mode"])
    return y.numpy().astype(np.int64)


def _avgpool(n: Node, xs: list[np.ndarray]) -> np.ndarray:
    a = n.attrs
    x = torch.from_numpy(xs[0].astype(np.float64))
    sums = F.avg_pool2d(x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"], True,
                        divisor_override=1)  # zero padding: the plain window sum, exact
    total = np.rint(sums.numpy()).astype(np.int64)
    div = R.pool_divisors(xs[0].shape[2:], total.shape[2:], a["kernel"], a["stride"], a["padding"],
                          a["count_include_pad"])
    return R.avg_round(total, div[None, None])


def _adaptive(n: Node, xs: list[np.ndarray]) -> np.ndarray:
    x = xs[0]
    (oh, ow), (h, w) = n.attrs["output_size"], x.shape[2:]
    out = np.empty((*x.shape[:2], oh, ow), np.int64)
    for i, (h0, h1) in enumerate(R.adaptive_windows(h, oh)):
        for j, (w0, w1) in enumerate(R.adaptive_windows(w, ow)):
            total = x[:, :, h0:h1, w0:w1].sum(axis=(2, 3))
            out[:, :, i, j] = R.avg_round(total, np.int64((h1 - h0) * (w1 - w0)))
    return out


def _mul(n: Node, xs: list[np.ndarray]) -> np.ndarray:
    """int8 · int8 (|product| ≤ 2**14) requantized: clamp(shift_round(x · y, shift))."""
    return R.requantize(xs[0] * xs[1], int(n.attrs["shift"]), tuple(n.attrs["clamp"]))


_OPS: dict[Op, Callable[[Node, list[np.ndarray]], np.ndarray]] = {
    Op.ADD: _add,
    Op.MUL: _mul,
    Op.CONCAT: _concat,
    Op.MAXPOOL: _maxpool,
    Op.AVGPOOL: _avgpool,
    Op.ADAPTIVE_AVGPOOL: _adaptive,
    Op.RELU: lambda n, xs: R.saturate(xs[0], *n.attrs["clamp"]),
    Op.RELU6: lambda n, xs: R.saturate(xs[0], *n.attrs["clamp"]),
    Op.FLATTEN: lambda n, xs: xs[0].reshape(n.out.shape),
    Op.SLICE: lambda n, xs: xs[0][:, n.attrs["start"]:n.attrs["stop"]],
    Op.CHANNEL_SHUFFLE: lambda n, xs: xs[0][:, shuffle_source(xs[0].shape[1], n.attrs["groups"])],
    Op.OUTPUT: lambda n, xs: xs[0],
}
