"""Post-training quantization of a lowered graph to int8 with power-of-two scales.

``quantize`` (1) calibrates: runs the float graph on the calibration inputs and keeps each node's
max-abs output; (2) picks one exponent per tensor (:func:`plan_exponents`); (3) rewrites every node
with int8 outputs and the integer attributes of ``docs/quantization.md``:

=================  ===========================================================================
node               after quantization
=================  ===========================================================================
every node         ``out = TensorType(shape, "int8", scale_exp=e)``
conv2d             param ``weight`` int8, ``bias`` int32 at exponent e_in + e_w (zeros if the
                   float conv had none; e_w is raised where the bias would not fit int32);
                   per-tensor: attrs ``weight_exp``, ``shift``;
                   per-channel: params ``weight_exps``, ``shifts`` (int32, one per output
                   channel) and attrs ``weight_exp = shift = None``; attr ``clamp`` (lo, hi)
add                attrs ``input_shifts`` (s_a, s_b) aligning each operand to e_out, ``clamp``
concat             attr ``input_shifts``: one per operand, 0 where the producer already writes
                   at the concat's exponent; an operand with a non-zero shift loses its
                   ``write_into`` mark (``passes.reuse.drop_shifted_slices``): it cannot write its
                   slice unshifted, the back end copies it in with the shift
relu, relu6        attr ``clamp``
lut                param ``table``: 256 int8 entries, the float function at the input's and
                   its own calibrated exponent (``quant.lut``)
pools, flatten     nothing new: the output keeps the input's exponent
every node         attr ``zero_frac``: the fraction of zero bytes of its int8 output over the
                   first ``ZERO_FRAC_INPUTS`` calibration inputs, run through the integer
                   reference (what DMA zero compression can drop; docs/time-model.md)
=================  ===========================================================================

With ``sdq=SDQConfig(...)`` the chosen convs store SDQ parts instead of an int8 ``weight``
(:mod:`tilesparse.quant.sdq_graph`); every other node is exactly what it is without the option.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from tilesparse.errors import ConfigError, TilesparseError
from tilesparse.ir.graph import Graph, Node, Op, TensorType
from tilesparse.ir.interpret import run_float
from tilesparse.passes.reuse import drop_shifted_slices
from tilesparse.quant import rounding as R
from tilesparse.quant.lut import lut_table
from tilesparse.quant.sdq import sdq as sdq_split
from tilesparse.quant.sdq_graph import SDQConfig, given_parts, sdq_attr, select_sdq_layers

__all__ = ["QuantizationError", "calibrate", "plan_exponents", "quantize", "requant_shifts", "zero_fractions"]

_REQUANTIZING = (Op.CONV2D, Op.ADD, Op.MUL, Op.CONCAT, Op.LUT)  # can produce any output exponent
_INT8 = "int8"
CALIB_BATCH = 4  # inputs per float forward: one batched GEMM per layer is ~1.5x faster than singles
ZERO_FRAC_INPUTS = 2  # calibration inputs the integer reference runs to measure activation zeros


class QuantizationError(TilesparseError):
    """The graph cannot be quantized as asked (names the node and the value out of range)."""


def calibrate(g: Graph, calib_inputs: Sequence[np.ndarray | torch.Tensor]) -> dict[str, float]:
    """Max-abs of every node's float output over the calibration inputs (run in batches)."""
    if not calib_inputs:
        raise QuantizationError(f"graph {g.name}: quantization needs at least one calibration input")
    shape = (-1, *g.inputs[0].out.shape[1:])
    xs = [(x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x)))
          .to(torch.float32).reshape(shape) for x in calib_inputs]
    stats: dict[str, float] = {}
    for i in range(0, len(xs), CALIB_BATCH):
        for name, t in run_float(g, torch.cat(xs[i : i + CALIB_BATCH])).items():
            m = float(t.abs().max()) if t.numel() else 0.0
            if not np.isfinite(m):
                raise QuantizationError(f"graph {g.name}: node {name!r} is not finite on calibration")
            stats[name] = max(stats.get(name, 0.0), m)
    return stats


