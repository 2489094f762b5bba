"""How far a quantized graph's values may lie from its float function: the error each node's int8
output carries against the float model, predicted from the quantization steps alone.

The error of a node, ŷ − y (dequantized int8 output minus the float model's value), is modelled per
element by a mean ``m`` and a variance ``v`` (docs/quantization.md, "Error model"):

* the input's error is known exactly (x̂ − x); so is every rounding the integer graph does — a
  requantization (``shift_round`` of the accumulator), an alignment shift, an average's rounding,
  a saturation or an activation clamp: the integer reference holds both sides, and the difference
  goes into ``m`` as it is;
* what is not known is each weight's and bias's rounding (the float weights are not in the
  graph): independent, uniform on ±½ step, so variance step²/12 each; a conv's error is then
  mean Ŵ * m_x and variance Ŵ² * v_x + (Δw²/12) · Σ x² + Δb²/12 over its window (Δ: the step,
  Σ x² of the true input, (x̂ − m_x)² + v_x);
* relu / relu6: the true pre-activation is taken as Gaussian around the integer value, and the
  activation's output moments computed in closed form (rectified Gaussian), so an element far in
  the flat part carries no error forward;
* a lookup table (silu, sigmoid, hardswish, hardsigmoid): the table's own rounding, ŷ − f(x̂), is
  known; the input's error goes through the function's slope at x̂ (mean f'·m, variance f'²·v),
  and the envelope grows by at most the function's largest slope (``ir.lut.lipschitz``);
* max-pool takes the error of the element the integer max picked (variance: the window's largest),
  average pools average the mean and, taking the window's errors as fully correlated, the standard
  deviation.

Beside m and v, ``envelope`` is a per-element scale of |ŷ − y| for the max-error tolerance: the
root mean square of the error before an activation plus its clamp (an activation moves no
element further than that, being 1-Lipschitz), the window's largest through a max-pool.

A worst-case bound (Σ |Δw| · |x| + |Ŵ| · bound_x per conv) would be rigorous but grows by each
layer's L1 gain: 10^63 times the output range at ResNet50's logits. The model above predicts the
measured RMS error of the zoo networks within 0.95-1.12 (tests/test_torch_oracle.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from tilesparse.ir.graph import Graph, Node, Op, shuffle_source
from tilesparse.ir.lut import apply_lut, lipschitz
from tilesparse.quant import rounding as R
from tilesparse.quant.quantize import QuantizationError, requant_shifts

__all__ = ["Predicted", "predict_errors"]

UNIFORM_VAR = 1 / 12  # variance of a rounding error uniform on ±½ step, in steps²
RELU6_REAL = float(R.RELU6_MAX)


@dataclass
class Predicted:
    """One node's dequantized int8 output and the predicted error against the float model
    (float64 arrays of the node's shape)."""

    value: np.ndarray
    mean: np.ndarray
    var: np.ndarray
    envelope: np.ndarray

    def reshape(self, shape: tuple[int, ...]) -> Predicted:
        return Predicted(*(a.reshape(shape) for a in (self.value, self.mean, self.var, self.envelope)))

    def channels(self, idx: np.ndarray) -> Predicted:
        """These channels (axis 1), in this order: a slice or a channel shuffle moves errors unchanged."""
        return Predicted(*(a[:, idx] for a in (self.value, self.mean, self.var, self.envelope)))


def predict_errors(g: Graph, x: np.ndarray, ref: Mapping[str, np.ndarray]) -> Iterator[tuple[Node, Predicted]]:
    """(node, prediction) in schedule order. ``x``: the real-valued input the float model reads;
    ``ref``: ``IntegerReference(g).run(x̂, keep_accumulators=True)`` on its quantization. A node's
    arrays are dropped after its last reader, so memory stays near one layer's working set."""
    last = {i: k for k, n in enumerate(g) for i in n.inputs}
    state: dict[str, Predicted] = {}
    for k, n in enumerate(g):
        if n.op is Op.INPUT:
            xq = _deq(ref, n)
            m = xq - np.asarray(x, np.float64).reshape(xq.shape)
            p = Predicted(xq, m, np.zeros_like(m), np.abs(m))
        else:
            p = _RULES[n.op](g, n, [state[i] for i in n.inputs], ref)
        state[n.name] = p
        for i in dict.fromkeys(n.inputs):
            if last[i] == k:
                del state[i]
        yield n, p


def _exp(n: Node) -> int:
    if n.out.scale_exp is None:
        raise QuantizationError(f"node {n.name!r} has no scale exponent: graph not quantized")
    return n.out.scale_exp


def _deq(ref: Mapping[str, np.ndarray], n: Node) -> np.ndarray:
    return R.dequantize(ref[n.name], _exp(n))


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, np.float64))


def _ch(a: np.ndarray) -> np.ndarray:
    return a.reshape(1, -1, 1, 1)


