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
        if len(self.errors) == 1:  # the usual case: one line, "where: what was expected"
            super().__init__(f"{self.source}: {self.errors[0]}")
        else:
            lines = "\n".join(f"  - {e}" for e in self.errors)
            super().__init__(f"invalid configuration in {self.source}:\n{lines}")

    def __reduce__(self) -> tuple[type, tuple[str, list[str]]]:
        """Rebuilt from (source, errors): worker processes (explore) send it back intact."""
        return type(self), (self.source, self.errors)


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