def plan_exponents(g: Graph, stats: Mapping[str, float], given: Mapping[str, int] | None = None) -> dict[str, int]:
    """One power-of-two exponent per node output.

    Inputs, convs, adds and lookup tables take their own calibrated exponent (a table maps to any
    output scale, and a sigmoid's range is not its input's); pools, flatten, relu and the output
    keep their input's; a concat takes the largest exponent of its operands that are not all zero
    on calibration (nothing saturates; an all-zero operand's exponent, ``ZERO_TENSOR_EXP``, says
    nothing about the range, and taking it would round every other operand to that coarse step),
    and each operand that can requantize and is read only by the concat is moved to that exponent
    so it can write straight into its slice (outer concats first, so nested concats agree).

    ``given``: exponents fixed in advance (an imported QDQ model's power-of-two scales), used as
    they are for the inputs, convs, adds, tables and concats they name; other names are ignored.
    """
    ops = {n.name: n.op for n in g}
    given = {k: int(v) for k, v in (given or {}).items()
             if ops.get(k) in (Op.INPUT, Op.CONV2D, Op.ADD, Op.MUL, Op.LINEAR, Op.LUT, Op.CONCAT)}
    exps: dict[str, int] = {}
    for n in g:
        if n.name in given:
            exps[n.name] = given[n.name]
        elif n.op in (Op.INPUT, Op.CONV2D, Op.ADD, Op.MUL, Op.LINEAR, Op.LUT):
            exps[n.name] = R.pow2_exponent(stats[n.name])
        elif n.op is Op.CONCAT:
            live = [exps[i] for i in n.inputs if stats.get(i, 1.0) > 0]
            exps[n.name] = max(live or [exps[i] for i in n.inputs])
        else:
            exps[n.name] = exps[n.inputs[0]]
    readers: dict[str, int] = {}
    for n in g:
        for i in n.inputs:
            readers[i] = readers.get(i, 0) + 1
    for cat in reversed(g.of(Op.CONCAT)):
        for i in cat.inputs:
            if g.node(i).op in _REQUANTIZING and readers[i] == 1 and i not in given:
                exps[i] = exps[cat.name]
    return exps


def quantize(
    g: Graph, calib_inputs: Sequence[np.ndarray | torch.Tensor], per_channel: bool = False,
    sdq: SDQConfig | Sequence[SDQConfig] | None = None, exponents: Mapping[str, int] | None = None,
) -> Graph:
    """Quantize a lowered graph (no batch-norm or linear left) to int8; see the module doc.

    ``exponents``: node name -> output exponent fixed in advance (:func:`plan_exponents`' ``given``).

    ``sdq``: the layers to store as SDQ parts (a structured-sparse int8 part plus a dense int4
    part by default), computed exactly by ``IntegerReference``; None: none.
    """
    left = [n.name for n in g.of(Op.BATCHNORM, Op.LINEAR)]
    if left:
        raise QuantizationError(f"graph {g.name}: run passes.lower first; still has {left[:3]}")
    chosen = select_sdq_layers(g, sdq)
    exps = plan_exponents(g, calibrate(g, calib_inputs), exponents)
    params = dict(g.params)
    nodes = []
    for n in g:
        attrs = dict(n.attrs)
        ins = [exps[i] for i in n.inputs]
        if n.op is Op.CONV2D and n.name in chosen:
            attrs.update(_quantize_sdq_conv(g, n, ins[0], exps[n.name], chosen[n.name], params))
        elif n.op is Op.CONV2D:
            attrs.update(_quantize_conv(g, n, ins[0], exps[n.name], per_channel, params))
        elif n.op is Op.ADD:
            attrs["input_shifts"] = tuple(exps[n.name] - e for e in ins)
            attrs["clamp"] = R.activation_clamp(n.attrs.get("activation"), exps[n.name])
        elif n.op is Op.MUL:  # int8 · int8 at exponent e_x + e_y, requantized to e_out
            attrs["shift"] = exps[n.name] - sum(ins)
            attrs["clamp"] = R.activation_clamp(None, exps[n.name])
        elif n.op is Op.CONCAT:
            attrs["input_shifts"] = tuple(exps[n.name] - e for e in ins)
        elif n.op in (Op.RELU, Op.RELU6):
            attrs["clamp"] = R.activation_clamp(n.op.value, exps[n.name])
        elif n.op is Op.LUT:
            params[f"{n.name}.table"] = lut_table(n.attrs["fn"], ins[0], exps[n.name])
        nodes.append(n.with_(attrs=attrs, out=TensorType(n.out.shape, _INT8, exps[n.name])))
    q = drop_shifted_slices(g.replace_nodes(nodes, params))
    zeros = zero_fractions(q, calib_inputs[:ZERO_FRAC_INPUTS])
    return q.replace_nodes([n.with_(attrs={**n.attrs, "zero_frac": zeros[n.name]}) for n in q], q.params)


