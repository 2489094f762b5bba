"""Per-layer and whole-network numbers of a compiled program: estimate, bound, roofline, bytes."""

from __future__ import annotations

from dataclasses import dataclass

from tilesparse.estimate.bounds import network_bound, program_bounds
from tilesparse.estimate.timemodel import ProgramTime, estimate_program
from tilesparse.program import Program

__all__ = ["Summary", "layer_rows", "summarize"]


@dataclass(frozen=True)
class Summary:
    estimate_ms: float
    bound_ms: float
    compute_ms: float  # sum of per-layer compute-at-peak bounds
    floor_ms: float  # sum of per-layer halting floors (bounds.py): what rule 5 alone forces
    dense_weight_bytes: int
    packed_weight_bytes: int  # bitmap + kept blocks (bias excluded, it is the same dense or sparse)
    bias_bytes: int
    net_bound_ms: float = 0.0  # the network bound (bounds.py): the largest per-resource sum
    net_limiter: str = "-"  # its resource

    @property
    def ratio(self) -> float:
        return self.estimate_ms / self.bound_ms if self.bound_ms else float("nan")

    @property
    def net_ratio(self) -> float:
        return self.estimate_ms / self.net_bound_ms if self.net_bound_ms else float("nan")

    @property
    def weight_fraction(self) -> float:
        return self.packed_weight_bytes / self.dense_weight_bytes if self.dense_weight_bytes else float("nan")


def summarize(program: Program, ptime: ProgramTime | None = None) -> Summary:
    ptime = ptime or estimate_program(program)
    bounds = program_bounds(program)
    net = network_bound(program, bounds)
    return Summary(ptime.total_s * 1e3, sum(b.bound_s for b in bounds) * 1e3,
                   sum(b.compute_s for b in bounds) * 1e3, sum(b.floor_s for b in bounds) * 1e3,
                   sum(r.dense_weight_bytes for r in program.layers),
                   sum(r.packed_weight_bytes for r in program.layers),
                   sum(r.bias_bytes for r in program.layers), net.bound_s * 1e3, net.limiter)


def layer_rows(program: Program, ptime: ProgramTime | None = None) -> list[dict]:
    """One dict per layer: time, bound and its limiter, roofline, compute, weight bytes, partition."""
    ptime = ptime or estimate_program(program)
    out = []
    for rec, (name, start, secs), b in zip(program.layers, ptime.layers, program_bounds(program), strict=True):
        out.append({"layer": name, "kind": rec.kind, "start_us": start * 1e6, "time_us": secs * 1e6,
                    "bound_us": b.bound_s * 1e6, "floor_us": b.floor_s * 1e6, "limiter": b.limiter,
                    "roofline_us": b.roofline_s * 1e6,
                    "compute_us": b.compute_s * 1e6, "ddr_us": b.ddr_s * 1e6, "memtile_us": b.memtile_s * 1e6,
                    "ratio": secs / b.bound_s if b.bound_s else float("nan"),
                    "dense_w": rec.dense_weight_bytes, "packed_w": rec.packed_weight_bytes,
                    "weights": rec.geometry.weight_format if rec.kind == "conv" else "-",
                    "grid": f"{rec.grid.oc_groups}x{rec.grid.sp_groups}/{rec.grid.col_axis}"
                            + (f"{rec.grid.col_h}" if rec.grid.col_axis == "hw" else ""),
                    "sub": f"{rec.sub.oc}oc {rec.sub.ci}ci {rec.sub.h}x{rec.sub.w}",
                    "loops": f"s{rec.loops.n_s} k{rec.loops.n_k} q{rec.loops.n_q}",
                    "in_zero_frac": rec.in_zero_frac, "out_zero_frac": rec.out_zero_frac,
                    "compressed": list(rec.compressed)})
    return out
