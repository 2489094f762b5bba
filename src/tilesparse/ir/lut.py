"""The element-wise functions the IR runs as int8 → int8 lookup tables (op ``lut``, attr ``fn``).

Each is a PyTorch function of one tensor: the float graph (``ir.interpret``) runs it, the quantizer
tabulates it at a layer's input and output scales (``quant.lut``), and the error model takes its
slope. Their names are the attr ``fn`` of a ``lut`` node.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["LUT_FUNCTIONS", "apply_lut", "lipschitz"]

LUT_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "sigmoid": torch.sigmoid,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
}

# The largest |f'| of each function (what an input error can grow by at most), for the error
# model's max-error envelope: silu' peaks at 1.0998 (x ≈ 2.4), hardswish' = (2x + 3) / 6 reaches
# 1.5 at x = 3, sigmoid' = 1/4 at 0, hardsigmoid' = 1/6 on (−3, 3).
_LIPSCHITZ = {"silu": 1.1, "sigmoid": 0.25, "hardswish": 1.5, "hardsigmoid": 1 / 6}


def _check(fn: str) -> None:
    if fn not in LUT_FUNCTIONS:
        raise ValueError(f"lookup-table function {fn!r}: expected one of {', '.join(LUT_FUNCTIONS)}")


def apply_lut(fn: str, x: torch.Tensor) -> torch.Tensor:
    """``fn`` (a name in ``LUT_FUNCTIONS``) on ``x``; ValueError naming the function otherwise."""
    _check(fn)
    return LUT_FUNCTIONS[fn](x)


def lipschitz(fn: str) -> float:
    """The largest slope |f'| of ``fn`` over the reals."""
    _check(fn)
    return _LIPSCHITZ[fn]
