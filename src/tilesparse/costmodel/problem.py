"""Workloads as loop nests: convolution and matrix multiply.

Dimensions follow Timeloop's names. A grouped convolution has seven loops per group plus the group
loop ``G``::

    for n, g, k, c, p, q, r, s:
        O[n, g, k, p, q] += W[g, k, c, r, s] * I[n, g, c, p*sh + r*dh, q*sw + s*dw]

``K`` and ``C`` are per group. A matrix multiply ``(M x Kred) @ (Kred x Nout)`` is the conv with
``P = M``, ``C = Kred``, ``K = Nout`` and every other bound 1.

>>> p = Problem.conv(k=64, c=3, p=112, q=112, r=7, s=7, stride=2)
>>> p.macs
118013952
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import TYPE_CHECKING

import numpy as np

from tilesparse.errors import ConfigError, UnsupportedOpError

if TYPE_CHECKING:
    from tilesparse.ir.graph import Node

__all__ = ["DIMS", "RELEVANT", "TENSORS", "Problem", "tile_elems", "window"]

DIMS: tuple[str, ...] = ("N", "G", "K", "C", "P", "Q", "R", "S")
TENSORS: tuple[str, ...] = ("W", "I", "O")  # weights, input activations, outputs
_DIM = {d: i for i, d in enumerate(DIMS)}

# RELEVANT[t, d]: does loop d index tensor t? (P and R both index the input's rows, Q and S its
# columns: the sliding window.)
RELEVANT = np.array(
    [
        [d in "GKCRS" for d in DIMS],  # W
        [d in "NGCPQRS" for d in DIMS],  # I
        [d in "NGKPQ" for d in DIMS],  # O
    ],
    dtype=bool,
)

DEFAULT_BITS = 8  # int8 weights, activations and outputs, as the AIE2 compiler produces


@dataclass(frozen=True)
class Problem:
    """One layer: loop bounds, stride, dilation and word widths (bits) of each tensor."""

    bounds: tuple[int, ...]  # in DIMS order
    stride: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    bits: tuple[int, int, int] = (DEFAULT_BITS,) * 3  # W, I, O
    name: str = "layer"
    kind: str = "conv"
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        errs = []
        if len(self.bounds) != len(DIMS):
            errs.append(f"bounds: expected {len(DIMS)} values ({', '.join(DIMS)}), got {len(self.bounds)}")
        # not strict: a wrong count is reported above, and the bounds that are there still checked
        errs += [f"{d}: loop bound must be a positive integer, got {b!r}"
                 for d, b in zip(DIMS, self.bounds, strict=False) if not (isinstance(b, (int, np.integer)) and b >= 1)]
        errs += [f"stride/dilation must be >= 1, got {v}" for v in (*self.stride, *self.dilation) if v < 1]
        errs += [f"bits must be >= 1, got {b}" for b in self.bits if b < 1]
        if errs:
            raise ConfigError(f"problem {self.name}", errs)
        object.__setattr__(self, "bounds", tuple(int(b) for b in self.bounds))

    # -- constructors ---------------------------------------------------------------------------
    @classmethod
    def conv(cls, *, k: int, c: int, p: int, q: int, r: int = 1, s: int = 1, n: int = 1,
             groups: int = 1, stride: int | tuple[int, int] = 1,
             dilation: int | tuple[int, int] = 1, name: str = "conv",
             bits: tuple[int, int, int] = (DEFAULT_BITS,) * 3) -> Problem:
        """A convolution from plain numbers; ``k`` and ``c`` are totals (divided by ``groups``)."""
        if groups < 1 or k % groups or c % groups:
            raise ConfigError(f"problem {name}",
                              [f"groups={groups} must divide k={k} and c={c}"])
        st = (stride, stride) if isinstance(stride, int) else tuple(stride)
        dl = (dilation, dilation) if isinstance(dilation, int) else tuple(dilation)
        return cls((n, groups, k // groups, c // groups, p, q, r, s), st, dl, bits, name, "conv")

    @classmethod
    def matmul(cls, m: int, k: int, n: int, *, name: str = "matmul",
               bits: tuple[int, int, int] = (DEFAULT_BITS,) * 3) -> Problem:
        """``(m x k) @ (k x n)``: weights are ``k x n``, ``m`` rows of activations."""
        return cls((1, 1, n, k, m, 1, 1, 1), (1, 1), (1, 1), bits, name, "matmul")

    @classmethod
    def from_node(cls, node: Node, in_shape: tuple[int, ...] | None = None) -> Problem:
        """A conv2d or linear node of the IR. ``in_shape`` (N, C, H, W) is the producer's output
        shape; without it the input channels are read from the node's ``in_channels`` attr."""
        from tilesparse.ir.graph import Op

        if node.op is Op.LINEAR:
            n_batch, n_out = node.out.shape[0], node.out.shape[-1]
            n_in = in_shape[-1] if in_shape is not None else node.attrs.get("in_features")
            if n_in is None:
                raise ConfigError(node.name, ["linear node needs in_shape or attr in_features"])
            return cls.matmul(n_batch, int(n_in), n_out, name=node.name)
        if node.op is not Op.CONV2D:
            raise UnsupportedOpError(
                f"{node.name}: the cost model handles conv2d and linear nodes, got {node.op.value}")
        n_batch, k, p, q = node.out.shape
        c = in_shape[1] if in_shape is not None else node.attrs.get("in_channels")
        if c is None:
            raise ConfigError(node.name, ["conv2d node needs in_shape or attr in_channels"])
        r, s = node.attrs.get("kernel", (1, 1))
        return cls.conv(k=k, c=int(c), p=p, q=q, r=r, s=s, n=n_batch,
                        groups=int(node.attrs.get("groups", 1)), stride=node.attrs.get("stride", 1),
                        dilation=node.attrs.get("dilation", 1), name=node.name)

    # -- derived sizes ----------------------------------------------------------------------------
    def bound(self, dim: str) -> int:
        return self.bounds[_DIM[dim]]

    @property
    def macs(self) -> int:
        return prod(self.bounds)

    @property
    def bytes_per_word(self) -> np.ndarray:
        return np.array(self.bits, dtype=np.float64) / 8.0

    def tile_elems(self, ext: np.ndarray) -> np.ndarray:
        """Elements of W, I, O in a tile whose loop extents are ``ext[..., DIMS]``: shape (..., 3)."""
        return tile_elems(ext, self.stride, self.dilation)

    @property
    def tensor_elems(self) -> np.ndarray:
        return self.tile_elems(np.array(self.bounds, dtype=np.float64))

    def with_bounds(self, **dims: int) -> Problem:
        b = list(self.bounds)
        for d, v in dims.items():
            b[_DIM[d]] = v
        return Problem(tuple(b), self.stride, self.dilation, self.bits, self.name, self.kind)

    def __str__(self) -> str:
        dims = " ".join(f"{d}{b}" for d, b in zip(DIMS, self.bounds, strict=True) if b > 1)
        return f"{self.name} [{dims}]"


def tile_elems(ext: np.ndarray, stride: tuple[int, int], dilation: tuple[int, int]) -> np.ndarray:
    """Vectorized tile sizes (elements) of W, I, O for loop extents ``ext`` (..., 8)."""
    # one contiguous copy with the loops first beats eight strided slices
    n, g, k, c, p, q, r, s = np.ascontiguousarray(np.moveaxis(np.asarray(ext, dtype=np.float64), -1, 0))
    h = window(p, r, stride[0], dilation[0])
    w = window(q, s, stride[1], dilation[1])
    return np.stack([g * k * c * r * s, n * g * c * h * w, n * g * k * p * q], axis=-1)


def window(out: np.ndarray, kernel: np.ndarray, stride: int, dilation: int) -> np.ndarray:
    """Input rows touched by ``out`` output rows and ``kernel`` kernel rows: the span
    ``(out-1)*stride + (kernel-1)*dilation + 1`` when windows overlap or abut, else (a kernel
    narrower than the stride, e.g. a strided 1x1 conv) only the ``out * kernel`` rows read."""
    span = (out - 1) * stride + (kernel - 1) * dilation + 1
    gapped = (kernel - 1) * dilation + 1 < stride
    return np.where(gapped, np.minimum(span, out * kernel), span)
