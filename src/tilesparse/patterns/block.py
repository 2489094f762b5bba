"""Block geometry: how a Conv2d / Linear weight is cut into b_o x b_i blocks.

A weight of shape (O, I/g, *kernel) is viewed as an O x (I/g) matrix whose entries are whole
kernels (a Linear layer is the 1x1 case). A block spans b_o out-channels x b_i in-channels x the
whole kernel. The block mask of a layer is a bool tensor of shape ``(g * ceil(O_g / b_o),
ceil(I_g / b_i))`` where ``O_g = O / g`` and ``I_g = I / g``: for a grouped convolution each group is
its own O_g x I_g matrix, and the groups' block rows are stacked top to bottom (group 0 first).

Channel counts that are not multiples of the block size: the last block row / column is *ragged*
(covers fewer channels). It is one block like any other in the mask, in sparsity counts and in
compressed bytes (the hardware packs whole blocks, so a ragged block is padded with zeros).
"""

from __future__ import annotations

import math
import numbers
import re
from dataclasses import dataclass
from typing import cast

import torch
from torch import Tensor, nn

from tilesparse.errors import ConfigError
from tilesparse.utils.config import short_repr
from tilesparse.utils.limits import MAX_BLOCK, above

__all__ = [
    "BlockShape",
    "BlockGeometry",
    "block_counts",
    "block_reduce",
    "check_block",
    "expand_mask",
    "parse_block_shape",
]


@dataclass(frozen=True)
class BlockShape:
    """A block of ``out`` output channels x ``in_`` input channels (b_o x b_i)."""

    out: int = 8
    in_: int = 8

    def __post_init__(self) -> None:
        sizes = (("b_o", self.out), ("b_i", self.in_))
        bad = [f"{n}={short_repr(v, 30)}" for n, v in sizes if not isinstance(v, int) or isinstance(v, bool) or v <= 0]
        if bad:
            raise ConfigError("block shape", [f"block sizes must be positive integers, got {', '.join(bad)}"])
        big = [(n, v) for n, v in sizes if v > MAX_BLOCK]
        if big:
            raise ConfigError("block shape", [above(f"block {big[0][0]}", big[0][1], MAX_BLOCK)])

    def __str__(self) -> str:
        return f"{self.out}x{self.in_}"

    @property
    def numel(self) -> int:
        return self.out * self.in_


def parse_block_shape(spec: str | tuple[int, int] | list[int] | BlockShape) -> BlockShape:
    """``"8x8"``, ``(4, 16)`` or a BlockShape -> BlockShape (ConfigError on anything else).

    >>> parse_block_shape("8x4")  # output channels first
    BlockShape(out=8, in_=4)
    >>> parse_block_shape([4, 16]) == parse_block_shape("4X16")
    True
    >>> parse_block_shape("8")
    Traceback (most recent call last):
    tilesparse.errors.ConfigError: block shape: expected 'OUTxIN' such as '8x8', got '8'
    """
    if isinstance(spec, BlockShape):
        return spec
    if isinstance(spec, str):
        m = _OUT_X_IN.fullmatch(spec.strip().lower())
        if m is None:
            raise ConfigError("block shape", [f"expected 'OUTxIN' such as '8x8', got {short_repr(spec, 40)}"])
        if max(len(d) for d in m.groups()) > _DIGITS:  # no int made from thousands of digits
            raise ConfigError("block shape", [above("block size", f"of more than {_DIGITS} digits", MAX_BLOCK)])
        return BlockShape(int(m[1]), int(m[2]))
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        return BlockShape(_index(spec[0]), _index(spec[1]))  # type: ignore[arg-type]  # checked in there
    raise ConfigError("block shape", [f"expected 'OUTxIN' or a pair of ints, got {short_repr(spec, 40)}"])


def check_block(spec: object, what: str = "--block") -> tuple[int, int]:
    """(out, in) of a block argument (``"8x8"``, a pair); ``ConfigError`` naming ``what`` and the
    value: the one check of ``--block`` for every verb and the Python API.

    >>> check_block("8x0")
    Traceback (most recent call last):
    tilesparse.errors.ConfigError: --block 8x0: block sizes must be positive integers, got b_i=0
    """
    try:
        b = parse_block_shape(spec)  # type: ignore[arg-type]  # anything else is refused in there
    except ConfigError as e:
        shown = spec if isinstance(spec, str) and len(spec) <= 40 else short_repr(spec, 40)
        raise ConfigError(f"{what} {shown}", e.errors) from None
    return b.out, b.in_


