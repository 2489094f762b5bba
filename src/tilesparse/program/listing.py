"""A readable listing of a program: per layer its geometry, partition and buffers, then its
instructions in the notation of docs/program.md (``ddr@ADDR``, ``core.in[i%2].full``)."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from tilesparse.program.instr import Instr

if TYPE_CHECKING:  # the Program imports this module
    from tilesparse.program.artifact import Program

__all__ = ["listing"]


def listing(program: Program, max_instrs_per_layer: int | None = None) -> str:
    p = program
    lines = [(f"; program for {p.graph} on {p.hw.label} ({p.hw.rows}x{p.hw.cols}), {len(p.layers)} layers, "
              f"{len(p.instrs)} instructions, weights {p.weights.nbytes} B")]
    by_layer: dict[int, list[Instr]] = {}
    for ins in p.instrs:
        by_layer.setdefault(ins.layer, []).append(ins)
    for li, rec in enumerate(p.layers):
        g = rec.geometry
        lines.append(f"\n{rec.name}: {rec.kind} {g.ci}x{g.hi}x{g.wi} -> {g.co}x{g.ho}x{g.wo}"
                     f" kernel {list(g.kernel)} stride {list(g.stride)}  grid {asdict(rec.grid)}"
                     f"  sub {asdict(rec.sub)}  loops {asdict(rec.loops)}")
        lines.append(f"  in {[asdict(i) for i in rec.inputs]}  out {asdict(rec.output)}")
        items = by_layer.get(li, [])
        shown = items if max_instrs_per_layer is None else items[:max_instrs_per_layer]
        for ins in shown:
            src, dst = "+".join(map(str, ins.src)), "+".join(map(str, ins.dst))
            lines.append(f"  {ins.op:<7} s{ins.s} k{ins.k} q{ins.q} x{ins.iters:<4} {src} -> {dst}"
                         f"  {ins.nbytes} {'MAC' if ins.op == 'COMP' else 'B'}"
                         f"  [{ins.locks_text('acquire')} | {ins.locks_text('release')}]")
        if len(shown) < len(items):
            lines.append(f"  ... {len(items) - len(shown)} more")
    return "\n".join(lines)
