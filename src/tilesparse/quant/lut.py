"""The int8 → int8 table of a ``lut`` node (SiLU, Sigmoid, Hardswish, Hardsigmoid).

Entry ``i`` of the 256-entry table is the output for input ``q = i − 128``: the float function
(``ir.lut``, PyTorch in float64) of the input's real value ``q · 2**e_in`` (exact in float64),
quantized at the output exponent ``e_out`` by the project's one rule for real → integer
(``rounding.quantize_real``: round half up, floor(y / 2**e_out + 1/2), then saturate to
[−128, 127]). Every table entry is therefore within half a step of the output scale of the float
function at that input, unless it saturated.
"""

from __future__ import annotations

import numpy as np
import torch

from tilesparse.ir.lut import apply_lut
from tilesparse.quant import rounding as R

__all__ = ["LUT_ENTRIES", "lut_inputs", "lut_table"]

LUT_ENTRIES = R.INT8_MAX - R.INT8_MIN + 1  # one entry per int8 input


def lut_inputs() -> np.ndarray:
    """The int8 input of each table entry, in table order: −128 … 127 (int64)."""
    return np.arange(R.INT8_MIN, R.INT8_MAX + 1, dtype=np.int64)


def lut_table(fn: str, e_in: int, e_out: int) -> np.ndarray:
    """The 256-entry int8 table of ``fn`` for an input at exponent ``e_in`` and an output at ``e_out``.

    >>> t = lut_table("hardsigmoid", -5, -7)  # input step 1/32, output step 1/128
    >>> int(t[0 + 128]), int(t[96 + 128]), int(t[-96 + 128])  # hardsigmoid(0, 3, -3) = 0.5, 1, 0
    (64, 127, 0)
    """
    x = torch.from_numpy(R.dequantize(lut_inputs(), e_in))
    y = apply_lut(fn, x).numpy()
    return R.quantize_real(y, e_out).astype(np.int8)
