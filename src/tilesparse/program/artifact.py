"""The ``Program`` artifact: instructions + packed weights + metadata, saved in one versioned file
(``tilesparse.program.format``). The instruction semantics are in docs/program.md."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tilesparse.hw import ArrayConfig
from tilesparse.program import format as fmt
from tilesparse.program.checks import check_limits, check_tables
from tilesparse.program.instr import Instr
from tilesparse.program.listing import listing
from tilesparse.program.provenance import Provenance
from tilesparse.program.records import LayerRecord
from tilesparse.utils.atomic import atomic_write_bytes

__all__ = ["Program"]


@dataclass
class Program:
    """What the compiler emits and the simulator executes: the array it was compiled for, one
    ``LayerRecord`` per executed layer (schedule order), the instruction stream, the DDR weight
    image, the buffer table, the DDR map, per-channel quantization arrays, metadata and the
    provenance of the compile (what it was compiled from; filled by the caller)."""

    hw: ArrayConfig
    graph: str
    quantized: bool
    layers: tuple[LayerRecord, ...]
    instrs: tuple[Instr, ...]
    per_iter: np.ndarray
    weights: np.ndarray  # uint8 DDR weight image
    buffers: dict[str, dict[str, Any]]  # name -> memory, offset, part_bytes, shape (C, H, W)
    ddr: dict[str, list[int]]  # region -> [addr, nbytes]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    provenance: Provenance | None = None  # where it came from (filled by the front door)

    def __post_init__(self) -> None:
        self.layers, self.instrs = tuple(self.layers), tuple(self.instrs)

    def iter_values(self, ins: Instr) -> np.ndarray:
        return self.per_iter[ins.offset:ins.offset + ins.iters]

    def to_bytes(self) -> bytes:
        return fmt.encode(self)

    def save(self, path: str | Path) -> Path:
        """Write the program to ``path`` atomically (never a half-written file). A program beyond
        the limits of a program file (docs/limits.md) is refused first: every file written loads."""
        check_tables(self.buffers, self.ddr, str(path))
        check_limits(self.hw, self.layers, self.instrs, self.per_iter.size, str(path))
        return atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path, hw: ArrayConfig | None = None) -> Program:
        """Read a program; ``ProgramError`` if the file is missing, truncated, corrupt, of another
        format version, or (when ``hw`` is given) compiled for another array."""
        path = Path(path)
        return cls(**fmt.decode_header(fmt.read_arrays(path), str(path), hw))

    def listing(self, max_instrs_per_layer: int | None = None) -> str:
        """A readable listing: per layer its partition and buffers, then its instructions."""
        return listing(self, max_instrs_per_layer)
