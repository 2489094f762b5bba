"""SDQ (sparse-decomposed quantization): a weight as a structured-sparse high-precision part (the
outliers, int8) plus a dense low-precision part (int4), each with its own power-of-two scale.

The sparse part takes the largest weights under its pattern (e.g. 1:8 along input channels, one
per run of 8), quantized to ``sparse_bits``; the dense part is what is left — the other weights and
the sparse part's rounding error — quantized to ``dense_bits``. With the outliers gone the dense
range shrinks, so the low-precision grid is finer. The parts sum exactly to the dequantized weight,
and a layer made of them is computed exactly in integers (``sdq_linear_int`` / ``sdq_conv2d_int``):
one accumulation per part, aligned by a left shift to the smaller exponent.

Inside a graph: ``quantize(graph, calib, sdq=SDQConfig(...))`` (:mod:`tilesparse.quant.sdq_graph`)
stores chosen layers as such parts and ``IntegerReference`` computes them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tilesparse.errors import ConfigError
from tilesparse.patterns.family import Pattern, prune_mask
from tilesparse.quant.rounding import dequantize, pow2_exponent, quantize_real

__all__ = ["SDQ", "sdq", "sdq_linear_int", "sdq_conv2d_int"]

_EXACT = 2**53  # float64 holds every integer below this: the conv path's exactness bound


@dataclass(frozen=True)
class SDQ:
    """Integer parts and their exponents: weight ~= sparse * 2**sparse_exp + dense * 2**dense_exp."""

    pattern: Pattern
    sparse: np.ndarray  # int64, zero where the pattern zeroes
    sparse_exp: int
    dense: np.ndarray  # int64 in the dense_bits range
    dense_exp: int
    sparse_bits: int
    dense_bits: int
    mask: np.ndarray  # bool, weight-shaped: the pattern's keep mask (a kept weight may still round to 0)

    def sparse_real(self) -> np.ndarray:
        return dequantize(self.sparse, self.sparse_exp)

    def dense_real(self) -> np.ndarray:
        return dequantize(self.dense, self.dense_exp)

    def dequantized(self) -> np.ndarray:
        return self.sparse_real() + self.dense_real()


def _range(bits: int, what: str) -> tuple[int, int]:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 16:
        raise ConfigError("sdq", [f"{what}: expected an integer number of bits in [2, 16], got {bits!r}"])
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def sdq(weight: torch.Tensor | np.ndarray, sparse: Pattern, sparse_bits: int = 8, dense_bits: int = 4,
        groups: int = 1, mask: np.ndarray | torch.Tensor | None = None) -> SDQ:
    """Split ``weight`` into a ``sparse``-patterned ``sparse_bits`` part and a dense ``dense_bits`` part.
    ``mask``: the sparse part's keep mask, fixed in advance (a trained one, checked against the
    pattern); None: the pattern's by magnitude (``prune_mask``).

    >>> import torch
    >>> from tilesparse.patterns import NM
    >>> d = sdq(torch.tensor([[8.0, 0.5, -0.25, 0.1]]), NM(1, 4))
    >>> d.sparse.tolist(), d.dense.tolist()
    ([[64, 0, 0, 0]], [[0, 4, -2, 1]])
    """
    w = torch.as_tensor(weight).detach().double()
    if not torch.isfinite(w).all():
        raise ConfigError("sdq", ["weight holds NaN or infinity"])
    if sparse.free_levels():
        raise ConfigError("sdq", [f"sparse pattern {sparse.spec()} has a free sparsity; give it '@s'"])
    why = sparse.eligible(tuple(w.shape), groups)
    if why is not None:
        raise ConfigError("sdq", [f"sparse pattern {sparse.spec()} does not fit weight {tuple(w.shape)}: {why}"])
    s_lo, s_hi = _range(sparse_bits, "sparse_bits")
    d_lo, d_hi = _range(dense_bits, "dense_bits")
    if mask is None:
        mask = prune_mask(sparse, w, groups).expand(w.shape).numpy()
    else:
        mask = _given_mask(mask, sparse, w, groups)
    wn = w.numpy()
    outliers = np.where(mask, wn, 0.0)
    s_exp = pow2_exponent(float(np.abs(outliers).max(initial=0.0)), s_hi)
    q_s = np.where(mask, quantize_real(outliers, s_exp, s_lo, s_hi), 0)
    rest = wn - dequantize(q_s, s_exp)
    d_exp = pow2_exponent(float(np.abs(rest).max(initial=0.0)), d_hi)
    q_d = quantize_real(rest, d_exp, d_lo, d_hi)
    return SDQ(sparse, q_s.astype(np.int64), s_exp, q_d.astype(np.int64), d_exp, sparse_bits, dense_bits,
               mask.astype(bool))


def _given_mask(mask: np.ndarray | torch.Tensor, sparse: Pattern, w: torch.Tensor, groups: int) -> np.ndarray:
    m = torch.as_tensor(mask).bool()
    if tuple(m.shape) != tuple(w.shape):
        raise ConfigError("sdq", [f"mask {tuple(m.shape)} does not match weight {tuple(w.shape)}"])
    broken = sparse.check(m, tuple(w.shape), groups)
    if broken:
        raise ConfigError("sdq", [f"mask breaks pattern {sparse.spec()}: {broken[0]}"])
    return m.numpy()


def _combine(acc_s: np.ndarray, acc_d: np.ndarray, d: SDQ, x_exp: int) -> tuple[np.ndarray, int]:
    e = min(d.sparse_exp, d.dense_exp)
    acc = (acc_s << (d.sparse_exp - e)) + (acc_d << (d.dense_exp - e))
    return acc, x_exp + e


def sdq_linear_int(x: np.ndarray, x_exp: int, d: SDQ) -> tuple[np.ndarray, int]:
    """Integer ``x @ W.T`` for an SDQ weight (O, I): int64 accumulator and its exponent."""
    xi = np.asarray(x, np.int64)
    return _combine(xi @ d.sparse.T, xi @ d.dense.T, d, x_exp)


def _conv_exact(x: np.ndarray, q: np.ndarray, stride: int, padding: int, groups: int) -> np.ndarray:
    bound = int(np.abs(x).max(initial=0)) * int(np.abs(q).reshape(q.shape[0], -1).sum(1).max(initial=0))
    if bound >= _EXACT:
        raise ConfigError("sdq", [f"accumulator bound {bound} reaches 2**53: too wide for the exact conv path"])
    y = torch.nn.functional.conv2d(torch.from_numpy(x.astype(np.float64)), torch.from_numpy(q.astype(np.float64)),
                                   stride=stride, padding=padding, groups=groups)
    return np.rint(y.numpy()).astype(np.int64)  # integers below 2**53: float64 sums them exactly


def sdq_conv2d_int(x: np.ndarray, x_exp: int, d: SDQ, stride: int = 1, padding: int = 0,
                   groups: int = 1) -> tuple[np.ndarray, int]:
    """Integer conv2d (N, C, H, W) for an SDQ weight: int64 accumulator and its exponent."""
    xi = np.asarray(x, np.int64)
    return _combine(_conv_exact(xi, d.sparse, stride, padding, groups),
                    _conv_exact(xi, d.dense, stride, padding, groups), d, x_exp)
