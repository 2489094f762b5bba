"""An ONNX model as a plain module the capture understands.

Route: ONNX → ``torch.fx.GraphModule`` → the torch path (``ir.capture``, the lowering passes,
masks, quantization), not ONNX → IR directly. Every ONNX Conv / Gemm / MatMul / BatchNormalization
becomes a real ``nn.Conv2d`` / ``nn.Linear`` / ``nn.BatchNorm2d`` holding the initializers, every
other op the torch module or function ``ir.capture_ops`` already maps (``nn.ReLU``,
``nn.MaxPool2d`` for a node in a leaf module's scope; ``operator.add``, ``torch.cat`` otherwise).
So there is one mapping to the IR, not two that may drift apart (a direct importer would repeat
every attribute rule of the capture — pads, ceil mode, ReLU6, flatten — and the batch-norm and
mask handling after it): the graph of an exported network is the graph of the network, block
masks come from the all-zero blocks of the initializers exactly as from zero weights
(``passes.masks``), and the lifted module is the float oracle of ``sim.verify`` like any other
source's.

Modules are named after the layer they came from: the weight initializer's name
(``layer1.0.conv1.weight``) or, when the exporter renamed it (batch norm folded into the conv:
``onnx::Conv_193``), the node's module scope (legacy exporter: the node name
``/layer1/layer1.0/conv1/Conv``; dynamo exporter: ``pkg.torch.onnx.name_scopes``), nested as in
the original model; so layer names match the torch path's.

Ops: Conv (grouped too), Gemm, MatMul (constant weight, + Add of a constant bias), Relu,
Clip(0, 6) and Clip(0, ∞), MaxPool, AveragePool, GlobalAveragePool, ReduceMean over H, W, Add,
Concat, Flatten, Reshape (to a flatten), BatchNormalization, Identity, Dropout, Constant; Sigmoid,
HardSigmoid (torch's: alpha 1/6, beta 0.5), HardSwish and Mul(x, Sigmoid(x)) (SiLU, as torch exports
it) as the int8 lookup tables of ``ir.lut``; Split along the channels (``torch.chunk`` / ``torch.split``
and one piece per output) and a channel shuffle's Reshape / Transpose (0, 2, 1, 3, 4) / Reshape (the
capture's ``channel_shuffle``); Mul of two tensors (element-wise, or squeeze-excitation's multiply by
an (N, C, 1, 1) scale) as ``torch.mul`` (``Op.MUL``). A Mul by a constant and any other Transpose are
not in the IR: one line naming the op and the node, as for any other op (an ``UnsupportedOpError``).
Opsets before 11 are refused.

QDQ: DequantizeLinear of an initializer is its real values (pruned zeros stay zeros: the masks);
a QuantizeLinear → DequantizeLinear pair on an activation is the value itself, its power-of-two
scale 2**e kept as that value's exponent (``qdq_exponents`` on the returned module, which the build
hands to ``quant.quantize(exponents=...)``); QLinearConv is the conv of its dequantized weight and
bias. Other scales are re-quantized (calibrated), listed in one notice (``qdq_notices``); a
non-zero zero point is refused. See docs/architecture.md, "ONNX models".
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from tilesparse.errors import ConfigError, UnsupportedOpError

__all__ = ["MIN_OPSET", "ONNX_OPS", "load_onnx"]

MIN_OPSET = 11  # Clip's bounds are inputs from 11 on (attributes before); older files: convert them


def load_onnx(path: Path) -> tuple[fx.GraphModule, tuple[int, ...] | None]:
    """(module, input shape) of the ONNX file at ``path``; a dynamic batch dimension becomes 1,
    any other dynamic (or a non-NCHW) input gives None (the caller asks for --input-shape)."""
    mp = _read(path)
    graph = mp.graph
    inits = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ConfigError(str(path), [f"has {len(inputs)} inputs and {len(graph.output)} outputs; the IR takes "
                                      "one input image tensor and one output"])
    return _Lifter(mp, path.stem).run(inputs[0].name), _input_shape(inputs[0])


def _read(path: Path) -> Any:
    import onnx

    try:
        mp = onnx.load(str(path))
    except Exception as e:  # protobuf DecodeError, a missing external-data file, ...
        first = (str(e).strip().splitlines() or [""])[0][:120]
        raise ConfigError(str(path), [f"not a readable ONNX model ({type(e).__name__} in onnx.load{': ' * bool(first)}"
                                      f"{first})"]) from None
    if not mp.HasField("graph") or not len(mp.graph.node):
        raise ConfigError(str(path), ["not an ONNX model (no graph nodes)"])
    opset = next((o.version for o in mp.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ConfigError(str(path), [f"ONNX opset {opset} is too old; export with opset_version >= {MIN_OPSET} "
                                      "(or convert it: onnx.version_converter.convert_version)"])
    return mp


def _input_shape(vi: Any) -> tuple[int, ...] | None:
    dims = vi.type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims]
    if shape and shape[0] is None:
        shape[0] = 1
    return tuple(d for d in shape if d is not None) if len(shape) == 4 and None not in shape else None


def _attrs(node: Any) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _pads(node: Any, a: dict[str, Any]) -> tuple[int, int]:
    """Symmetric (top, left) padding of a conv / pool; ONNX writes (top, left, bottom, right)."""
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID"):
        raise UnsupportedOpError(f"node {node.name!r} ({node.op_type}): auto_pad={a['auto_pad'].decode()}; "
                                 "export with explicit pads")
    p = list(a.get("pads", [0, 0, 0, 0]))
    if len(p) != 4 or p[:2] != p[2:]:
        raise UnsupportedOpError(f"node {node.name!r} ({node.op_type}): asymmetric pads {p}; only equal padding "
                                 "on both sides")
    return p[0], p[1]


def _scope(node: Any) -> str:
    """Module path of a node: from the dynamo exporter's ``pkg.torch.onnx.name_scopes`` (``['',
    'layer1', '0', 'conv1', 'conv2d']``), else from a legacy-exporter node name
    (``/layer1/layer1.0/conv1/Conv``: each scope names a child, Sequential children as ``parent.i``)."""
    scopes = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.name_scopes"), None)
    if scopes is not None:
        try:
            parts = ast.literal_eval(scopes)
        except (ValueError, SyntaxError):
            parts = []
        return ".".join(str(x) for x in parts[1:-1] if x)
    path: list[str] = []
    for part in node.name.strip("/").split("/")[:-1]:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


class _Lifter:
    """Walk the ONNX nodes once, in order (ONNX graphs are topologically sorted), building the fx
    graph; ``env`` maps an ONNX value to its fx node or, for a constant, its array."""

    def __init__(self, mp: Any, name: str):
        from onnx import numpy_helper

        self.name = name
        self.root = nn.Module()
        self.graph = fx.Graph()
        self.env: dict[str, fx.Node | np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in mp.graph.initializer}
        self.output = mp.graph.output[0].name
        self.nodes = list(mp.graph.node)
        self.biasless: set[str] = set()  # fx names of MatMul linears that an Add may give a bias
        self.scopes = {_scope(n) for n in self.nodes}
        self.exponents: dict[str, int] = {}  # fx node -> the power-of-two exponent its QDQ pair gives it
        self.requantized: list[str] = []  # "'tensor' scale s (nearest 2**e)" for the scales that are not 2**e
        self.weight_of: dict[str, str] = {}  # dequantized weight value -> its int8 initializer's name
        self.readers: dict[str, int] = {}  # ONNX value -> how many nodes read it
        for n in self.nodes:
            for v in n.input:
                self.readers[v] = self.readers.get(v, 0) + 1

    def run(self, input_name: str) -> fx.GraphModule:
        self.env[input_name] = self.graph.placeholder("x")
        for node in self.nodes:
            handler = ONNX_OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if handler is None:
                where = repr(node.name) if node.name else f"(unnamed, output {node.output[0]!r})"
                raise UnsupportedOpError(f"{self.name}: unsupported ONNX op {node.op_type} at node {where}; "
                                         f"supported: {', '.join(sorted(ONNX_OPS))}")
            out = handler(self, node, _attrs(node))
            self.env[node.output[0]] = out
        self.graph.output(self.tensor(self.output, "the graph output"))
        gm = fx.GraphModule(self.root, self.graph, class_name=self.name)
        for fn in gm.graph.nodes:  # a relu / pool / flatten keeps its input's exponent: so does the input
            e = self.exponents.get(fn.name)
            src = fn
            while e is not None and _keeps_exponent(gm, src) and isinstance(src.args[0], fx.Node):
                src = src.args[0]
                self.exponents.setdefault(src.name, e)
        # read by build (quantize(exponents=...)) and source (the build's notices)
        object.__setattr__(gm, "qdq_exponents", dict(self.exponents))
        notices = [f"{self.name}: scales that are not powers of two are re-quantized (calibrated power-of-two "
                   f"scales instead): {'; '.join(self.requantized)}"] if self.requantized else []
        object.__setattr__(gm, "qdq_notices", notices)
        return gm

    # -- operands ------------------------------------------------------------------------------------

    def tensor(self, value: str, node: Any) -> fx.Node:
        v = self.env.get(value)
        if not isinstance(v, fx.Node):
            where = node if isinstance(node, str) else f"node {node.name!r} ({node.op_type})"
            raise UnsupportedOpError(f"{self.name}: {where} reads {value!r} as a tensor, but it is "
                                     f"{'a constant' if v is not None else 'not computed'}; the IR has no such op")
        return v

    def const(self, node: Any, i: int, optional: bool = False) -> np.ndarray | None:
        value = node.input[i] if i < len(node.input) else ""
        if not value:
            if optional:
                return None
            raise UnsupportedOpError(f"{self.name}: node {node.name!r} ({node.op_type}) lacks input {i}")
        v = self.env.get(value)
        if not isinstance(v, np.ndarray):
            raise UnsupportedOpError(f"{self.name}: node {node.name!r} ({node.op_type}): input {value!r} must be "
                                     "a constant (an initializer); the IR takes weights, not computed ones")
        return v

    def call(self, node: Any, fn: Callable[..., Any], *args: Any, module: nn.Module | None = None,
             **kwargs: Any) -> fx.Node:
        """``fn(*args, **kwargs)``; or, for a node in a leaf module's scope (``/layer1/layer1.0/relu/Relu``)
        with a ``module`` form, that module named after the scope: what tracing the network gives."""
        scope = _scope(node)
        if module is not None and scope and not any(s.startswith(scope + ".") for s in self.scopes):
            return self.module(node, module, "")
        layer, _, role = node.name.partition(":")  # tilesparse's export: "<layer>:<op>", its activation "<layer>:relu"
        if module is not None and role and role not in ("relu", "clip") and "/" not in layer \
                and not hasattr(self.root, layer):
            return self.module(node, module, "", layer)
        return self.graph.call_function(fn, args, kwargs)

    def module(self, node: Any, m: nn.Module, weight: str, path: str = "") -> fx.Node:
        """``m`` added under the layer's name (module doc; or ``path``); its call reads the node's first input."""
        weight = self.weight_of.get(weight, weight)
        path = path or (weight.removesuffix(".weight") if weight.endswith(".weight") and "::" not in weight else "")
        path = path or _scope(node) or node.name or node.op_type.lower()
        parts = ["".join(c if c.isalnum() or c == "_" else "_" for c in p) or "_" for p in path.split(".")]
        parent = self.root
        for i, part in enumerate(parts[:-1]):  # nested as in the original model: the module path is the IR source
            while hasattr(parent, part) and not isinstance(getattr(parent, part), nn.Module):
                part += "_"  # a scope named like an attribute of nn.Module ("training")
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent, parts[i] = getattr(parent, part), part
        same = getattr(parent, parts[-1], None)
        if not (isinstance(same, nn.Module) and not any(m.parameters()) and repr(same) == repr(m)):
            while hasattr(parent, parts[-1]):  # a weightless module called twice (resnet's relu) is one module
                parts[-1] += "_"
            parent.add_module(parts[-1], m.eval())
        target = ".".join(parts)
        return self.graph.call_module(target, (self.tensor(node.input[0], node),))


# -- handlers: one per ONNX op, returning the fx node (or constant) of the node's first output --------


def _conv(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    w, bias = b.const(node, 1), b.const(node, 2, optional=True)
    assert w is not None
    if w.ndim != 4:
        raise UnsupportedOpError(f"{b.name}: node {node.name!r} (Conv): {w.ndim - 2}-D convolution; only 2-D")
    groups = int(a.get("group", 1))
    m = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=tuple(a.get("strides", (1, 1))),
                  padding=_pads(node, a), dilation=tuple(a.get("dilations", (1, 1))), groups=groups,
                  bias=bias is not None)
    return b.module(node, _load(m, w, bias), node.input[1])


def _gemm(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    w, bias = b.const(node, 1), b.const(node, 2, optional=True)
    assert w is not None
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0 or (bias is not None and a.get("beta", 1.0) != 1.0):
        raise UnsupportedOpError(f"{b.name}: node {node.name!r} (Gemm): transA / alpha / beta other than 0 / 1 / 1")
    w = w if a.get("transB", 0) else w.T
    if bias is not None:
        bias = np.broadcast_to(np.ravel(bias), (w.shape[0],))
    return b.module(node, _load(nn.Linear(w.shape[1], w.shape[0], bias=bias is not None), w, bias), node.input[1])


def _matmul(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    w = b.const(node, 1)
    assert w is not None
    if w.ndim != 2:
        raise UnsupportedOpError(f"{b.name}: node {node.name!r} (MatMul): a rank-{w.ndim} weight; only 2-D")
    out = b.module(node, _load(nn.Linear(w.shape[0], w.shape[1], bias=False), w.T, None), node.input[1])
    b.biasless.add(out.name)
    return out


def _add(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    x, y = (b.env.get(v) for v in node.input[:2])
    if isinstance(x, np.ndarray):
        x, y = y, x
    if isinstance(x, fx.Node) and isinstance(y, np.ndarray) and x.name in b.biasless and y.ndim == 1:
        m = b.root.get_submodule(str(x.target))
        with torch.no_grad():
            m.bias = nn.Parameter(torch.from_numpy(np.array(y, np.float32)))  # MatMul + Add = a linear
        b.biasless.discard(x.name)
        return x
    if isinstance(x, fx.Node) and isinstance(y, np.ndarray) and node.name.endswith(":half_up"):
        return x  # tilesparse's export: half a step added before a Q, so ONNX's rounding is the reference's
    return b.call(node, operator.add, b.tensor(node.input[0], node), b.tensor(node.input[1], node))


def _batchnorm(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    scale, bias, mean, var = (b.const(node, i) for i in (1, 2, 3, 4))
    assert scale is not None and mean is not None and var is not None
    # ONNX stores epsilon as float32; its shortest decimal is the value the exporter was given (0.001,
    # not 0.0010000000474974513), which the batch-norm fold must see to fold exactly as the torch path
    m = nn.BatchNorm2d(mean.shape[0], eps=float(str(np.float32(a.get("epsilon", 1e-5)))))
    with torch.no_grad():
        m.get_buffer("running_mean").copy_(torch.from_numpy(np.array(mean, np.float32)))
        m.get_buffer("running_var").copy_(torch.from_numpy(np.array(var, np.float32)))
    return b.module(node, _load(m, scale, bias), node.input[1])


@torch.no_grad()
def _load(m: nn.Module, w: np.ndarray, bias: np.ndarray | None) -> nn.Module:
    m.get_parameter("weight").copy_(torch.from_numpy(np.array(w, np.float32)))
    if bias is not None:
        m.get_parameter("bias").copy_(torch.from_numpy(np.array(bias, np.float32)))
    return m


def _clip(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    lo, hi = (b.const(node, i, optional=True) for i in (1, 2))
    bounds = (-math.inf if lo is None else float(lo), math.inf if hi is None else float(hi))
    x = b.tensor(node.input[0], node)
    if bounds == (0.0, 6.0):
        return b.call(node, F.hardtanh, x, 0.0, 6.0, module=nn.ReLU6())
    if bounds == (0.0, math.inf):
        return b.call(node, torch.relu, x, module=nn.ReLU())
    raise UnsupportedOpError(f"{b.name}: node {node.name!r} (Clip): bounds {bounds}; only Clip(0, 6) (ReLU6) "
                             "and Clip(0, ∞) (ReLU) are in the IR")


def _pool_args(node: Any, a: dict[str, Any]) -> dict[str, Any]:
    k = tuple(a["kernel_shape"])
    return {"kernel_size": k, "stride": tuple(a.get("strides", (1, 1))), "padding": _pads(node, a),
            "ceil_mode": bool(a.get("ceil_mode", 0))}


def _maxpool(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    if len(node.output) > 1 and node.output[1]:
        raise UnsupportedOpError(f"{b.name}: node {node.name!r} (MaxPool): its indices output is not in the IR")
    kw = _pool_args(node, a) | {"dilation": tuple(a.get("dilations", (1, 1)))}
    return b.call(node, F.max_pool2d, b.tensor(node.input[0], node), module=nn.MaxPool2d(**kw), **kw)


def _avgpool(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    kw = _pool_args(node, a) | {"count_include_pad": bool(a.get("count_include_pad", 0))}
    return b.call(node, F.avg_pool2d, b.tensor(node.input[0], node), module=nn.AvgPool2d(**kw), **kw)


def _global_avgpool(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    x = b.tensor(node.input[0], node)
    return b.call(node, F.adaptive_avg_pool2d, x, (1, 1), module=nn.AdaptiveAvgPool2d((1, 1)))


def _reduce_mean(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    axes = a.get("axes")
    if axes is None:
        axes = b.const(node, 1, optional=True)
    if axes is None or sorted(int(x) % 4 for x in np.ravel(axes)) != [2, 3]:
        raise UnsupportedOpError(f"{b.name}: node {node.name!r} (ReduceMean) over axes "
                                 f"{None if axes is None else list(np.ravel(axes))}; only the mean over H, W (2, 3)")
    x = b.tensor(node.input[0], node)
    pooled = b.call(node, F.adaptive_avg_pool2d, x, (1, 1), module=nn.AdaptiveAvgPool2d((1, 1)))
    return pooled if a.get("keepdims", 1) else b.call(node, torch.flatten, pooled, 1)


def _concat(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    return b.call(node, torch.cat, [b.tensor(v, node) for v in node.input], int(a["axis"]))


def _flatten(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    axis = int(a.get("axis", 1))
    return b.call(node, torch.flatten, b.tensor(node.input[0], node), axis, module=nn.Flatten(axis))


def _reshape(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    shape = b.const(node, 1)
    assert shape is not None
    x = b.tensor(node.input[0], node)
    dims: list[Any] = [int(d) for d in shape]
    for i, d in enumerate(dims):  # ONNX 0: "this dimension of the input" (capture reads x.size(i))
        if d == 0 and not a.get("allowzero", 0):
            dims[i] = b.graph.call_method("size", (x, i))
    return b.call(node, torch.reshape, x, tuple(dims))


def _identity(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node | np.ndarray:
    v = b.env.get(node.input[0])
    return v if isinstance(v, np.ndarray) else b.tensor(node.input[0], node)


def _constant(b: _Lifter, node: Any, a: dict[str, Any]) -> np.ndarray:
    from onnx import numpy_helper

    if "value" not in a:
        raise UnsupportedOpError(f"{b.name}: node {node.name!r} (Constant): only a tensor 'value'")
    return numpy_helper.to_array(a["value"])


def _keeps_exponent(gm: fx.GraphModule, fn: fx.Node) -> bool:
    """Ops whose output keeps the input's exponent in ``quant.plan_exponents``."""
    if fn.op == "call_module":
        return isinstance(gm.get_submodule(str(fn.target)), (nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.Flatten))
    return fn.op == "call_function" and fn.target in (torch.relu, F.hardtanh, F.max_pool2d, torch.flatten)


