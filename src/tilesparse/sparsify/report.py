"""Per-layer sparsity report and weight bytes, dense vs compressed.

Compressed bytes of a block-sparse layer = kept blocks x (b_o x b_i x kernel elements) x bytes per
weight + a keep-bitmap of ceil(rows x cols / 8) bytes (the index metadata). Ragged edge blocks count
as full blocks (the hardware packs whole blocks, padding with zeros). Any other pattern: kept weights
x bytes per weight + the pattern's metadata (``Pattern.metadata_bits``: a bitmap per unit, N index
bits per N:M run), rounded up to bytes. Units are blocks / channels / filters for grid patterns and
single weights for N:M and hierarchies. Layers that are not sparsified count their dense bytes on
both sides. ``bytes_per_weight`` defaults to 1 (int8 deployment).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, replace

from torch import nn

from tilesparse.patterns.family import Block, GridPattern
from tilesparse.sparsify.sparsifier import SparseLayer, Sparsifier, _kind

__all__ = ["LayerReport", "SparsityReport", "build_report", "compressed_bytes"]

INT8_BYTES = 1
BITS_PER_BYTE = 8


def compressed_bytes(kept_blocks: int, block_numel: int, rows: int, cols: int, bytes_per_weight: int) -> int:
    """Kept whole blocks plus the keep-bitmap."""
    return kept_blocks * block_numel * bytes_per_weight + math.ceil(rows * cols / BITS_PER_BYTE)


@dataclass(frozen=True)
class LayerReport:
    name: str
    kind: str                   # "conv" or "linear"
    weight_shape: tuple[int, ...]
    groups: int
    block: str                  # the layer's pattern ("8x8", "2:4", "8x8@0.5/2:4"), or "-" when not sparsified
    grid: tuple[int, int]       # (unit rows, unit cols) of a grid pattern; (0, 0) otherwise
    blocks_kept: int            # units kept (blocks, or weights for N:M and hierarchies)
    blocks_total: int
    sparsity: float             # zero units / all units
    dense_bytes: int
    compressed_bytes: int
    note: str = ""              # why a layer was skipped, or why it is below its target


@dataclass(frozen=True)
class SparsityReport:
    layers: tuple[LayerReport, ...]
    bytes_per_weight: int

    @property
    def dense_bytes(self) -> int:
        return sum(r.dense_bytes for r in self.layers)

    @property
    def compressed_bytes(self) -> int:
        return sum(r.compressed_bytes for r in self.layers)

    @property
    def block_sparsity(self) -> float:
        """Zero units / all units over sparsified layers (blocks, for block patterns)."""
        total = sum(r.blocks_total for r in self.layers)
        return 1.0 - sum(r.blocks_kept for r in self.layers) / total if total else 0.0

    def to_dict(self) -> dict:
        return {"bytes_per_weight": self.bytes_per_weight, "dense_bytes": self.dense_bytes,
                "compressed_bytes": self.compressed_bytes, "block_sparsity": self.block_sparsity,
                "layers": [asdict(r) for r in self.layers]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        head = f"{'layer':<28} {'shape':<18} {'pattern':>11} {'grid':>7} {'kept':>11} {'sparsity':>8} {'bytes':>19}"
        lines = [head, "-" * len(head)]
        for r in self.layers:
            shape = "x".join(map(str, r.weight_shape)) + (f" g{r.groups}" if r.groups > 1 else "")
            grid = f"{r.grid[0]}x{r.grid[1]}" if r.blocks_total and r.grid != (0, 0) else "-"
            kept = f"{r.blocks_kept}/{r.blocks_total}" if r.blocks_total else "dense"
            line = (f"{r.name:<28} {shape:<18} {r.block:>11} {grid:>7} {kept:>11} {r.sparsity:>8.1%} "
                    f"{r.dense_bytes:>9,}->{r.compressed_bytes:<9,}" + (f"  ({r.note})" if r.note else ""))
            lines.append(line.rstrip())
        ratio = self.compressed_bytes / self.dense_bytes if self.dense_bytes else 1.0
        lines.append("-" * len(head))
        lines.append(f"weights ({self.bytes_per_weight} B each): dense {self.dense_bytes:,} B -> compressed "
                     f"{self.compressed_bytes:,} B ({ratio:.1%}); sparsity {self.block_sparsity:.1%} of the units")
        return "\n".join(lines)


def build_report(model: nn.Module, sparsifier: Sparsifier | None = None,
                 bytes_per_weight: int = INT8_BYTES) -> SparsityReport:
    """One row per Conv2d / Linear of ``model`` (sparsified or not), in module order."""
    layers = sparsifier.layers if sparsifier is not None else {}
    skipped = sparsifier.skipped if sparsifier is not None else {}
    rows = []
    for name, m in model.named_modules():
        kind = _kind(m)
        if kind is None:
            continue
        shape = tuple(m.weight.shape)
        dense = math.prod(shape) * bytes_per_weight
        groups = getattr(m, "groups", 1)
        if name in layers:
            row = _layer_row(layers[name], kind, dense, bytes_per_weight)
            short = sparsifier.shortfalls.get(name) if sparsifier is not None else None
            rows.append(replace(row, note=short) if short else row)
        else:
            rows.append(LayerReport(name, kind, shape, groups, "-", (0, 0), 0, 0, 0.0, dense, dense,
                                    skipped.get(name, "not selected")))
    return SparsityReport(tuple(rows), bytes_per_weight)


def _layer_row(layer: SparseLayer, kind: str, dense: int, bytes_per_weight: int) -> LayerReport:
    p, shape, groups = layer.pattern, layer.shape, layer.groups
    spec = p.spec() if not isinstance(p, GridPattern) else p.at(None).spec()  # the unit, not the level's target
    if isinstance(p, Block):
        g = layer.geom
        kept = int(layer.mask.sum())
        comp = compressed_bytes(kept, g.block_numel, g.rows, g.cols, bytes_per_weight)
        return LayerReport(layer.name, kind, shape, groups, spec, g.grid, kept, g.n_blocks,
                           1.0 - kept / g.n_blocks, dense, comp)
    kept_weights = int(layer.param.element_mask.expand(shape).count_nonzero())
    comp = kept_weights * bytes_per_weight + math.ceil(p.metadata_bits(shape, groups) / BITS_PER_BYTE)
    grid = layer.geom.grid if isinstance(p, GridPattern) else (0, 0)
    kept, total = int(layer.mask.sum()), layer.mask.numel()
    return LayerReport(layer.name, kind, shape, groups, spec, grid, kept, total, 1.0 - kept / total, dense, comp)