def _weight_exps(g: Graph, n: Node) -> np.ndarray:
    if n.attrs.get("weight_exp") is not None:
        return np.full(n.out.shape[1], int(n.attrs["weight_exp"]), np.int64)
    return g.param(n.name, "weight_exps").astype(np.int64)


def _conv(g: Graph, n: Node, ins: list[Predicted], ref: Mapping[str, np.ndarray]) -> Predicted:
    """Mean Ŵ*m_x, variance Ŵ²*v_x + weight and bias rounding; the requantization is known."""
    x, a = ins[0], n.attrs
    e_in, e_w = _exp(g.node(n.inputs[0])), _weight_exps(g, n)
    w = g.param(n.name, "weight").astype(np.float64) * np.exp2(e_w).reshape(-1, 1, 1, 1)

    def conv(inp: np.ndarray, weight: np.ndarray) -> np.ndarray:
        return F.conv2d(_t(inp), _t(weight), None, a["stride"], a["padding"], a["dilation"], a["groups"]).numpy()

    true_sq = (x.value - x.mean) ** 2 + x.var  # E[x²] of the true input
    step_w2, step_b2 = np.exp2(2 * e_w), np.exp2(2 * (e_w + e_in))
    var = conv(x.var, w * w) + _ch(step_w2 * UNIFORM_VAR) * conv(true_sq, np.ones_like(w)) + _ch(step_b2 * UNIFORM_VAR)
    acc = ref[f"{n.name}.acc"].astype(np.int64)
    r = R.dequantize(R.shift_round(acc, _ch(requant_shifts(g, n))), _exp(n))
    rounding = r - acc * _ch(np.exp2(e_w + e_in))
    return _activate(a.get("activation"), r, _deq(ref, n), conv(x.mean, w) + rounding, var)


def _add(g: Graph, n: Node, ins: list[Predicted], ref: Mapping[str, np.ndarray]) -> Predicted:
    (a, s_a), (b, s_b) = zip(n.inputs, n.attrs["input_shifts"], strict=True)
    aligned = R.shift_round(ref[a].astype(np.int64), s_a) + R.shift_round(ref[b].astype(np.int64), s_b)
    r = R.dequantize(aligned, _exp(n))
    rounding = r - ins[0].value - ins[1].value
    return _activate(n.attrs.get("activation"), r, _deq(ref, n), ins[0].mean + ins[1].mean + rounding,
                     ins[0].var + ins[1].var)


def _mul(g: Graph, n: Node, ins: list[Predicted], ref: Mapping[str, np.ndarray]) -> Predicted:
    """x̂ŷ − xy = x̂·e_y + ŷ·e_x − e_x·e_y; the requantization's rounding is known."""
    a, b = ins
    y = _deq(ref, n)
    known = y - a.value * b.value
    mean = a.value * b.mean + b.value * a.mean - a.mean * b.mean + known
    var = a.value ** 2 * b.var + b.value ** 2 * a.var
    env = np.abs(a.value) * b.envelope + np.abs(b.value) * a.envelope + a.envelope * b.envelope + np.abs(known)
    return Predicted(y, mean, var, env)


def _concat(g: Graph, n: Node, ins: list[Predicted], ref: Mapping[str, np.ndarray]) -> Predicted:
    parts = []
    for name, p, s in zip(n.inputs, ins, n.attrs["input_shifts"], strict=True):
        q = R.saturate(R.shift_round(ref[name].astype(np.int64), s))
        known = R.dequantize(q, _exp(n)) - p.value
        parts.append(Predicted(p.value + known, p.mean + known, p.var, p.envelope + np.abs(known)))
    ax = n.attrs["axis"]
    return Predicted(*(np.concatenate([getattr(p, f) for p in parts], ax)
                       for f in ("value", "mean", "var", "envelope")))


def _activation(g: Graph, n: Node, ins: list[Predicted], ref: Mapping[str, np.ndarray]) -> Predicted:
    x = ins[0]
    return _activate(n.op.value, x.value, _deq(ref, n), x.mean, x.var)


def _lut(g: Graph, n: Node, ins: list[Predicted], ref: Mapping[str, np.ndarray]) -> Predicted:
    """The table's rounding is known; the input's error goes through the slope at the integer input."""
    x, fn = ins[0], n.attrs["fn"]
    xt = _t(x.value).requires_grad_(True)
    fx = apply_lut(fn, xt)
    (slope,) = torch.autograd.grad(fx.sum(), xt)
    s = slope.numpy()
    y = _deq(ref, n)
    known = y - fx.detach().numpy()
    return Predicted(y, s * x.mean + known, s * s * x.var, lipschitz(fn) * x.envelope + np.abs(known))


