"""Domain exceptions. Every user-facing failure is one of these, with a message that names the
file, layer or field at fault and says what was expected."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "TilesparseError",
    "ConfigError",
    "UnsupportedOpError",
    "CapacityError",
    "CheckpointError",
    "ProgramError",
    "ProvenanceError",
]


class TilesparseError(Exception):
    """Base class of every error tilesparse raises on purpose (the CLI prints these without a
    traceback)."""


class ConfigError(TilesparseError, ValueError):
    """A configuration (YAML file, dict or argument) is invalid. Lists every problem at once."""

    def __init__(self, source: str | Path | None, errors: Iterable[str]):
        self.source = str(source) if source is not None else "<config>"
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"invalid configuration in {self.source}:\n{lines}")


class UnsupportedOpError(TilesparseError):
    """An operator outside the IR was met during capture or lowering."""


class CapacityError(TilesparseError):
    """Something cannot fit in a memory even at the smallest split."""


class CheckpointError(TilesparseError):
    """A checkpoint is unreadable or does not match the model it is loaded into."""


class ProgramError(TilesparseError):
    """A compiled Program artifact is malformed, truncated, from another version or another array."""


class ProvenanceError(TilesparseError):
    """A request contradicts a program's provenance, or a file it was compiled from changed."""