def _pow2(b: _Lifter, node: Any, scale: np.ndarray, value: str) -> int | None:
    """The exponent e of a scale 2**e (one per tensor); None, with a note, for any other scale."""
    s = np.ravel(np.asarray(scale, np.float64))
    if s.size == 0 or np.any(s <= 0) or not np.all(np.isfinite(s)):
        raise UnsupportedOpError(f"{b.name}: node {node.name!r} ({node.op_type}): scale {s.tolist()} is not positive")
    e = np.rint(np.log2(s)).astype(np.int64)
    if np.array_equal(np.ldexp(1.0, e), s) and len(set(e.tolist())) == 1:
        return int(e[0])
    worst = int(np.argmax(np.abs(np.log2(s) - e)))
    b.requantized.append(f"{value!r} scale {s[worst]:.6g} (nearest 2**{int(e[worst])})"
                         + (f" and {s.size - 1} other channels" if s.size > 1 else ""))
    return None


def _zero_point(b: _Lifter, node: Any, i: int) -> None:
    zp = b.const(node, i, optional=True)
    if zp is not None and np.any(np.asarray(zp) != 0):
        raise UnsupportedOpError(f"{b.name}: node {node.name!r} ({node.op_type}): zero point "
                                 f"{np.ravel(zp)[:4].tolist()}; the IR's int8 is symmetric (zero point 0)")


