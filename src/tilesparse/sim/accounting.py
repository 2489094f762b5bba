"""Bytes and MACs counted while the program runs, against what the time model charged.

Per instruction and iteration the executor adds the bytes each channel carried (one channel per
column for LOAD / LOADFM / WRITEFM / WRITE, per row for LOADWM, every column for LOADW) and, for
COMP, the MACs (element operations for pools, adds, copies) and the cycles of each core. The time
model's input is ``Program.per_iter`` — per iteration, the busiest channel's bytes or the slowest
core's cycles — and ``Instr.nbytes`` (the total; MACs for COMP). ``compare`` checks both, layer by
layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["LEVELS", "OPS", "Accounting", "LayerAccount"]

OPS = ("LOADW", "LOADWM", "LOAD", "LOADFM", "COMP", "WRITEFM", "WRITE")
LEVELS = {"LOADW": "DDR->MemTile", "LOAD": "DDR->MemTile", "LOADWM": "MemTile->core",
          "LOADFM": "MemTile->core", "WRITEFM": "core->MemTile", "WRITE": "MemTile->DDR",
          "COMP": "core"}
MAX_NOTES = 5  # mismatch descriptions kept per layer


@dataclass
class LayerAccount:
    """One layer: per op the simulator's and the model's busiest-channel bytes (Σ over
    iterations) and totals; MACs; COMP cycles; the first mismatches found."""

    name: str
    sim_bytes: dict[str, int] = field(default_factory=dict)  # Σ_i busiest channel, counted
    model_bytes: dict[str, int] = field(default_factory=dict)  # Σ per_iter, charged
    sim_total: dict[str, int] = field(default_factory=dict)  # all channels, counted
    listed_total: dict[str, int] = field(default_factory=dict)  # Instr.nbytes
    sim_macs: int = 0
    model_macs: int = 0
    sim_cycles: int = 0
    model_cycles: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def bytes_ok(self) -> bool:
        return self.sim_bytes == self.model_bytes

    @property
    def totals_ok(self) -> bool:
        return self.sim_total == self.listed_total

    @property
    def macs_ok(self) -> bool:
        return self.sim_macs == self.model_macs

    @property
    def cycles_ok(self) -> bool:
        return self.sim_cycles == self.model_cycles

    @property
    def ok(self) -> bool:
        return self.bytes_ok and self.macs_ok


class Accounting:
    """Counters filled by the executor (see module doc)."""

    def __init__(self, program):
        self.p = program
        self.n_chan = {op: (program.hw.rows if op == "LOADWM" else program.hw.cols) for op in OPS}
        self.chan: dict[int, np.ndarray] = {}  # instr -> iters × channels bytes
        self.cycles: dict[int, np.ndarray] = {}  # instr -> iters (slowest core)
        self.macs: dict[int, int] = {}
        self.streamed: dict[int, int] = {}  # zero-compressed instr -> compressed bytes on its streams

    def stream(self, idx: int, nbytes: int) -> None:
        """A zero-compressed transfer of instruction ``idx`` put ``nbytes`` (compressed) on a stream."""
        self.streamed[idx] = self.streamed.get(idx, 0) + int(nbytes)

    def compression(self) -> list[tuple[str, str, int, int, float]]:
        """Per layer and zero-compressed transfer: (layer, op, raw bytes, compressed bytes the
        simulator's streams carried for this input, bytes the time model expected from the layer's
        calibrated zero fraction — ``zero_compress.expected_sizes`` of each channel's bytes)."""
        from tilesparse.program.zero_compress import expected_sizes, zero_frac_of

        c = self.p.hw.dma_compression
        out: dict[tuple[int, str], list] = {}
        for idx, n in self.streamed.items():
            ins = self.p.instrs[idx]
            rec = self.p.layers[ins.layer]
            raw = self._arr(idx)
            exp = expected_sizes(raw, zero_frac_of(rec, ins.op), c.chunk_bytes, c.mask_bytes, c.word_bytes).sum()
            row = out.setdefault((ins.layer, ins.op), [rec.name, ins.op, 0, 0, 0.0])
            row[2] += int(raw.sum())
            row[3] += n
            row[4] += float(exp)
        return [tuple(out[k]) for k in sorted(out)]  # type: ignore[misc]

    def _arr(self, idx: int) -> np.ndarray:
        if idx not in self.chan:
            ins = self.p.instrs[idx]
            self.chan[idx] = np.zeros((ins.iters, self.n_chan[ins.op]), np.int64)
        return self.chan[idx]

    def move(self, idx: int, it: int, channel: int, nbytes: int) -> None:
        self._arr(idx)[it, channel] += nbytes

    def compute(self, idx: int, it: int, macs: int, cycles: int) -> None:
        self.macs[idx] = self.macs.get(idx, 0) + int(macs)
        if idx not in self.cycles:
            self.cycles[idx] = np.zeros(self.p.instrs[idx].iters, np.int64)
        self.cycles[idx][it] = max(self.cycles[idx][it], cycles)

    def compare(self, layers: range | None = None) -> list[LayerAccount]:
        """Per layer, counted vs charged (every layer that ran, in order)."""
        out: dict[int, LayerAccount] = {}
        for idx, ins in enumerate(self.p.instrs):
            if layers is not None and ins.layer not in layers:
                continue
            la = out.setdefault(ins.layer, LayerAccount(self.p.layers[ins.layer].name))
            model = self.p.iter_values(ins)
            if ins.op == "COMP":
                self._compare_comp(idx, ins, model, la)
                continue
            got = self._arr(idx)
            busiest = got.max(axis=1) if got.shape[1] else np.zeros(ins.iters, np.int64)
            for d, key in ((la.sim_bytes, ins.op), (la.model_bytes, ins.op)):
                d.setdefault(key, 0)
            la.sim_bytes[ins.op] += int(busiest.sum())
            la.model_bytes[ins.op] = la.model_bytes[ins.op] + round(float(model.sum()))
            la.sim_total[ins.op] = la.sim_total.get(ins.op, 0) + int(got.sum())
            la.listed_total[ins.op] = la.listed_total.get(ins.op, 0) + int(ins.nbytes)
            bad = np.flatnonzero(busiest != np.rint(model).astype(np.int64))
            if len(bad) and len(la.notes) < MAX_NOTES:
                i = int(bad[0])
                la.notes.append(f"{ins.op} #{idx} step {ins.step} iteration {i}: busiest channel moved "
                                f"{int(busiest[i])} B, time model charged {model[i]:.0f} B")
        return [out[k] for k in sorted(out)]

    def _compare_comp(self, idx, ins, model, la: LayerAccount) -> None:
        macs = self.macs.get(idx, 0)
        la.sim_macs += macs
        la.model_macs += int(ins.nbytes)
        cyc = self.cycles.get(idx, np.zeros(ins.iters, np.int64))
        la.sim_cycles += int(cyc.sum())
        la.model_cycles += round(float(model.sum()))
        if macs != ins.nbytes and len(la.notes) < MAX_NOTES:
            la.notes.append(f"COMP #{idx} step {ins.step}: executed {macs} MACs, time model charged {ins.nbytes}")
        bad = np.flatnonzero(cyc != np.rint(model).astype(np.int64))
        if len(bad) and len(la.notes) < MAX_NOTES:
            i = int(bad[0])
            la.notes.append(f"COMP #{idx} step {ins.step} iteration {i}: slowest core {int(cyc[i])} cycles, "
                            f"time model charged {model[i]:.0f}")

    def by_level(self) -> dict[str, int]:
        """Bytes moved (all channels) per memory level, and MACs."""
        out: dict[str, int] = {}
        for idx, arr in self.chan.items():
            lvl = LEVELS[self.p.instrs[idx].op]
            out[lvl] = out.get(lvl, 0) + int(arr.sum())
        out["MACs"] = sum(self.macs.values())
        return out
