"""Static view of one ``LayerRecord``: its geometry and partition, each core's tiles, chunk rows
and the input window of every tile (docs/program.md, "A layer").

Everything here is read from the program alone (never from the graph), by the program's own rules
(``tilesparse.program.layout``: ``tile_grid``, ``chunk_with_inputs``, ``tile_window``).
"""

from __future__ import annotations

from tilesparse.program import ChunkRow, LayerRecord
from tilesparse.program.layout import (
    Window,
    band_rules,
    chunk_with_inputs,
    even_chunk,
    ring_columns,
    slid_tiles,
    splits_window,
    tile_grid,
    tile_window,
)
from tilesparse.sim.memory import SimulationError

__all__ = ["ELEMENTWISE", "LayerView", "Window"]

ELEMENTWISE = ("add", "mul", "relu", "relu6", "lut", "copy")  # 1x1 windows, one output per input position


class LayerView:
    """One layer of a program, as the simulator executes it."""

    def __init__(self, index: int, rec: LayerRecord):
        self.index, self.rec, self.name, self.kind = index, rec, rec.name, rec.kind
        self.spec = rec.geometry
        self.cores = rec.cores
        self.part = rec.partition
        lp = rec.loops
        self.n_s, self.n_k, self.n_q, self.G = lp.n_s, lp.n_k, lp.n_q, lp.tiles_per_group
        self.tiles = [tile_grid(c.h0, c.h1, c.w0, c.w1, self.part.sub.h, self.part.sub.w) if not c.empty else []
                      for c in self.cores]
        self.chunk_rows: dict[tuple[int, int, int], ChunkRow] = {r.key: r for r in rec.chunks}
        self.step_chunks: dict[tuple[int, int], list[ChunkRow]] = {}  # (k, q) -> chunk rows (what LOADW moves)
        for r in rec.chunks:
            self.step_chunks.setdefault((r.k, r.q), []).append(r)
        self.n_win_inputs = len(rec.inputs) - (1 if rec.fused_add else 0)
        if self.kind == "conv":
            self._check_chunks()
        self._win: dict[tuple[int, int, int, int, int], Window] = {}
        self.slide = self.spec.slides
        if lp.slide != self.slide:
            raise SimulationError(f"layer {self.name!r}: loops slide = {lp.slide!r}, but a {self.kind} "
                                  f"with kernel {self.spec.kernel} and stride {self.spec.stride} "
                                  f"{'slides' if self.slide else 'does not slide'} its windows")
        self.ring_cols = ring_columns(self.spec, self.part.sub) if self.slide else 0
        self._slid = [slid_tiles(self.spec, c.h1 - c.h0, c.w1 - c.w0, self.part.sub.h, self.part.sub.w, self.G)
                      if not c.empty else None for c in self.cores]

    def _check_chunks(self) -> None:
        """A conv's chunk rows must cut each oc group's channels into consecutive chunks k = 0, 1, …
        of at most ``sub.oc``, the same for every input-channel chunk q: the simulator takes the
        output channels from them, so a gap or an overlap would leave outputs uncomputed."""
        groups = {cw.oc_group: (cw.oc0, cw.oc1) for cw in self.cores if not cw.empty}
        for g, (oc0, oc1) in sorted(groups.items()):
            first = None
            for q in range(self.n_q):
                ks = [k for k in range(self.n_k) if (g, k, q) in self.chunk_rows]
                cuts = [(self.chunk_rows[g, k, q].oc0, self.chunk_rows[g, k, q].oc1) for k in ks]
                starts = [oc0] + [b for _, b in cuts]  # each chunk starts where the previous ended
                first = cuts if first is None else first  # partial sums of chunk k add up over q
                ok = (ks == list(range(len(ks))) and starts[-1] == oc1 and cuts == first
                      and all(a == st and 0 < b - a <= self.part.sub.oc  # starts: one more than cuts
                              for (a, b), st in zip(cuts, starts, strict=False)))
                if not ok:
                    raise SimulationError(f"layer {self.name!r}: the chunk rows of oc group {g}, q={q} "
                                          f"cut its channels [{oc0}, {oc1}) as {cuts}; expected consecutive "
                                          f"chunks k = 0, 1, … of at most sub.oc = {self.part.sub.oc} covering them, "
                                          f"the same for every q")

    # ---- per step ---------------------------------------------------------------------------
    def chunk(self, core: int, k: int, q: int) -> tuple[int, int, int, int] | None:
        """(oc0, oc1, ci0, ci1) core ``core`` works on in chunk (k, q), None if it idles. A conv's
        output channels come from the program's chunk table (the compiler balances them by kept
        work, from a mask the program does not carry); other layers cut every ``sub.oc``."""
        cw = self.cores[core]
        if cw.empty:
            return None
        if self.kind != "conv":
            return chunk_with_inputs(self.spec, self.part, *even_chunk(cw.oc0, cw.oc1, self.part.sub.oc, k), q)
        row = self.chunk_rows.get((cw.oc_group, k, q))  # checked by _check_chunks
        return None if row is None else chunk_with_inputs(self.spec, self.part, row.oc0, row.oc1, q)

    def tile(self, core: int, s: int, i: int) -> tuple[int, int, int, int] | None:
        """Output tile (h0, h1, w0, w1) of iteration ``i`` of spatial group ``s``, None if idle."""
        t = s * self.G + i
        tiles = self.tiles[core]
        return tiles[t] if i < self.G and t < len(tiles) else None

    def slid(self, core: int, s: int, i: int) -> bool:
        """Whether iteration ``i`` of spatial group ``s`` continues the core's sliding window
        (``layout.slid_tiles``): LOADFM moves only its new columns."""
        slid = self._slid[core]
        return slid is not None and bool(slid[s * self.G + i])

    def moved_cols(self, core: int, s: int, i: int, tile: tuple[int, int, int, int]) -> int:
        """Window columns LOADFM moves for ``tile`` (iteration ``i`` of group ``s``): the whole
        window's, or for a sliding tile the ``width × stride`` past the previous window."""
        if self.slide and self.slid(core, s, i):
            return (tile[3] - tile[2]) * self.spec.stride[1]
        return len(self.window(tile).cols)

    def window(self, tile: tuple[int, int, int, int], q: int = 0) -> Window:
        """The input window of ``tile`` in input chunk ``q``: the tile's window, or for a pool run
        in window bands (``banded``) band q's rows of it (``layout.band_rules``)."""
        key = (*tile, q if self.banded else 0)
        if key not in self._win:
            self._win[key] = tile_window(band_rules(self.spec, self.n_q, q) if self.banded else self.spec, tile)
        return self._win[key]

    @property
    def banded(self) -> bool:
        """Whether q runs over window-row bands (``layout.splits_window``), not input channels."""
        return splits_window(self.spec, self.n_q)

    def last_q(self, q: int) -> bool:
        return q == self.n_q - 1

    @property
    def has_weights(self) -> bool:
        return self.kind in ("conv", "lut")