def _per_axis(v: np.ndarray, scale: np.ndarray, axis: int) -> np.ndarray:
    s = np.asarray(scale, np.float64)
    if s.ndim == 1 and s.size > 1:
        shape = [1] * v.ndim
        shape[axis % v.ndim] = s.size
        s = s.reshape(shape)
    return s


def _quantize_linear(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node | np.ndarray:
    """Q of an activation: in the float module, the value itself; its exponent (a power-of-two scale)
    is kept for the quantizer, the first Q of a value being its own (a later one re-quantizes an
    operand). Q of a constant: the int8 codes."""
    scale = b.const(node, 1)
    assert scale is not None
    _zero_point(b, node, 2)
    v = b.env.get(node.input[0])
    if isinstance(v, np.ndarray):
        return np.clip(np.rint(v / _per_axis(v, scale, int(a.get("axis", 1)))), -128, 127).astype(np.int8)
    x = b.tensor(node.input[0], node)
    e = _pow2(b, node, scale, node.input[0])
    if e is not None:
        b.exponents.setdefault(x.name, e)
    return x


def _dequantize_linear(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node | np.ndarray:
    """DQ of an initializer (a weight, a bias): its real values (the pruned zeros stay zeros, so masks
    come from them); DQ of a Q'd activation: the value itself."""
    v = b.env.get(node.input[0])
    if not isinstance(v, np.ndarray):
        return b.tensor(node.input[0], node)
    scale = b.const(node, 1)
    assert scale is not None
    _zero_point(b, node, 2)
    _pow2(b, node, scale, node.input[0])
    b.weight_of[node.output[0]] = node.input[0]
    return (np.asarray(v, np.float64) * _per_axis(v, scale, int(a.get("axis", 1)))).astype(np.float32)


def _qlinear_conv(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    """QLinearConv(x, x_scale, x_zp, w, w_scale, w_zp, y_scale, y_zp, B): the float conv of the
    dequantized weight and bias (B at x_scale · w_scale), its output at y_scale."""
    xs, ws, ys, w = (b.const(node, i) for i in (1, 4, 6, 3))
    assert xs is not None and ws is not None and ys is not None and w is not None
    for i in (2, 5, 7):
        _zero_point(b, node, i)
    _pow2(b, node, ws, node.input[4])
    wf = (np.asarray(w, np.float64) * _per_axis(w, ws, 0)).astype(np.float32)
    q = b.const(node, 8, optional=True)
    bias = None if q is None else (np.asarray(q, np.float64) * float(np.ravel(xs)[0]) * np.ravel(ws)).astype(np.float32)
    if wf.ndim != 4:
        raise UnsupportedOpError(f"{b.name}: node {node.name!r} (QLinearConv): {wf.ndim - 2}-D convolution; only 2-D")
    groups = int(a.get("group", 1))
    m = nn.Conv2d(wf.shape[1] * groups, wf.shape[0], tuple(wf.shape[2:]), stride=tuple(a.get("strides", (1, 1))),
                  padding=_pads(node, a), dilation=tuple(a.get("dilations", (1, 1))), groups=groups,
                  bias=bias is not None)
    out = b.module(node, _load(m, wf, bias), node.input[3])
    e = _pow2(b, node, ys, node.output[0])
    if e is not None:
        b.exponents.setdefault(out.name, e)
    return out


def _sigmoid(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    return b.call(node, torch.sigmoid, b.tensor(node.input[0], node), module=nn.Sigmoid())


def _hard(node: Any, a: dict[str, Any], where: str) -> None:
    """ONNX's HardSigmoid is max(0, min(1, alpha·x + beta)) with alpha 0.2 by default; torch's (and the
    lookup table's) is relu6(x + 3) / 6: alpha 1/6, beta 0.5, what torch.onnx.export writes."""
    alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
    if not (math.isclose(alpha, 1 / 6, rel_tol=1e-6) and math.isclose(beta, 0.5, rel_tol=1e-6)):
        raise UnsupportedOpError(f"{where}: node {node.name!r} (HardSigmoid) alpha={alpha:g}, beta={beta:g}; only "
                                 "torch's hardsigmoid (alpha=1/6, beta=0.5) is a lookup table in the IR")


def _hardsigmoid(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    _hard(node, a, b.name)
    return b.call(node, F.hardsigmoid, b.tensor(node.input[0], node), module=nn.Hardsigmoid())


def _hardswish(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    return b.call(node, F.hardswish, b.tensor(node.input[0], node), module=nn.Hardswish())


def _is_sigmoid(b: _Lifter, n: fx.Node) -> bool:
    if n.op == "call_module":
        return isinstance(b.root.get_submodule(str(n.target)), nn.Sigmoid)
    return n.op == "call_function" and n.target is torch.sigmoid


def _mul(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    """``x * sigmoid(x)``, how torch.onnx.export writes SiLU (ONNX has no such op before opset 24), is
    the SiLU lookup table; any other Mul of two tensors (squeeze-excitation's broadcast multiply, or
    equal shapes) is ``torch.mul``, which capture reads as ``Op.MUL``; a Mul by a constant is refused."""
    x, y = (b.env.get(v) for v in node.input[:2])
    for s, other, v in ((y, x, node.input[1]), (x, y, node.input[0])):
        if isinstance(s, fx.Node) and isinstance(other, fx.Node) and _is_sigmoid(b, s) and s.args[0] is other \
                and b.readers.get(v) == 1 and len(s.users) == 0:
            target = str(s.target) if s.op == "call_module" else None
            b.graph.erase_node(s)
            if target is not None:  # the SiLU module takes its name
                parent, _, leaf = target.rpartition(".")
                delattr(b.root.get_submodule(parent), leaf)
            return b.call(node, F.silu, other, module=nn.SiLU())
    if isinstance(x, fx.Node) and isinstance(y, fx.Node):
        return b.call(node, torch.mul, x, y)
    raise UnsupportedOpError(f"{b.name}: unsupported ONNX op Mul at node {node.name!r}: a multiply by a constant; "
                             "only tensor * tensor (element-wise, or by an (N, C, 1, 1) scale) is in the IR")


def _transpose(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    """Only the middle step of a channel shuffle (Reshape to (N, g, C/g, H, W), Transpose perm
    (0, 2, 1, 3, 4), Reshape back): ``torch.transpose(x, 1, 2)``, which capture reads with the
    reshapes around it as one ``channel_shuffle``."""
    perm = [int(p) for p in a.get("perm", [])]
    if perm != [0, 2, 1, 3, 4]:
        raise UnsupportedOpError(f"{b.name}: unsupported ONNX op Transpose at node {node.name!r} (perm {perm}): "
                                 "only a channel shuffle's (0, 2, 1, 3, 4) between two Reshapes is in the IR")
    return b.call(node, torch.transpose, b.tensor(node.input[0], node), 1, 2)


def _split(b: _Lifter, node: Any, a: dict[str, Any]) -> fx.Node:
    """Split into channel pieces: ``torch.split`` (sizes from input 2 or attr ``split``) or
    ``torch.chunk`` (equal pieces); each output is a piece (``operator.getitem``), as capture reads
    ``a, b = x.chunk(2, dim=1)``. The first output is returned, the others set here."""
    x = b.tensor(node.input[0], node)
    axis = int(a.get("axis", 0))
    sizes = b.const(node, 1, optional=True)
    if sizes is None and "split" in a:
        sizes = np.asarray(a["split"])
    n = len(node.output)
    pieces = (b.graph.call_function(torch.chunk, (x, n, axis)) if sizes is None
              else b.graph.call_function(torch.split, (x, [int(s) for s in sizes], axis)))
    outs = [b.graph.call_function(operator.getitem, (pieces, k)) for k in range(n)]
    for v, o in zip(node.output[1:], outs[1:], strict=True):
        b.env[v] = o
    return outs[0]


ONNX_OPS: dict[str, Callable[[_Lifter, Any, dict[str, Any]], Any]] = {
    "Conv": _conv, "Gemm": _gemm, "MatMul": _matmul, "Add": _add, "BatchNormalization": _batchnorm,
    "Relu": lambda b, n, a: b.call(n, torch.relu, b.tensor(n.input[0], n), module=nn.ReLU()), "Clip": _clip,
    "MaxPool": _maxpool, "AveragePool": _avgpool, "GlobalAveragePool": _global_avgpool, "ReduceMean": _reduce_mean,
    "Concat": _concat, "Flatten": _flatten, "Reshape": _reshape, "Identity": _identity, "Dropout": _identity,
    "Constant": _constant, "Sigmoid": _sigmoid, "HardSigmoid": _hardsigmoid, "HardSwish": _hardswish,
    "Mul": _mul, "Transpose": _transpose, "Split": _split, "QuantizeLinear": _quantize_linear,
    "DequantizeLinear": _dequantize_linear, "QLinearConv": _qlinear_conv,
}
