"""What a program's header may hold, checked before anything is allocated from it.

A program file is input like any other: a header edited by hand (``iters`` of 10**12, a buffer of
a terabyte, a DDR region past the end of memory) must be refused in one line naming the file and
the field, never become an allocation, a hang or a traceback in the simulator or the estimator.
The bounds are ``tilesparse.utils.limits`` (docs/limits.md); ``check_tables`` checks the buffer
table and the DDR map (plain JSON), ``check_limits`` the typed records.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

from tilesparse.errors import ProgramError
from tilesparse.hw import ArrayConfig
from tilesparse.program.instr import Instr
from tilesparse.program.records import LayerRecord
from tilesparse.utils import limits as L
from tilesparse.utils.config import short_repr

__all__ = ["check_limits", "check_tables"]

_MEMORIES = ("memtile", "ddr")
_BUFFER_INTS = ("offset", "part_bytes", "nbytes")


def _count(v: Any) -> bool:
    """An integer >= 0 (JSON's, or NumPy's in a program not yet saved), not a boolean."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and int(v) >= 0


def check_tables(buffers: Any, ddr: Any, src: str) -> None:
    """The buffer table (name -> memory, offset, part_bytes, nbytes, shape C,H,W) and the DDR map
    (region -> [addr, nbytes]): types, shapes that hold their bytes, sizes within the limits."""
    if not isinstance(buffers, dict):
        raise ProgramError(f"{src}: header field 'buffers' is {short_repr(buffers, 40)}: expected a mapping")
    for name, b in buffers.items():
        _check_buffer(str(name), b, src)
    if not isinstance(ddr, dict):
        raise ProgramError(f"{src}: header field 'ddr' is {short_repr(ddr, 40)}: expected a mapping")
    top = 0
    for name, region in ddr.items():
        if not (isinstance(region, list) and len(region) == 2 and all(_count(v) for v in region)):
            raise ProgramError(f"{src}: header field ddr.{name} is {short_repr(region, 40)}: expected "
                               "[address, bytes], two integers >= 0")
        top = max(top, region[0] + region[1])
    if top > L.MAX_DDR_MAP_BYTES:
        raise ProgramError(f"{src}: header field ddr: " + L.above("the DDR map's end", f"{top:,}",
                                                                  f"{L.MAX_DDR_MAP_BYTES:,}", " B"))


def _check_buffer(name: str, b: Any, src: str) -> None:
    where = f"{src}: header field buffers.{name}"
    if not isinstance(b, dict):
        raise ProgramError(f"{where} is {short_repr(b, 40)}: expected a mapping")
    if b.get("memory") not in _MEMORIES:
        raise ProgramError(f"{where}.memory is {short_repr(b.get('memory'), 40)}: expected 'memtile' or 'ddr'")
    for key in _BUFFER_INTS:
        if not _count(b.get(key)):
            raise ProgramError(f"{where}.{key} is {short_repr(b.get(key), 40)}: expected an integer >= 0")
    shape = b.get("shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(_count(v) and v > 0 for v in shape)):
        raise ProgramError(f"{where}.shape is {short_repr(shape, 40)}: expected [C, H, W], three integers >= 1")
    if b["nbytes"] > L.MAX_BUFFER_BYTES:
        raise ProgramError(f"{where}.nbytes: " + L.above("", f"{b['nbytes']:,}", f"{L.MAX_BUFFER_BYTES:,}",
                                                          " B").lstrip())
    if math.prod(shape) != b["nbytes"]:
        raise ProgramError(f"{where}: shape {shape} holds {math.prod(shape):,} B, nbytes says {b['nbytes']:,}")


def check_limits(hw: ArrayConfig, layers: Sequence[LayerRecord], instrs: Sequence[Instr], n_per_iter: int,
                 src: str) -> None:
    """Every instruction's iterations inside ``per_iter`` and within ``MAX_ITERS``; every layer's
    tensors, weights, block and cores within the limits and the array."""
    at = 0  # per_iter holds every instruction's values, concatenated in instruction order
    for i, ins in enumerate(instrs):
        if ins.iters > L.MAX_ITERS:
            raise ProgramError(f"{src}: instruction #{i} ({ins.op}) iters: "
                               + L.above("", f"{ins.iters:,}", f"{L.MAX_ITERS:,}").lstrip())
        if ins.offset != at or at + ins.iters > n_per_iter:
            raise ProgramError(f"{src}: instruction #{i} ({ins.op}) reads per_iter[{ins.offset:,}:"
                               f"{ins.offset + ins.iters:,}], expected [{at:,}:{at + ins.iters:,}] of "
                               f"{n_per_iter:,} values (offset or iters edited); recompile it")
        at += ins.iters
    if at != n_per_iter:
        raise ProgramError(f"{src}: the instructions read {at:,} per_iter values, the file holds {n_per_iter:,}; "
                           "recompile it")
    for i, rec in enumerate(layers):
        problem = _layer_problem(rec, hw)
        if problem is not None:
            raise ProgramError(f"{src}: layer {i} ({short_repr(rec.name, 40)}): {problem}")


def _layer_problem(rec: LayerRecord, hw: ArrayConfig) -> str | None:
    g = rec.geometry
    (kh, kw), (ph, pw) = g.kernel, g.padding
    sizes = {
        "geometry ci x hi x wi (padded)": g.ci * (g.hi + 2 * ph) * (g.wi + 2 * pw),
        "geometry co x ho x wo": g.co * g.ho * g.wo,
        "sub oc x h x w": rec.sub.oc * rec.sub.h * rec.sub.w,
    }
    for what, n in sizes.items():
        if n > L.MAX_BUFFER_BYTES:
            return L.above(what, f"{n:,}", f"{L.MAX_BUFFER_BYTES:,}", " B")
    weights = g.co * (g.ci // g.groups) * kh * kw
    if weights > L.MAX_LAYER_WEIGHT_BYTES:
        return L.above("dense weights co x ci/groups x kernel", f"{weights:,}", f"{L.MAX_LAYER_WEIGHT_BYTES:,}", " B")
    for axis, (name, n_in, n_out) in enumerate((("rows", g.hi, g.ho), ("columns", g.wi, g.wo))):
        padded = n_in + 2 * g.padding[axis]
        # each window starts inside the padded input; it may end past it (ceil-mode pools' partial windows)
        if g.stride[axis] * (n_out - 1) >= padded:
            return (f"geometry: a window of kernel {g.kernel[axis]}, dilation {g.dilation[axis]}, stride "
                    f"{g.stride[axis]} cannot give {n_out} output {name} from {padded} padded input {name}")
    if max(g.block) > L.MAX_BLOCK:
        return L.above("geometry block", f"{g.block[0]}x{g.block[1]}", L.MAX_BLOCK)
    if len(rec.cores) > hw.n_cores:
        return f"{len(rec.cores)} cores, the array {hw.label} has {hw.n_cores}"
    if rec.loops.n_tiles > L.MAX_ITERS:
        return "loops n_tiles: " + L.above("", f"{rec.loops.n_tiles:,}", f"{L.MAX_ITERS:,}").lstrip()
    return None
