"""The simulator's memories: DDR, one MemTile per column, one data memory per core — plain numpy
byte arrays with their capacities from the array description, and bounds-checked accessors.

Every access names the instruction it serves (``Where``), so an overflow or an out-of-range
address becomes a ``SimulationError`` that says which layer, op, step and iteration did it.

Layouts the program leaves to the executor (docs/simulator.md):

* a core's data memory holds ``core.in`` (two halves: ping/pong), ``core.out`` and ``core.w`` back
  to back from address 0; they must fit ``core.data_memory_bytes``; the rest, ``core.res`` (two
  halves, docs/program.md), holds the residual tiles of a fused add;
* a MemTile holds the activation buffers below the layer's activation capacity
  (``meta["memtile_capacity"]``) and the layer's staging above it: ``wslot0``, ``wslot1``,
  ``stage_in[0/1]``, ``stage_out[0/1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tilesparse.errors import TilesparseError
from tilesparse.hw import ArrayConfig
from tilesparse.program.layout import residual_capacity

__all__ = ["CORE_REGIONS", "Memories", "SimulationError", "Where"]

CORE_REGIONS = ("in", "out", "w", "res")


class SimulationError(TilesparseError):
    """The program cannot run as written: an overflow, an out-of-range address, a malformed
    instruction or a result the hardware could not hold (names the instruction)."""


@dataclass(frozen=True)
class Where:
    """The instruction an access serves (for error messages)."""

    layer: str
    op: str
    step: int = -1
    it: int = -1
    index: int = -1  # into Program.instrs

    def __str__(self) -> str:
        s = f"layer {self.layer!r} {self.op}"
        if self.index >= 0:
            s += f" (instruction #{self.index})"
        if self.step >= 0:
            s += f" step {self.step}"
        if self.it >= 0:
            s += f" iteration {self.it}"
        return s


class Memories:
    """DDR, MemTiles (cols × ``memtile.bytes``) and core data memories (cores × data memory)."""

    def __init__(self, hw: ArrayConfig, ddr_top: int):
        self.hw = hw
        if ddr_top > hw.ddr.bytes:
            raise SimulationError(f"program DDR map needs {ddr_top} B, array {hw.label} has {hw.ddr.bytes} B")
        self.ddr_size = ddr_top  # only the mapped part is materialised; the rest is out of range
        self.ddr = np.zeros(ddr_top, np.uint8)
        self.mt_bytes = hw.memtile.bytes
        self.memtile = np.zeros(hw.cols * self.mt_bytes, np.uint8)  # column c at c * mt_bytes
        c = hw.core
        self.core_bytes = c.data_memory_bytes
        self.region = {"in": (0, c.input_buffer_bytes),
                       "out": (c.input_buffer_bytes, c.output_buffer_bytes),
                       "w": (c.input_buffer_bytes + c.output_buffer_bytes, c.weight_buffer_bytes)}
        need = sum(n for _, n in self.region.values())
        # core.res (docs/program.md): the data memory left after the three buffers holds a fused
        # add's residual tiles, two halves; partition.fits counts them against it.
        self.region["res"] = (need, residual_capacity(hw))
        if need > self.core_bytes:
            raise SimulationError(f"core buffers need {need} B, the data memory has {self.core_bytes} B "
                                  f"(array {hw.label})")
        self.core = np.zeros((hw.n_cores, self.core_bytes), np.uint8)

    # ---- DDR -------------------------------------------------------------------------------
    def ddr_check(self, where: Where, addr: int, n: int, region: tuple[int, int] | None = None) -> None:
        lo, hi = (0, self.ddr_size) if region is None else (region[0], region[0] + region[1])
        if addr < lo or addr + n > hi or n < 0:
            what = "the DDR map" if region is None else f"DDR region [{lo}, {hi})"
            raise SimulationError(f"{where}: DDR access [{addr}, {addr + n}) outside {what}")

    # ---- MemTile ---------------------------------------------------------------------------
    def mt_flat(self, where: Where, col: np.ndarray | int, off: np.ndarray, lo: int, hi: int, what: str
                ) -> np.ndarray:
        """Flat MemTile indices of byte offsets ``off`` in column(s) ``col``, checked to lie in
        [lo, hi) of the column (the area ``what`` may use)."""
        off = np.asarray(off)
        if off.size and (int(off.min()) < lo or int(off.max()) >= hi):
            bad = int(off.max()) if int(off.max()) >= hi else int(off.min())
            raise SimulationError(f"{where}: {what} byte at MemTile offset {bad} outside [{lo}, {hi}) "
                                  f"(MemTile {self.mt_bytes} B per column)")
        return np.asarray(col) * self.mt_bytes + off

    # ---- cores -----------------------------------------------------------------------------
    def core_slice(self, where: Where, core: int, region: str, off: int, n: int) -> np.ndarray:
        """A writable byte view of ``n`` bytes at ``off`` inside core ``core``'s ``region``."""
        base, size = self.region[region]
        if off < 0 or off + n > size:
            raise SimulationError(f"{where}: core {self.core_name(core)} core.{region} bytes "
                                  f"[{off}, {off + n}) exceed its {size} B")
        return self.core[core, base + off:base + off + n]

    def core_name(self, core: int) -> str:
        r, c = divmod(core, self.hw.cols)
        return f"({r},{c})"
