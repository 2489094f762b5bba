"""The Program: what the compiler writes and the simulator and estimator read (docs/program.md).

* ``records``, ``instr``, ``geometry``: the typed, immutable records of a program (layers, cores,
  chunks, instructions, operands, locks, the window geometry);
* ``layout``: what a program means (tiles, sliding windows, chunk channels, accumulator slots);
* ``packing``: the packed weight chunk format;
* ``format``: the versioned file; ``listing``: the readable listing;
* ``provenance``: where a program came from (model source, hashes, every choice made).

This package depends on nothing but ``hw``, ``errors`` and ``utils``: the compiler builds on it,
and the simulator and estimator read programs through it alone.
"""

from tilesparse.program.artifact import Program
from tilesparse.program.format import FORMAT_VERSION, MAGIC
from tilesparse.program.geometry import KINDS, LayerGeometry, WindowRules
from tilesparse.program.instr import OPS, Instr, Lock, Operand
from tilesparse.program.provenance import Provenance, provenance_of, set_provenance
from tilesparse.program.records import (
    ChunkRow,
    CoreRow,
    CoreWork,
    Grid,
    LayerPartition,
    LayerRecord,
    Loops,
    SubVolume,
    TensorSlice,
)

__all__ = ["FORMAT_VERSION", "KINDS", "MAGIC", "OPS", "ChunkRow", "CoreRow", "CoreWork", "Grid", "Instr",
           "LayerGeometry", "LayerPartition", "LayerRecord", "Lock", "Loops", "Operand", "Program", "Provenance",
           "SubVolume", "TensorSlice", "WindowRules", "provenance_of", "set_provenance"]
