"""The integer semantics of a quantized graph — every rounding rule, written once.

The integer reference (:mod:`tilesparse.quant.reference`), the quantizer and the simulator all use
these functions; ``docs/quantization.md`` states the same rules in prose. Values are Python ints or
numpy int64 arrays (shifts on int64 are arithmetic, i.e. floor for negative numbers).

Rules:

* power-of-two exponent of a tensor with max-abs ``m``: the smallest integer e with m / 2**e ≤ 127,
  so no value saturates (the paper's Δ = max|W| / 2**(N−1) rounded *up* to a power of two, with
  2**(N−1) − 1 = 127 so that max|W| itself maps to ≤ 127, not to 128);
* real → integer: q = floor(x / 2**e + 1/2) (round half up), then saturate;
* shift right by s with rounding: s > 0: (x + 2**(s−1)) >> s (round half up);
  s = 0: x; s < 0: x << −s (exact left shift);
* saturate to int8: clamp to [−128, 127]; relu/relu6 are further clamps on the integer:
  relu → [0, 127], relu6 → [0, min(127, shift_round(6, e_out))];
* average: q = floor((2·sum + d) / (2·d)) = round half up of sum / d for a positive divisor d;
* divisor of an average-pool window (PyTorch's rule): with count_include_pad the window clipped to
  the padded input [−p, size + p), otherwise clipped to the real input [0, size).
"""

from __future__ import annotations

import math
from typing import TypeVar, cast

import numpy as np

__all__ = [
    "INT8_MIN", "INT8_MAX", "INT32_MIN", "INT32_MAX", "RELU6_MAX",
    "pow2_exponent", "quantize_real", "shift_round", "saturate", "activation_clamp",
    "requantize", "avg_round", "pool_divisors", "adaptive_windows", "dequantize",
]

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
RELU6_MAX = 6  # relu6's upper bound in real units
ZERO_TENSOR_EXP = 0  # exponent for an all-zero tensor (any value represents it exactly)

T = TypeVar("T", int, np.ndarray)


def pow2_exponent(maxabs: float, qmax: int = INT8_MAX) -> int:
    """Smallest integer e with ``maxabs / 2**e <= qmax`` (``ZERO_TENSOR_EXP`` if maxabs is 0).

    >>> pow2_exponent(1.0)  # 1 / 2**-6 = 64 fits in 127, 1 / 2**-7 = 128 does not
    -6
    >>> pow2_exponent(127.0), pow2_exponent(128.0)
    (0, 1)
    """
    if not math.isfinite(maxabs):
        raise ValueError(f"max-abs {maxabs} is not finite")
    if maxabs <= 0:
        return ZERO_TENSOR_EXP
    e = math.ceil(math.log2(maxabs / qmax))
    while math.ldexp(qmax, e) < maxabs:  # log2 can be off by one ulp near powers of two
        e += 1
    while math.ldexp(qmax, e - 1) >= maxabs:
        e -= 1
    return e


def quantize_real(
    x: np.ndarray, exp: int | np.ndarray, lo: int = INT8_MIN, hi: int = INT8_MAX
) -> np.ndarray:
    """floor(x / 2**exp + 1/2) clamped to [lo, hi], as int64 (exp may broadcast per channel).

    Works in x's own float type: scaling by a power of two is exact, and the half-up test uses the
    exact fraction v − floor(v) rather than v + 0.5, which could round in float32.
    """
    xa = np.asarray(x)
    if not np.issubdtype(xa.dtype, np.floating):
        xa = xa.astype(np.float64)
    v = xa * np.exp2(-np.asarray(exp, np.float64)).astype(xa.dtype)
    q = np.floor(v)
    q += (v - q) >= 0.5
    return np.asarray(np.clip(q, lo, hi), dtype=np.int64)