def zero_fractions(g: Graph, inputs: Sequence[np.ndarray | torch.Tensor]) -> dict[str, float]:
    """Fraction of zero bytes in each node's int8 output of the quantized graph ``g`` over
    ``inputs`` (real-valued, one batch of the graph's input shape each), run by the integer
    reference; rounded to 4 digits."""
    from tilesparse.quant.reference import IntegerReference

    ref = IntegerReference(g)
    shape = g.inputs[0].out.shape
    zeros: dict[str, int] = {}
    total: dict[str, int] = {}
    for x in inputs:
        xa = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)).astype(np.float32)
        xa = xa.reshape(-1, *shape[1:])
        for b in range(0, xa.shape[0] - shape[0] + 1, shape[0]):
            for name, y in ref.run(xa[b:b + shape[0]]).items():
                zeros[name] = zeros.get(name, 0) + int(np.count_nonzero(y == 0))
                total[name] = total.get(name, 0) + int(y.size)
    return {n.name: round(zeros.get(n.name, 0) / total[n.name], 4) if total.get(n.name) else 0.0 for n in g}


def _quantize_conv(
    g: Graph, n: Node, e_in: int, e_out: int, per_channel: bool, params: dict[str, np.ndarray]
) -> dict[str, Any]:
    w = g.param(n.name, "weight")
    b = g.params.get(f"{n.name}.bias")
    b = np.zeros(w.shape[0]) if b is None else b.astype(np.float64)
    e_w = _weight_exponents(w, b, e_in, per_channel, e_out)
    e_acc = e_in + e_w  # the accumulator's exponent, per output channel
    params[f"{n.name}.weight"] = R.quantize_real(w, e_w.reshape(-1, 1, 1, 1)).astype(np.int8)
    params[f"{n.name}.bias"] = R.quantize_real(b, e_acc, R.INT32_MIN, R.INT32_MAX).astype(np.int32)
    shifts = (e_out - e_acc).astype(np.int32)
    attrs: dict[str, Any] = {"clamp": R.activation_clamp(n.attrs.get("activation"), e_out)}
    if per_channel:
        params[f"{n.name}.weight_exps"] = e_w.astype(np.int32)
        params[f"{n.name}.shifts"] = shifts
        attrs.update(weight_exp=None, shift=None)
    else:
        attrs.update(weight_exp=int(e_w[0]), shift=int(shifts[0]))
    return attrs