def _maxpool(g: Graph, n: Node, ins: list[Predicted], ref: Mapping[str, np.ndarray]) -> Predicted:
    """The error of the element the integer max picked; the window's largest variance and envelope."""
    x, a = ins[0], n.attrs
    args = (a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
    _, idx = F.max_pool2d(_t(x.value), *args, return_indices=True)
    flat = idx.numpy().reshape(*idx.shape[:2], -1)
    mean = np.take_along_axis(x.mean.reshape(*x.mean.shape[:2], -1), flat, 2).reshape(idx.shape)

    def pool(z: np.ndarray) -> np.ndarray:
        return F.max_pool2d(_t(z), *args).numpy()

    return Predicted(_deq(ref, n), mean, pool(x.var), pool(x.envelope))


def _average(pool: Callable[[np.ndarray], np.ndarray], x: Predicted, y: np.ndarray) -> Predicted:
    known = y - pool(x.value)  # the integer average's rounding
    return Predicted(y, pool(x.mean) + known, pool(np.sqrt(x.var)) ** 2, pool(x.envelope) + np.abs(known))


def _avgpool(g: Graph, n: Node, ins: list[Predicted], ref: Mapping[str, np.ndarray]) -> Predicted:
    a = n.attrs
    return _average(lambda z: F.avg_pool2d(_t(z), a["kernel"], a["stride"], a["padding"], a["ceil_mode"],
                                           a["count_include_pad"]).numpy(), ins[0], _deq(ref, n))


def _adaptive(g: Graph, n: Node, ins: list[Predicted], ref: Mapping[str, np.ndarray]) -> Predicted:
    return _average(lambda z: F.adaptive_avg_pool2d(_t(z), n.attrs["output_size"]).numpy(), ins[0], _deq(ref, n))


def _reshape(g: Graph, n: Node, ins: list[Predicted], ref: Mapping[str, np.ndarray]) -> Predicted:
    return ins[0].reshape(n.out.shape)


_RULES: dict[Op, Callable[[Graph, Node, list[Predicted], Mapping[str, np.ndarray]], Predicted]] = {
    Op.CONV2D: _conv, Op.ADD: _add, Op.MUL: _mul, Op.CONCAT: _concat, Op.RELU: _activation, Op.RELU6: _activation,
    Op.LUT: _lut,
    Op.MAXPOOL: _maxpool, Op.AVGPOOL: _avgpool, Op.ADAPTIVE_AVGPOOL: _adaptive, Op.FLATTEN: _reshape,
    Op.OUTPUT: _reshape,
    Op.SLICE: lambda g, n, ins, ref: ins[0].channels(np.arange(n.attrs["start"], n.attrs["stop"])),
    Op.CHANNEL_SHUFFLE: lambda g, n, ins, ref: ins[0].channels(shuffle_source(n.out.shape[1], n.attrs["groups"])),
}


def _activate(act: str | None, r: np.ndarray, y: np.ndarray, mean: np.ndarray, var: np.ndarray) -> Predicted:
    """Output of ``act`` (None, "relu", "relu6") whose integer input, before its clamp, is ``r``
    (real units) with error (mean, var) against the true pre-activation; ``y`` is the clamped
    output. The clamp's own difference from the float activation, y − act(r), is known."""
    clamp = y - _ACT[act](r)
    if act is None:
        m = mean + clamp
        return Predicted(y, m, var, np.sqrt(m * m + var))
    mu, sd = r - mean, np.sqrt(var)  # the true pre-activation, taken as Gaussian
    e1, e2 = _positive_part(mu, sd)
    if act == "relu6":
        t1, t2 = _positive_part(mu - RELU6_REAL, sd)  # clip(Y, 0, 6) = Y+ − (Y − 6)+
        e1, e2 = e1 - t1, e2 - t2 - 2 * RELU6_REAL * t1
    envelope = np.abs(clamp) + np.sqrt(mean * mean + var)
    return Predicted(y, _ACT[act](r) + clamp - e1, np.maximum(e2 - e1 * e1, 0.0), envelope)


_ACT: dict[str | None, Callable[[np.ndarray], np.ndarray]] = {
    None: lambda z: z, "relu": lambda z: np.maximum(z, 0.0), "relu6": lambda z: np.clip(z, 0.0, RELU6_REAL)}


def _positive_part(mu: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E[Y+] and E[Y+²] of Y ~ N(mu, sd²) (sd = 0: Y = mu)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z = np.where(sd > 0, mu / np.where(sd > 0, sd, 1.0), np.where(mu > 0, np.inf, -np.inf))
        cdf = torch.special.ndtr(torch.from_numpy(np.asarray(z, np.float64))).numpy()
        pdf = np.where(np.isfinite(z), np.exp(-0.5 * np.minimum(z * z, 1e300)) / np.sqrt(2 * np.pi), 0.0)
    first = mu * cdf + sd * pdf
    second = (mu * mu + sd * sd) * cdf + mu * sd * pdf
    return first, second
