"""What one compile memoizes, in one object passed down explicitly (no module state).

The search evaluates a layer's candidates over and over from the same pieces: a core's
output-channel chunks (``partition.oc_chunks``), a layer's channel ranges per grid
(``partition.assign_cores``), a partition's tile layout and chunk work (``steps.layer_steps``),
tile shapes per layer geometry, the input-channel chunks tried per output-channel chunk
(``planning._chunk_cis``), the choice of a repeated layer (``planning.plan_layer``), a float
weight's int8 image (``pack.int8_weights``). A ``CompileCache`` holds them for as long as the
compile that created it (``compile_graph`` makes one per call unless the caller passes one in),
so nothing leaks from one compile into the next and a compile is reproducible on its own.

Every entry is what computing it again would give: the tables change the compile time, never a
result (a repeated layer's replayed choice equals a fresh search's, tests/test_compiler_planning.py).
Keys are values, or hold the ``id`` of objects the entry itself keeps alive (``memo``'s
``owners``), so an id is never reused by another object while its entry exists. Each table is
bounded (``LIMITS``): when full it starts over, which costs time, never a result.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["LIMITS", "CompileCache", "memo"]

T = TypeVar("T")

LIMITS = {  # entries per table; a network has a few hundred layers, a layer's search a few hundred candidates
    "oc_chunks": 65536,  # (spec, core channel range, chunk width, chunk count) -> chunk bounds
    "oc_ranges": 4096,  # (spec, part count, parts per row) -> output-channel ranges
    "chunk_work": 1024,  # (spec, groups' ranges, chunk sizes) -> chunk bounds, COMP work, weight pieces
    "layout": 1024,  # (spec, cores, tile shape) -> a partition's tile layout
    "int8": 512,  # float weight array -> its int8 image
    "plans": 4096,  # plan key (geometry, mask, array, activation homes) -> (grid, sub-volume)
    "tiles": 4096,  # (geometry, array) -> {(oc, ci, rows, cols): tile shapes}
    "chunk_ci": 4096,  # (spec, cores' channel ranges, chunk width) -> input channels per chunk tried
}


class CompileCache:
    """The memo tables of one compile (module doc); ``tables[name]`` maps a key to
    ``(owners, value)``."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[Any, tuple[Any, Any]]] = {name: {} for name in LIMITS}

    def memo(self, table: str, owners: Any, key: Any, compute: Callable[[], T]) -> T:
        """``compute()``, once per ``key`` of ``table``. ``key`` may hold the ``id`` of ``owners``
        (an object or a tuple of them): the entry keeps them alive."""
        store = self.tables[table]
        hit = store.get(key)
        if hit is None:
            if len(store) >= LIMITS[table]:
                store.clear()
            hit = store[key] = (owners, compute())
        return hit[1]

    def get(self, table: str, key: Any) -> Any:
        """The value stored under ``key`` (a value key), or None."""
        hit = self.tables[table].get(key)
        return None if hit is None else hit[1]

    def put(self, table: str, key: Any, value: Any) -> None:
        """Store ``value`` under a value ``key`` (one that holds no ids), replacing any entry."""
        store = self.tables[table]
        if key not in store and len(store) >= LIMITS[table]:
            store.clear()
        store[key] = (None, value)


def memo(cache: CompileCache | None, table: str, owners: Any, key: Any, compute: Callable[[], T]) -> T:
    """``cache.memo(...)``, or ``compute()`` when there is no cache (a caller outside a compile)."""
    return compute() if cache is None else cache.memo(table, owners, key, compute)