def _quantize_sdq_conv(
    g: Graph, n: Node, e_in: int, e_out: int, cfg: SDQConfig, params: dict[str, np.ndarray]
) -> dict[str, Any]:
    """SDQ parts in place of the int8 weight (layout in :mod:`tilesparse.quant.sdq_graph`)."""
    try:
        w = g.param(n.name, "weight")
        d = given_parts(cfg, n, w) or sdq_split(w, cfg.pattern, cfg.sparse_bits, cfg.dense_bits, n.attrs["groups"])
    except ConfigError as e:
        raise ConfigError(f"sdq layer {n.name!r}", e.errors) from None
    # an all-zero part may take any exponent: the other part's, so both align by left shifts
    e_s = d.sparse_exp if d.sparse.any() or not d.dense.any() else d.dense_exp
    e_d = d.dense_exp if d.dense.any() or not d.sparse.any() else d.sparse_exp
    if not (d.sparse.any() or d.dense.any()):
        e_s = e_d = e_out - e_in  # every weight zero: the bias keeps the output's resolution
    e_w = min(e_s, e_d)
    b = g.params.get(f"{n.name}.bias")
    b = np.zeros(d.dense.shape[0]) if b is None else b.astype(np.float64)
    b_max = float(np.abs(b).max(initial=0.0))
    if b_max > 0 and R.pow2_exponent(b_max, R.INT32_MAX) > e_in + e_w:
        raise QuantizationError(f"sdq layer {n.name!r}: bias {b_max:g} does not fit int32 at the parts' "
                                f"exponent {e_in + e_w}; leave this layer out of SDQ")
    del params[f"{n.name}.weight"]
    params[f"{n.name}.sdq_sparse"] = d.sparse.astype(np.int8)
    params[f"{n.name}.sdq_mask"] = d.mask
    params[f"{n.name}.sdq_dense"] = d.dense.astype(np.int8)
    params[f"{n.name}.bias"] = R.quantize_real(b, e_in + e_w, R.INT32_MIN, R.INT32_MAX).astype(np.int32)
    return {"clamp": R.activation_clamp(n.attrs.get("activation"), e_out), "weight_exp": e_w,
            "shift": e_out - e_in - e_w, "sdq": sdq_attr(cfg, e_s, e_d)}


def _weight_exponents(w: np.ndarray, b: np.ndarray, e_in: int, per_channel: bool, e_out: int) -> np.ndarray:
    """Weight exponent of each output channel (int64, length O).

    Per tensor: exponent(max|W|) repeated; per channel: each channel's own (an all-zero channel
    takes the tensor's, so its bias keeps a sensible resolution). An all-zero weight (every block
    pruned) takes ``e_out - e_in``: the accumulator then has the output's step, so the bias (all
    that is left) keeps the output's resolution instead of ``ZERO_TENSOR_EXP``'s. Either is then
    raised where the bias would not fit int32 at e_in + e_w (only in degenerate nets whose
    activations vanish, e.g. random-init GoogLeNet: there the bias dominates the sum and the
    weights' last bits do not matter).
    """
    w_max = float(np.abs(w).max(initial=0.0))
    tensor_exp = R.pow2_exponent(w_max) if w_max > 0 else e_out - e_in
    if per_channel:
        ch_max = np.abs(w.reshape(w.shape[0], -1)).max(axis=1, initial=0.0)
        e_w = np.array([R.pow2_exponent(float(m)) if m > 0 else tensor_exp for m in ch_max], np.int64)
        bias_need = np.array([R.pow2_exponent(float(abs(v)), R.INT32_MAX) for v in b], np.int64)
    else:
        e_w = np.full(w.shape[0], tensor_exp, np.int64)
        bias_need = np.full(w.shape[0], R.pow2_exponent(float(np.abs(b).max(initial=0.0)), R.INT32_MAX))
    return np.maximum(e_w, np.where(np.abs(b) > 0, bias_need - e_in, e_w))


def requant_shifts(g: Graph, n: Node) -> np.ndarray:
    """Requantization shift of each output channel of quantized conv ``n`` (int64, length O)."""
    if n.attrs.get("shift") is not None:
        return np.full(n.out.shape[1], int(n.attrs["shift"]), np.int64)
    return g.param(n.name, "shifts").astype(np.int64)
