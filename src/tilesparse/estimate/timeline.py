"""Timeline charts of an estimate: one lane per instruction type, one bar per instruction.

``write_timeline(program, ptime, path)`` writes a PNG (matplotlib) or a self-contained HTML page
(inline SVG; hovering a bar shows the instruction, its layer and why it takes that long),
chosen by the file suffix.
"""

from __future__ import annotations

import html
from pathlib import Path

from tilesparse.estimate.timemodel import ProgramTime
from tilesparse.program import OPS, Program
from tilesparse.utils.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["write_timeline"]

COLORS = {"LOAD": "#4c72b0", "LOADW": "#dd8452", "LOADFM": "#55a868", "LOADWM": "#c44e52",
          "COMP": "#8172b3", "WRITEFM": "#937860", "WRITE": "#da8bc3"}
SVG_WIDTH = 1400  # px of the time axis
LANE_PX = 28


def write_timeline(program: Program, ptime: ProgramTime, path: str | Path) -> Path:
    path = Path(path)
    if path.suffix.lower() == ".png":
        return _png(program, ptime, path)
    if path.suffix.lower() in (".html", ".htm"):
        return _html(program, ptime, path)
    raise ValueError(f"timeline {path}: expected a .png or .html file name")


def _png(program: Program, ptime: ProgramTime, path: Path) -> Path:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(14, 4.5))
    for lane, op in enumerate(OPS):
        bars = [(it.start_s * 1e3, max(it.busy_s * 1e3, 1e-6)) for it in ptime.instrs
                if program.instrs[it.index].op == op]
        ax.broken_barh(bars, (lane - 0.4, 0.8), color=COLORS[op])
    for _, start, _ in ptime.layers:
        ax.axvline(start * 1e3, color="#dddddd", lw=0.3, zorder=0)
    ax.set_yticks(range(len(OPS)), OPS)
    ax.set_xlabel("time (ms)")
    ax.set_title(f"{program.graph} on {program.hw.label}: {ptime.total_s * 1e3:.3f} ms")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _html(program: Program, ptime: ProgramTime, path: Path) -> Path:
    total = max(ptime.total_s, 1e-12)
    sx = SVG_WIDTH / total
    left = 80
    rects = []
    for it in ptime.instrs:
        ins = program.instrs[it.index]
        lane = OPS.index(ins.op)
        name = program.layers[ins.layer].name
        tip = html.escape(f"{ins.op} {name} step {ins.step} (s{ins.s} k{ins.k} q{ins.q}) x{ins.iters}: "
                          f"{it.busy_s * 1e6:.2f} us from {it.start_s * 1e6:.2f} us; {it.why}")
        rects.append(f'<rect x="{left + it.start_s * sx:.2f}" y="{lane * LANE_PX + 4}" '
                     f'width="{max(it.busy_s * sx, 0.5):.2f}" height="{LANE_PX - 8}" '
                     f'fill="{COLORS[ins.op]}"><title>{tip}</title></rect>')
    labels = [f'<text x="4" y="{i * LANE_PX + LANE_PX * 0.65}" font-size="12">{op}</text>'
              for i, op in enumerate(OPS)]
    rows = "".join(f"<tr><td>{html.escape(n)}</td><td>{s * 1e3:.4f}</td><td>{d * 1e6:.1f}</td></tr>"
                   for n, s, d in ptime.layers)
    height = LANE_PX * len(OPS) + 10
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(program.graph)} on {program.hw.label}</title>
<style>body{{font-family:sans-serif}} table{{border-collapse:collapse}}
td,th{{padding:2px 8px;border-bottom:1px solid #eee}}</style>
</head><body><h2>{html.escape(program.graph)} on {program.hw.label}: {ptime.total_s * 1e3:.3f} ms</h2>
<p>One lane per instruction type; hover a bar for its layer, step, time and explanation.</p>
<svg width="{left + SVG_WIDTH + 10}" height="{height}">{''.join(labels)}{''.join(rects)}</svg>
<h3>Layers</h3><table><tr><th>layer</th><th>start (ms)</th><th>time (us)</th></tr>{rows}</table>
</body></html>"""
    return atomic_write_text(path, page)
