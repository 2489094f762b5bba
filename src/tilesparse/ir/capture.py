"""Capture an ``nn.Module`` into the tilesparse IR through ``torch.fx``.

``capture`` traces the module symbolically and propagates shapes with one zero input (``trace``:
in-place ops functionalised or refused by ``tilesparse.ir.inplace``, nodes that do not feed the
output dropped), and maps every fx node to an IR node (``tilesparse.ir.graph``) of the same name.
Identity-like nodes (``nn.Dropout`` in eval, ``nn.Identity``, ``x.size(0)`` / ``x.shape`` feeding a
flatten, and the size / floordiv / rank-5 view / transpose steps of torchvision's channel shuffle,
which becomes one ``channel_shuffle`` node) disappear; anything outside the IR is an
:class:`UnsupportedOpError` naming the op, the fx node and the module path.

Not handled: torchvision inception_v3 with ``transform_input=True`` (per-channel affine on constants,
which is what ``weights=...`` turns on) — build it with ``tilesparse.models.get_model`` instead.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from tilesparse.errors import ConfigError, UnsupportedOpError
from tilesparse.ir.capture_ops import FUNCTION_OPS, METHOD_OPS, MODULE_OPS, Emit, Lowered
from tilesparse.ir.graph import Graph, Node, Op, TensorType
from tilesparse.ir.inplace import InplaceTracer, functionalize

__all__ = ["capture", "trace"]

DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)


def capture(
    model: nn.Module,
    input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
    name: str | None = None,
) -> Graph:
    """Trace ``model`` (put in eval mode) and return its IR graph with float32 shapes.

    Example:
        >>> from tilesparse.models import get_model
        >>> g = capture(get_model("resnet18"), (1, 3, 64, 64), name="resnet18")
        >>> [n.op.value for n in g.nodes[:3]]
        ['input', 'conv2d', 'batchnorm']
    """
    gname = name or type(model).__name__
    return _Converter(trace(model, input_shape, gname), gname).run()


def trace(model: nn.Module, input_shape: Sequence[int] = DEFAULT_INPUT_SHAPE,
          name: str | None = None) -> fx.GraphModule:
    """The fx graph ``capture`` converts: traced (``model`` put in eval mode), shapes propagated
    (``node.meta["tensor_meta"]``), in-place ops functionalised, dead nodes dropped. Its node names
    are the IR's; the float oracle (``tilesparse.sim.torch_oracle``) runs it to read the module's
    intermediate values."""
    model = model.eval()
    gname = name or type(model).__name__
    if isinstance(model, tuple(MODULE_OPS)):  # a bare nn.Conv2d etc.: fx would trace inside it
        model = nn.Sequential(model)
    try:
        tracer = InplaceTracer()
        graph = tracer.trace(model)
        gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    except Exception as e:  # fx raises TraceError, TypeError, ... for data-dependent control flow
        raise UnsupportedOpError(
            f"{gname}: torch.fx cannot trace this model ({type(e).__name__}: {e}); the IR needs a "
            f"static graph of conv/linear/bn/relu/pool/add/cat/flatten ops"
        ) from None
    try:  # ShapeProp prints the model's traceback before raising: the user gets our one line
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(torch.zeros(tuple(input_shape)))
    except RuntimeError as e:  # the model itself fails on this input (wrong size or channels)
        cause = str(e.__cause__ or e).splitlines()[0]
        msg = f"input shape {tuple(input_shape)} does not fit the model: {cause}"
        raise ConfigError(gname, [msg]) from None
    functionalize(gm, gname, _where)
    return gm


class _Converter:
    """Walk the fx graph once, in order, building IR nodes and the parameter table."""

    def __init__(self, gm: fx.GraphModule, name: str):
        self.gm = gm
        self.name = name
        self.nodes: list[Node] = []
        self.params: dict[str, np.ndarray] = {}
        self.alias: dict[str, str | None] = {}  # fx node -> IR node it stands for (None: not a tensor)

    def run(self) -> Graph:
        for fn in self.gm.graph.nodes:
            self._convert(fn)
        return Graph(tuple(self.nodes), self.params, self.name)

    def _convert(self, fn: fx.Node) -> None:
        if fn.op == "placeholder":
            self._add(fn, Op.INPUT, (), {})
        elif fn.op == "output":
            src = fn.args[0]
            if not isinstance(src, fx.Node):
                raise UnsupportedOpError(
                    f"{self.name}: output must be a single tensor, got {type(src).__name__} "
                    f"(node {fn.name!r})"
                )
            inp = self._tensor_input(fn, src)
            self.nodes.append(Node("output", Op.OUTPUT, (inp,), self._node_type(inp), {}, ""))
        elif fn.op == "get_attr":
            self.alias[fn.name] = None  # constants are only legal as non-tensor args (checked on use)
        else:
            self._convert_call(fn)

    def _convert_call(self, fn: fx.Node) -> None:
        handler, what = self._handler(fn)
        if handler is None:
            raise UnsupportedOpError(
                f"{self.name}: unsupported op {what} at node {fn.name!r}"
                f"{_where(fn)}; supported: conv2d, linear, batch-norm, relu/relu6, silu/sigmoid/"
                f"hardswish/hardsigmoid (lookup tables), max/avg/"
                f"adaptive-avg pool, mean over H×W, add, mul, cat, channel chunk/split, channel shuffle, flatten/view, "
                f"dropout, identity"
            )
        emit = Emit(self.gm, fn, self._ctx_error)
        lowered = handler(emit)
        if lowered is None:  # identity or non-tensor helper
            return
        if lowered.op is None:
            self.alias[fn.name] = self._tensor_input(fn, lowered.inputs[0]) if lowered.inputs else None
            return
        inputs = tuple(self._tensor_input(fn, a) for a in lowered.inputs)
        if lowered.flatten_after:
            inputs = (self._add_pooled(fn, lowered.op, inputs, lowered.attrs),)
            self._add(fn, Op.FLATTEN, inputs, {"start_dim": 1})
            return
        self._add(fn, lowered.op, inputs, lowered.attrs, lowered.params)

    def _add_pooled(self, fn: fx.Node, op: Op, inputs: tuple[str, ...], attrs: dict[str, Any]) -> str:
        """The (N, C, 1, 1) node before the flatten of a reduction without keepdim (``x.mean([2, 3])``)."""
        src = self._node_type(inputs[0])
        name = f"{fn.name}_pool"
        out = TensorType((*src.shape[:2], 1, 1), src.dtype)
        self.nodes.append(Node(name, op, inputs, out, attrs, _source(fn)))
        self.alias[name] = name
        return name

    def _handler(self, fn: fx.Node) -> tuple[Callable[[Emit], Lowered | None] | None, str]:
        if fn.op == "call_module":
            mod = self.gm.get_submodule(str(fn.target))
            # by class hierarchy: a parametrized Conv2d (a masked weight, torch.nn.utils.parametrize)
            # is a dynamic subclass of Conv2d, and its .weight is the masked weight
            handler = next((MODULE_OPS[c] for c in type(mod).__mro__ if c in MODULE_OPS), None)
            return handler, f"module {type(mod).__module__}.{type(mod).__name__}"
        if fn.op == "call_method":
            return METHOD_OPS.get(str(fn.target)), f"method Tensor.{fn.target}"
        target = fn.target
        return FUNCTION_OPS.get(target), f"function {_qualname(target)}"

    def _ctx_error(self, fn: fx.Node, msg: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{self.name}: node {fn.name!r}{_where(fn)}: {msg}")

    def _tensor_input(self, fn: fx.Node, a: Any) -> str:
        if not isinstance(a, fx.Node) or self.alias.get(a.name, "") is None:
            raise self._ctx_error(fn, f"expected a tensor operand, got {a!r}")
        return self.alias.get(a.name) or a.name

    def _node_type(self, name: str) -> TensorType:
        for n in reversed(self.nodes):
            if n.name == name:
                return n.out
        raise KeyError(name)

    def _add(
        self, fn: fx.Node, op: Op, inputs: tuple[str, ...], attrs: dict[str, Any],
        params: dict[str, np.ndarray] | None = None,
    ) -> None:
        meta = fn.meta.get("tensor_meta")
        if meta is None or not hasattr(meta, "shape"):
            raise self._ctx_error(fn, "produces no single tensor (tuple outputs are not supported)")
        out = TensorType(tuple(int(d) for d in meta.shape), _dtype_name(meta.dtype))
        self.nodes.append(Node(fn.name, op, inputs, out, attrs, _source(fn)))
        self.alias[fn.name] = fn.name
        for key, arr in (params or {}).items():
            self.params[f"{fn.name}.{key}"] = arr


def _dtype_name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


def _qualname(target: Any) -> str:
    mod = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", None) or repr(target)
    return f"{mod}.{name}" if mod else name


def _source(fn: fx.Node) -> str:
    """Module path of the node: the module itself, or the innermost module whose forward called it."""
    if fn.op == "call_module":
        return str(fn.target)
    stack = fn.meta.get("nn_module_stack") or {}
    if stack:
        last = list(stack.values())[-1]
        return str(last[0] if isinstance(last, tuple) else last)
    return ""


def _where(fn: fx.Node) -> str:
    src = _source(fn)
    return f" (module {src!r})" if src else ""

