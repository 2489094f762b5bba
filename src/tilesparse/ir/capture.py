"""Capture an ``nn.Module`` into the tilesparse IR through ``torch.fx``.

``capture`` traces the module symbolically, propagates shapes with one zero input, and maps every fx
node to an IR node (``tilesparse.ir.graph``). Identity-like nodes (``nn.Dropout`` in eval,
``nn.Identity``, ``x.size(0)`` / ``x.shape`` feeding a flatten) disappear, and so do computations
the output does not depend on (an unused branch: dead code, as PyTorch's result shows); anything
outside the IR is an :class:`UnsupportedOpError` naming the op, the fx node and the module path.

Not handled: torchvision inception_v3 with ``transform_input=True`` (per-channel affine on constants,
which is what ``weights=...`` turns on) — build it with ``tilesparse.models.get_model`` instead.
"""

from __future__ import annotations

import contextlib
import io
import operator
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from tilesparse.errors import ConfigError, UnsupportedOpError
from tilesparse.ir.capture_ops import FUNCTION_OPS, METHOD_OPS, MODULE_OPS, Emit, Lowered
from tilesparse.ir.graph import Graph, Node, Op, TensorType

__all__ = ["capture"]

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
    model = model.eval()
    gname = name or type(model).__name__
    if isinstance(model, tuple(MODULE_OPS)):  # a bare nn.Conv2d etc.: fx would trace inside it
        model = nn.Sequential(model)
    try:
        gm = fx.symbolic_trace(model)
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
    return _Converter(gm, gname).run()


class _Converter:
    """Walk the fx graph once, in order, building IR nodes and the parameter table."""

    def __init__(self, gm: fx.GraphModule, name: str):
        self.gm = gm
        self.name = name
        self.nodes: list[Node] = []
        self.params: dict[str, np.ndarray] = {}
        self.alias: dict[str, str | None] = {}  # fx node -> IR node it stands for (None: not a tensor)
        self.inplace: set[str] = set()  # IR nodes of in-place ops: never dropped as dead code

    def run(self) -> Graph:
        for fn in self.gm.graph.nodes:
            self._convert(fn)
        live = _live(self.nodes, self.inplace)
        params = {k: v for k, v in self.params.items() if k.rpartition(".")[0] in live}
        return Graph(tuple(n for n in self.nodes if n.name in live), params, self.name)

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
                f"{_where(fn)}; supported: conv2d, linear, batch-norm, relu/relu6, max/avg/"
                f"adaptive-avg pool, add, cat, flatten/view, dropout, identity"
            )
        emit = Emit(self.gm, fn, self._ctx_error)
        lowered = handler(emit)
        if lowered is None:  # identity or non-tensor helper
            return
        if lowered.op is None:
            self.alias[fn.name] = self._tensor_input(fn, lowered.inputs[0]) if lowered.inputs else None
            return
        inputs = tuple(self._tensor_input(fn, a) for a in lowered.inputs)
        self._add(fn, lowered.op, inputs, lowered.attrs, lowered.params)

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
        if self._is_inplace(fn):
            self.inplace.add(fn.name)
        for key, arr in (params or {}).items():
            self.params[f"{fn.name}.{key}"] = arr


    def _is_inplace(self, fn: fx.Node) -> bool:
        """Whether ``fn`` may change its operand in place (conservatively: any ``True`` flag)."""
        if fn.op == "call_module":
            return bool(getattr(self.gm.get_submodule(str(fn.target)), "inplace", False))
        name = str(fn.target) if fn.op == "call_method" else getattr(fn.target, "__name__", "")
        flags = [*fn.args[1:], *fn.kwargs.values()]
        return (name.endswith("_") and not name.endswith("__")) or fn.target in (operator.iadd, "__iadd__") or any(
            a is True for a in flags)


def _live(nodes: list[Node], inplace: set[str]) -> set[str]:
    """Names of the nodes the output depends on and the inputs, plus every in-place op on one of
    them (with what it reads; what it changed may be read later): a node outside is dead code
    (PyTorch computes it for nothing)."""
    by_name = {n.name: n for n in nodes}
    live: set[str] = set()
    todo = [n.name for n in nodes if n.op in (Op.OUTPUT, Op.INPUT)]
    while todo:
        while todo:
            name = todo.pop()
            if name not in live:
                live.add(name)
                todo.extend(by_name[name].inputs)
        todo = [n for n in inplace if n not in live and by_name[n].inputs[0] in live]
    return live


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