_OUT_X_IN = re.compile(r"(\d+)x(\d+)")
_DIGITS = 9


def _index(v: object) -> object:
    """An integer of any kind (NumPy's too) as a Python int; anything else as is, for BlockShape
    to refuse (a float is not truncated into a block size)."""
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        return int(v)
    return v


@dataclass(frozen=True)
class BlockGeometry:
    """How one weight tensor maps onto its block grid."""

    out_channels: int
    in_per_group: int
    groups: int
    kernel_numel: int
    block: BlockShape

    @classmethod
    def of_weight(cls, shape: tuple[int, ...] | torch.Size, block: BlockShape, groups: int = 1) -> BlockGeometry:
        if len(shape) < 2:
            raise ConfigError("weight", [f"expected a weight with >= 2 dims (out, in, ...), got shape {tuple(shape)}"])
        if shape[0] % groups:
            raise ConfigError("weight", [f"out channels {shape[0]} not divisible by groups {groups}"])
        return cls(int(shape[0]), int(shape[1]), groups, math.prod(shape[2:]), block)

    @classmethod
    def of_module(cls, module: nn.Module, block: BlockShape) -> BlockGeometry:
        groups = getattr(module, "groups", 1)
        return cls.of_weight(cast(Tensor, module.weight).shape, block, groups)

    @property
    def out_per_group(self) -> int:
        return self.out_channels // self.groups

    @property
    def rows_per_group(self) -> int:
        return math.ceil(self.out_per_group / self.block.out)

    @property
    def rows(self) -> int:
        return self.groups * self.rows_per_group

    @property
    def cols(self) -> int:
        return math.ceil(self.in_per_group / self.block.in_)

    @property
    def grid(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    @property
    def n_blocks(self) -> int:
        return self.rows * self.cols

    @property
    def weight_numel(self) -> int:
        return self.out_channels * self.in_per_group * self.kernel_numel

    @property
    def block_numel(self) -> int:
        """Elements of one full (padded) block, kernel included."""
        return self.block.numel * self.kernel_numel


def _to_matrix(x: Tensor, geom: BlockGeometry) -> Tensor:
    """(O, I_g, *k) or (O, I_g) -> (g, O_g, I_g); the kernel must already be reduced away."""
    return x.reshape(geom.groups, geom.out_per_group, geom.in_per_group)


def block_reduce(x: Tensor, geom: BlockGeometry) -> Tensor:
    """Sum ``x`` (weight-shaped, or (O, I_g) with the kernel already summed) over every block.

    Ragged edge blocks sum over the elements they have (zero padding). Returns (rows, cols).
    """
    if x.dim() > 2:
        x = x.reshape(x.shape[0], x.shape[1], -1).sum(-1)
    m = _to_matrix(x, geom)
    b = geom.block
    pad_o = geom.rows_per_group * b.out - geom.out_per_group
    pad_i = geom.cols * b.in_ - geom.in_per_group
    m = torch.nn.functional.pad(m, (0, pad_i, 0, pad_o))
    m = m.reshape(geom.groups, geom.rows_per_group, b.out, geom.cols, b.in_)
    return m.sum(dim=(2, 4)).reshape(geom.rows, geom.cols)


def expand_mask(mask: Tensor, geom: BlockGeometry, ndim: int | None = None) -> Tensor:
    """Block mask (rows, cols) -> element mask broadcastable to the weight: (O, I_g, 1, ...).

    Works for bool masks and for float (differentiable) gates. ``ndim`` is the weight's number of
    dims (default: 2 if the kernel has one element, else 4).
    """
    if tuple(mask.shape) != geom.grid:
        raise ConfigError("mask", [f"expected block mask of shape {geom.grid}, got {tuple(mask.shape)}"])
    b = geom.block
    m = mask.reshape(geom.groups, geom.rows_per_group, geom.cols)
    m = m.repeat_interleave(b.out, dim=1).repeat_interleave(b.in_, dim=2)
    m = m[:, : geom.out_per_group, : geom.in_per_group].reshape(geom.out_channels, geom.in_per_group)
    ndim = ndim if ndim is not None else (2 if geom.kernel_numel == 1 else 4)
    return m.reshape(m.shape + (1,) * (ndim - 2))


def block_counts(geom: BlockGeometry, device: torch.device | None = None) -> Tensor:
    """Number of real weight elements in each block (ragged edges have fewer), (rows, cols)."""
    ones = torch.full((geom.out_channels, geom.in_per_group), float(geom.kernel_numel), device=device)
    return block_reduce(ones, geom)