def shift_round(x: T, s: int | np.ndarray) -> T:
    """Shift ``x`` right by ``s`` rounding half up (s > 0), or left by −s (s ≤ 0); ``s`` may be an
    array broadcasting against ``x`` (per-channel shifts).

    >>> shift_round(5, 1), shift_round(-5, 1), shift_round(6, 2)  # 2.5, -2.5 and 1.5: half up
    (3, -2, 2)
    >>> shift_round(3, -2)  # a left shift
    12
    >>> shift_round(np.array([5, -5, 7]), np.array([1, 1, 2])).tolist()  # per-element shifts
    [3, -2, 2]
    """
    if isinstance(s, (int, np.integer)) and isinstance(x, (int, np.integer)):
        s = int(s)
        return (x + (1 << (s - 1))) >> s if s > 0 else x << -s
    xa = np.asarray(x, np.int64)
    sa = np.asarray(s, np.int64)
    right = np.maximum(sa, 0)
    half = np.where(sa > 0, np.left_shift(np.int64(1), np.maximum(sa - 1, 0)), 0)
    return np.where(sa > 0, (xa + half) >> right, xa << np.maximum(-sa, 0))  # type: ignore[return-value]


def saturate(x: T, lo: int = INT8_MIN, hi: int = INT8_MAX) -> T:
    """Clamp to [lo, hi] (int8 by default)."""
    if isinstance(x, (int, np.integer)):
        return min(max(int(x), lo), hi)
    return cast(T, np.clip(x, lo, hi))


def activation_clamp(activation: str | None, out_exp: int) -> tuple[int, int]:
    """Integer range of an int8 output at exponent ``out_exp`` after its fused activation."""
    if activation is None:
        return (INT8_MIN, INT8_MAX)
    if activation == "relu":
        return (0, INT8_MAX)
    if activation == "relu6":
        return (0, min(INT8_MAX, int(shift_round(RELU6_MAX, out_exp))))
    raise ValueError(f"unknown activation {activation!r}")


def requantize(acc: T, s: int | np.ndarray, clamp: tuple[int, int] = (INT8_MIN, INT8_MAX)) -> T:
    """int32 accumulator → int8: ``saturate(shift_round(acc, s), *clamp)``."""
    return saturate(shift_round(acc, s), *clamp)


def avg_round(total: T, divisor: T) -> T:
    """Round half up of ``total / divisor`` for positive integer divisors: floor((2t + d) / (2d)).

    >>> avg_round(7, 2), avg_round(-7, 2), avg_round(5, 4)  # 3.5, -3.5 and 1.25
    (4, -3, 1)
    """
    return (2 * total + divisor) // (2 * divisor)


def _axis_counts(size: int, out: int, k: int, s: int, p: int, include_pad: bool) -> np.ndarray:
    start = np.arange(out) * s - p
    end = np.minimum(start + k, size + p)
    if not include_pad:
        start, end = np.maximum(start, 0), np.minimum(end, size)
    return (end - start).astype(np.int64)


def pool_divisors(
    in_hw: tuple[int, int], out_hw: tuple[int, int], kernel: tuple[int, int],
    stride: tuple[int, int], padding: tuple[int, int], count_include_pad: bool,
) -> np.ndarray:
    """Divisor of each output position of an average pool (oh × ow int64), PyTorch's rule."""
    ch = _axis_counts(in_hw[0], out_hw[0], kernel[0], stride[0], padding[0], count_include_pad)
    cw = _axis_counts(in_hw[1], out_hw[1], kernel[1], stride[1], padding[1], count_include_pad)
    return np.outer(ch, cw)


def adaptive_windows(size: int, out: int) -> list[tuple[int, int]]:
    """[start, end) of each adaptive-pool window: floor(i·size/out) … ceil((i+1)·size/out)."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def dequantize(q: np.ndarray, exp: int | np.ndarray) -> np.ndarray:
    """Real value of integer ``q`` at exponent ``exp``: q · 2**exp (float64)."""
    return np.ldexp(np.asarray(q, np.float64), np.asarray(exp, np.int64))
