"""Functional simulator: execute a compiled ``Program`` over explicit memories, bit-exact against
the integer reference and, given the module, within a derived tolerance of PyTorch in float, with an
ordering (hazard) check and byte / MAC accounting (docs/simulator.md)."""

from tilesparse.sim.hazards import HazardError, check_ordering
from tilesparse.sim.memory import SimulationError
from tilesparse.sim.oracle import (
    LayerCheck,
    Report,
    SimResult,
    program_input,
    simulate,
    verify,
)
from tilesparse.sim.torch_oracle import FloatCheck, FloatLayer

__all__ = [
    "FloatCheck",
    "FloatLayer",
    "HazardError",
    "LayerCheck",
    "Report",
    "SimResult",
    "SimulationError",
    "check_ordering",
    "program_input",
    "simulate",
    "verify",
]
