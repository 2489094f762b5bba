"""Activation buffers in MemTile (striped over the columns) or DDR, read and written as windows
and tiles in the channels-last layout of docs/program.md: element (c, h, w) of a (C, H, W) buffer is
byte (h·W + w)·C + c; MemTile byte i of a buffer lives in column i // part_bytes at
offset + i % part_bytes."""

from __future__ import annotations

import numpy as np

from tilesparse.sim.memory import Memories, SimulationError, Where

__all__ = ["BufferMap"]


class BufferMap:
    """Bounds-checked window reads and tile writes of the program's activation buffers."""

    def __init__(self, program, mem: Memories):
        self.p, self.mem, self.hw = program, mem, program.hw
        self.cap = mem.mt_bytes  # activation area of the current layer (set per layer)
        for name, b in program.buffers.items():
            c, h, w = b["shape"]
            if c * h * w != b["nbytes"]:
                raise SimulationError(f"buffer {name}: shape {b['shape']} holds {c * h * w} B, "
                                      f"table says {b['nbytes']}")

    def info(self, where: Where, name: str) -> dict:
        if name not in self.p.buffers:
            raise SimulationError(f"{where}: no buffer {name!r} in the program's buffer table")
        return self.p.buffers[name]

    def in_ddr(self, name: str) -> bool:
        return self.p.buffers[name]["memory"] == "ddr"

    def _flat(self, where: Where, name: str, logical: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(memory array, flat indices) of logical bytes of buffer ``name``."""
        b = self.info(where, name)
        if b["memory"] == "ddr":
            addr = int(b["offset"])
            region = self.p.ddr.get(name)
            if region is None or region[0] != addr:
                raise SimulationError(f"{where}: buffer {name!r} at DDR {addr} has no matching DDR region")
            if logical.size:
                self.mem.ddr_check(where, addr + int(logical.min()), int(logical.max() - logical.min()) + 1,
                                   tuple(region))
            return self.mem.ddr, addr + logical
        part, off = int(b["part_bytes"]), int(b["offset"])
        col = logical // part
        if logical.size and int(col.max()) >= self.hw.cols:
            raise SimulationError(f"{where}: buffer {name!r} byte {int(logical.max())} falls beyond the "
                                  f"{self.hw.cols} MemTiles ({part} B per column)")
        return self.mem.memtile, self.mem.mt_flat(where, col, off + logical - col * part, 0, self.cap,
                                                  f"buffer {name!r}")

    def _logical(self, name: str, rows: np.ndarray, cols: np.ndarray, ch: np.ndarray) -> np.ndarray:
        c, _, w = self.p.buffers[name]["shape"]
        return ((rows[:, None] * w + cols[None, :])[:, :, None] * c + ch[None, None, :]).astype(np.int64)

    def read(self, where: Where, name: str, rows: np.ndarray, cols: np.ndarray, ch0: int, ch1: int
             ) -> tuple[np.ndarray, np.ndarray]:
        """Window (rows × cols × channels [ch0, ch1)) as int8, zeros outside the tensor, and the
        (rows × cols) mask of positions inside it."""
        c, h, w = self.info(where, name)["shape"]
        if ch0 < 0 or ch1 > c:
            raise SimulationError(f"{where}: channels [{ch0}, {ch1}) of buffer {name!r} ({c} channels)")
        rv, cv = (rows >= 0) & (rows < h), (cols >= 0) & (cols < w)
        out = np.zeros((len(rows), len(cols), ch1 - ch0), np.int8)
        if rv.any() and cv.any():
            arr, idx = self._flat(where, name, self._logical(name, rows[rv], cols[cv], np.arange(ch0, ch1)))
            vals = arr[idx].view(np.int8)
            if rv.all() and cv.all():
                out = vals
            else:
                out[np.ix_(np.flatnonzero(rv), np.flatnonzero(cv))] = vals
        return out, rv[:, None] & cv[None, :]

    def write(self, where: Where, name: str, tile: tuple[int, int, int, int], ch0: int, vals: np.ndarray,
              stride: int = 1) -> None:
        """Store an int8 tile (positions × channels, row-major positions) at channels ``ch0``,
        ``ch0 + stride``, … (stride > 1: a channel shuffle's copy)."""
        a, b, c, d = tile
        nch = vals.shape[1]
        cb = self.info(where, name)["shape"][0]
        last = ch0 + (nch - 1) * stride
        if ch0 < 0 or last >= cb or stride < 1:
            raise SimulationError(f"{where}: channels {ch0}..{last} (stride {stride}) of buffer {name!r} "
                                  f"({cb} channels)")
        arr, idx = self._flat(where, name, self._logical(name, np.arange(a, b), np.arange(c, d),
                                                         np.arange(ch0, last + 1, stride)))
        arr[idx.ravel()] = vals.reshape(-1).view(np.uint8)

    def snapshot(self, name: str, ch0: int, ch1: int) -> np.ndarray:
        """Channels [ch0, ch1) of a whole buffer as (C, H, W) int8."""
        where = Where(name, "snapshot")
        _, h, w = self.info(where, name)["shape"]
        saved, self.cap = self.cap, self.mem.mt_bytes
        try:
            x, _ = self.read(where, name, np.arange(h), np.arange(w), ch0, ch1)
        finally:
            self.cap = saved
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def store(self, name: str, x: np.ndarray) -> None:
        """Write a whole (C, H, W) int8 tensor (the graph input)."""
        c, h, w = self.p.buffers[name]["shape"]
        vals = np.ascontiguousarray(x.reshape(c, h, w).transpose(1, 2, 0)).reshape(h * w, c)
        self.write(Where(name, "input"), name, (0, h, 0, w), 0, vals)
