"""A layer's window geometry and the rules that follow from it alone.

``WindowRules`` holds the rules (window extents, sliding, input-channel ranges); both the program's
``LayerGeometry`` record and the compiler's ``LayerSpec`` inherit them, so the compiler plans with
the very rules the simulator and the estimator read a program by.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable
from dataclasses import dataclass
from typing import SupportsIndex

__all__ = ["KINDS", "LayerGeometry", "WEIGHT_FORMATS", "WindowRules"]

KINDS = ("conv", "maxpool", "avgpool", "add", "relu", "relu6", "lut", "copy", "flatten", "adaptive_avgpool", "mul")
TWO_INPUT_KINDS = ("add", "mul")  # element-wise ops of two equal-shaped tensors
WHOLE_PLANE_KINDS = ("flatten", "adaptive_avgpool")  # every tile reads the input's whole H x W plane
WEIGHT_FORMATS = ("block", "masked", "parts")  # program.sparse_format / program.parts_format say what each one is


class WindowRules:
    """Rules of a window op over attributes ``kind``, ``ci``, ``hi``, ``wi``, ``co``, ``ho``,
    ``wo``, ``kernel``, ``stride``, ``padding``, ``dilation``, ``groups``, ``block``, ``n_in``
    (input tensors read per output element), ``residual`` (true when a fused add reads a
    residual tile: a flag in ``LayerGeometry``, the operand's name in the compiler's ``LayerSpec``)
    and ``weight_format`` (a conv's packed weights: ``block`` or ``masked``,
    ``program.sparse_format``)."""

    __slots__ = ()
    kind: str
    ci: int
    hi: int
    wi: int
    co: int
    ho: int
    wo: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    block: tuple[int, int]
    n_in: int
    residual: bool | str
    weight_format: str

    @property
    def reads_whole_plane(self) -> bool:
        """Whether every tile reads the whole input plane: a flatten, and an adaptive average pool
        whose windows are unequal (PyTorch's rule, ``quant.rounding.adaptive_windows``)."""
        return self.kind in WHOLE_PLANE_KINDS

    @property
    def bandable(self) -> bool:
        """Whether the layer may run its window in bands of window rows (``layout.splits_window``):
        an average pool whose windows do not touch (stride at least the kernel along both axes, no
        dilation), so a tile's window is whole windows and a band the same rows of each — a
        global pool among them."""
        return (self.kind == "avgpool" and self.dilation == (1, 1)
                and self.stride[0] >= self.kernel[0] and self.stride[1] >= self.kernel[1])

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]

    def in_span(self, n_out: int, axis: int) -> int:
        """Input rows (axis 0) or columns (axis 1) a window of ``n_out`` outputs reads, padding
        included."""
        if n_out <= 0:
            return 0
        return (n_out - 1) * self.stride[axis] + (self.kernel[axis] - 1) * self.dilation[axis] + 1

    def window_extent(self, n_out: int, axis: int) -> int:
        """Input rows/columns LOADFM brings for ``n_out`` outputs along ``axis``: the whole span,
        or — when the stride is at least the kernel extent, so windows do not touch — only the
        rows/columns the windows read (a strided DMA skips the others)."""
        if self.reads_whole_plane:
            return (self.hi, self.wi)[axis] if n_out > 0 else 0
        ext = (self.kernel[axis] - 1) * self.dilation[axis] + 1
        if n_out > 0 and self.stride[axis] >= ext:
            return n_out * ext
        return self.in_span(n_out, axis)

    @property
    def slides(self) -> bool:
        """Whether consecutive tiles of a tile row share window columns that stay in the core:
        a conv or pool whose windows overlap along the width (kernel extent above the stride).
        LOADFM then keeps the input window in a ring of columns and moves only the columns past
        the previous tile's window (docs/program.md, "Sliding windows")."""
        ext = (self.kernel[1] - 1) * self.dilation[1] + 1
        return self.kind in ("conv", "maxpool", "avgpool") and self.n_in == 1 and self.stride[1] < ext

    def window_positions(self, th: int, tw: int) -> int:
        """Input positions (per channel, per input) a th × tw output tile reads."""
        if self.reads_whole_plane:
            return self.hi * self.wi
        return self.window_extent(th, 0) * self.window_extent(tw, 1)

    def ci_range(self, oc0: int, oc1: int) -> tuple[int, int]:
        """Input channels read by output channels [oc0, oc1)."""
        if self.kind == "conv":
            og, ig = self.co // self.groups, self.ci // self.groups
            return (oc0 // og) * ig, ((oc1 - 1) // og + 1) * ig
        if self.kind == "flatten":  # output channel c·H·W + h·W + w reads input channel c
            hw = self.hi * self.wi
            return oc0 // hw, (oc1 - 1) // hw + 1
        return oc0, oc1  # channel-wise ops


def _pair(v: Iterable[SupportsIndex], field: str) -> tuple[int, int]:
    t = tuple(operator.index(x) for x in v)
    if len(t) != 2:
        raise ValueError(f"geometry {field} {v!r}: expected two values (rows, columns)")
    return t


@dataclass(frozen=True, slots=True)
class LayerGeometry(WindowRules):
    """What a layer computes, as recorded in a program: the COMP ``kind`` (``KINDS``), input
    ``ci × hi × wi`` → output ``co × ho × wo``, the window (PyTorch's kernel, stride, padding,
    dilation per axis), conv groups and block shape, ``n_in`` window inputs (2 for an add or a mul),
    whether a fused add reads a ``residual`` tile and the ``weight_format`` of a conv's packed
    weights (``block``, the default and the only format of programs written before it existed,
    or ``masked``: docs/program.md, "Weight formats")."""

    kind: str
    ci: int
    hi: int
    wi: int
    co: int
    ho: int
    wo: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    block: tuple[int, int] = (8, 8)
    n_in: int = 1
    residual: bool = False
    weight_format: str = "block"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"geometry kind {self.kind!r}: expected one of {', '.join(KINDS)}")
        if self.weight_format not in WEIGHT_FORMATS or (self.weight_format != "block" and self.kind != "conv"):
            raise ValueError(f"geometry weight_format {self.weight_format!r}: expected one of "
                             f"{', '.join(WEIGHT_FORMATS)} (not block: convs only)")
        for f in ("kernel", "stride", "padding", "dilation", "block"):
            object.__setattr__(self, f, _pair(getattr(self, f), f))
        for f in ("ci", "hi", "wi", "co", "ho", "wo", "groups", "n_in"):
            v = getattr(self, f)
            if isinstance(v, bool) or not hasattr(v, "__index__") or operator.index(v) < 1:
                raise ValueError(f"geometry {f} {v!r}: expected a positive integer")
            object.__setattr__(self, f, operator.index(v))
        object.__setattr__(self, "residual", bool(self.residual))
        if self.ci % self.groups or self.co % self.groups:
            raise ValueError(f"geometry groups {self.groups} do not divide ci {self.ci} and co {self.co}")

    @classmethod
    def of(cls, spec: WindowRules, n_in: int | None = None) -> LayerGeometry:
        """The geometry of any object with the same attributes (the compiler's ``LayerSpec``)."""
        return cls(spec.kind, spec.ci, spec.hi, spec.wi, spec.co, spec.ho, spec.wo, spec.kernel, spec.stride,
                   spec.padding, spec.dilation, spec.groups, spec.block,
                   spec.n_in if n_in is None else n_in, bool(spec.residual), spec.weight_format)
