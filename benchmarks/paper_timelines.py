"""ResNet50 on 4x4 under the paper's rules, held against the paper's own per-layer timelines.

The paper published per-instruction timelines for its estimates; wbs-paper.md ("Where the paper's
estimates lose time — per layer") lists nine ResNet50 4x4 layers with their COMP busy time and span,
dense and 50 % 8x8 sparse, and the whole network's busy time per instruction type. This compiles
ResNet50 (224x224) on 4x4, dense and 50 % 8x8 block-sparse, under ``--rules paper`` (the compiler
searches its schedules under the paper's rules, the time model times them under them), and reports
per listed layer our span and COMP beside the paper's, the ratio, and what in our program decides the
layer's time: its partition (channel groups, spatial splits, tile shape, steps), how far its COMP is
from the peak, and the engine that bounds it.

    python benchmarks/paper_timelines.py [--rules paper] [--array 4x4] [--input 224]

Writes benchmarks/results/paper_timelines.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
MODES = (("dense", 0.0), ("sparse", 0.5))  # 50 % of the 8x8 blocks of every conv but the first
ADD = "residual add"  # a key ending in this names the residual add of the block before it


@dataclass(frozen=True)
class PaperLayer:
    """One row of the paper's per-layer table (wbs-paper.md): µs, (dense, sparse)."""

    key: str  # the paper's layer name (torchvision module path), or "<block> residual add"
    label: str
    comp_us: tuple[float, float]
    span_us: tuple[float, float]


PAPER_LAYERS = (
    PaperLayer("conv1", "conv1 7×7, 3→64 (not sparsified)", (376.7, 376.7), (405.6, 405.6)),
    PaperLayer("layer1.0.conv3", "layer1.0.conv3 1×1, 64→256", (12.5, 6.3), (55.6, 54.6)),
    PaperLayer("layer1.1.conv1", "layer1.1.conv1 1×1, 256→64", (200.7, 100.4), (202.8, 101.5)),
    PaperLayer("layer1.0.conv2", "layer1.0.conv2 3×3, 64→64", (184.3, 92.2), (195.4, 101.1)),
    PaperLayer("layer2.0.conv2", "layer2.0.conv2 3×3, 128→128, stride 2", (604.8, 302.4), (618.6, 311.9)),
    PaperLayer("layer3.1.conv2", "layer3.1.conv2 3×3, 256→256", (193.5, 193.5), (236.1, 218.9)),
    PaperLayer("layer4.0.conv2", "layer4.0.conv2 3×3, 512→512, stride 2", (483.8, 241.9), (634.2, 317.4)),
    PaperLayer("maxpool", "maxpool after conv1", (1.0, 1.0), (151.6, 151.6)),
    PaperLayer(f"layer1.0 {ADD}", "layer1.0 residual add", (0.8, 0.8), (93.5, 93.5)),
)
# the whole network's busy time per instruction type and its span (ms), dense and sparse
PAPER_BUSY_MS = {
    "dense": {"COMP": 8.01, "LOADFM": 1.82, "LOADW": 1.40, "WRITEFM": 1.29, "LOADWM": 0.11, "LOAD": 0.07,
              "WRITE": 0.05},
    "sparse": {"COMP": 4.90, "LOADFM": 1.77, "LOADW": 0.72, "WRITEFM": 1.26, "LOADWM": 0.10, "LOAD": 0.07,
               "WRITE": 0.05},
}
PAPER_TOTAL_MS = {"dense": 10.77, "sparse": 7.06}


def norm(name: str) -> str:
    """A layer name in one spelling: lower case, every run of non-alphanumerics one ``_``
    (torchvision's ``layer1.0.conv3``, the IR's ``layer1_0_conv3``, ONNX's ``/layer1/layer1.0/conv3``
    all become ``layer1_0_conv3``).

    >>> norm("layer1.0.conv3"), norm("/layer1/0/Conv3/")
    ('layer1_0_conv3', 'layer1_0_conv3')
    """
    return re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")


def _producers(program: Any, li: int) -> list[str]:
    """The names of what layer ``li`` adds: a fused add's operands (its attrs), or, for an add of
    its own, the layers that last wrote each buffer it reads before it."""
    rec = program.layers[li]
    if rec.fused_add:  # the add node's operands, one of them the conv itself
        return [str(n) for n in rec.attrs.get("add", {}).get("inputs", [])]
    names: list[str] = []
    for t in rec.inputs:
        names += [r.name for r in program.layers[:li] if r.output.buffer == t.buffer][-1:]
    return names


def find_layer(program: Any, key: str) -> int:
    """Index into ``program.layers`` of the paper's layer ``key``: a module path matched by its
    normalised name, or by its end after an importer's prefix (``model_layer1_0_conv3``); or
    ``"<block> residual add"``: the add whose operands come from that block — a layer of its own
    (kind ``add``) or fused into the conv that produces one of them (``fused_add``). ``KeyError``
    naming the key and the names it was matched against."""
    names = [norm(r.name) for r in program.layers]
    if key.endswith(ADD):
        block = norm(key[: -len(ADD)]) + "_"  # a producer named <prefix_>block_...
        hits = [i for i, r in enumerate(program.layers) if (r.kind == "add" or r.fused_add)
                and any(("_" + norm(p)).find("_" + block) >= 0 for p in _producers(program, i))]
    else:
        want = norm(key)
        hits = [i for i, n in enumerate(names) if n == want] or [
            i for i, n in enumerate(names) if n.endswith("_" + want)]
    if len(hits) != 1:
        what = "no layer" if not hits else f"{len(hits)} layers ({', '.join(names[i] for i in hits)})"
        raise KeyError(f"paper layer {key!r}: {what} of program {program.graph!r} match; its layers: "
                       f"{', '.join(names[:12])}{' ...' if len(names) > 12 else ''}")
    return hits[0]


@dataclass(frozen=True)
class LayerRow:
    """One paper layer beside ours (seconds); ``why``: what our program says about the layer."""

    mode: str
    key: str
    label: str
    ours: str  # our layer's name (a fused add: the conv holding it)
    fused_in: str  # the paper's add runs inside our conv ``ours`` ("" otherwise)
    span_s: float
    comp_s: float
    peak_s: float  # kept MACs at the whole array's peak rate
    paper_span_s: float
    paper_comp_s: float
    paper_peak_s: float
    busy_s: dict[str, float]
    partition: str
    bound: str

    @property
    def span_ratio(self) -> float:
        return self.span_s / self.paper_span_s

    @property
    def comp_ratio(self) -> float:
        return self.comp_s / self.paper_comp_s


def _partition(rec: Any, n_cores: int) -> str:
    """The layer's partition in words, from its record."""
    g, s, lp = rec.grid, rec.sub, rec.loops
    steps = lp.n_s * lp.n_k * lp.n_q
    used = sum(not c.empty for c in rec.cores)
    cols = {"oc": "output channels", "w": "columns", "h": "rows", "hw": "row bands x columns"}[g.col_axis] \
        if g.col_axis in ("oc", "w", "h", "hw") else g.col_axis
    return (f"{g.oc_groups} channel group(s) x {g.sp_groups} spatial slice(s) over the rows, columns split "
            f"{cols}; {used}/{n_cores} cores busy; tile {s.h}x{s.w} px x {s.oc} oc x {s.ci} ci; "
            f"{steps} step(s) = {lp.n_s} spatial x {lp.n_k} out-chunk x {lp.n_q} in-chunk, "
            f"{lp.tiles_per_group} tile(s) each")


def _bound(span_s: float, busy: dict[str, float]) -> str:
    """Which engine bounds the layer, every engine's busy time, and how much they overlap (the busy
    sum over the span: 1 when one engine runs at a time)."""
    if not busy or span_s <= 0:
        return "no instructions"
    order = sorted(busy.items(), key=lambda kv: -kv[1])
    op, b = order[0]
    each = ", ".join(f"{k} {v * 1e6:.1f}" for k, v in order)
    return (f"{op} busiest ({b / span_s:.0%} of the span); busy µs: {each}; busy sum "
            f"{sum(busy.values()) / span_s:.2f}x the span")


def layer_rows(program: Any, times: Any, mode: str) -> list[LayerRow]:
    """Every ``PAPER_LAYERS`` row beside our layer in ``program`` timed ``times`` (the time
    model's ``ProgramTime``), density ``mode`` ("dense" / "sparse")."""
    m = 0 if mode == "dense" else 1
    hw = program.hw
    busy_by_layer: dict[int, dict[str, float]] = {}
    for it in times.instrs:
        ins = program.instrs[it.index]
        d = busy_by_layer.setdefault(ins.layer, {})
        d[ins.op] = d.get(ins.op, 0.0) + it.busy_s
    rows = []
    for pl in PAPER_LAYERS:
        li = find_layer(program, pl.key)
        rec, (_, _, span) = program.layers[li], times.layers[li]
        busy = busy_by_layer.get(li, {})
        fused = rec.name if pl.key.endswith(ADD) and rec.fused_add else ""
        # COMP at the peak rate, for the convs the paper lists it for (0: none, a pool or an add); the
        # paper's from its layer's MACs, halved when sparse (every conv but conv1 at 50 %)
        conv = rec.kind == "conv" and not pl.key.endswith(ADD)
        paper_macs = rec.macs * (0.5 if mode == "sparse" and pl.key != "conv1" else 1.0) if conv else 0
        rows.append(LayerRow(
            mode, pl.key, pl.label, rec.name, fused, span, busy.get("COMP", 0.0),
            rec.kept_macs / hw.peak_macs_per_s if conv else 0.0, pl.span_us[m] * 1e-6, pl.comp_us[m] * 1e-6,
            paper_macs / hw.peak_macs_per_s, busy, _partition(rec, hw.n_cores), _bound(span, busy)))
    return rows


def busy_rows(program: Any, times: Any, mode: str) -> list[tuple[str, float, float]]:
    """(instruction type, our busy seconds, the paper's) for the whole network."""
    ours = times.busy_by_op(program)
    return [(op, ours.get(op, 0.0), ms * 1e-3) for op, ms in PAPER_BUSY_MS[mode].items()]


def explain(r: LayerRow) -> str:
    """Why our layer differs from the paper's: the span difference split into COMP and the rest,
    each side's COMP against the peak, and what bounds our layer (all from the row)."""
    parts = []
    if r.fused_in:
        parts.append(f"our add has no layer of its own: it runs in {r.fused_in}'s COMP (the span is that "
                     "conv's, the conv included)")
    d_comp, d_rest = r.paper_comp_s - r.comp_s, (r.paper_span_s - r.paper_comp_s) - (r.span_s - r.comp_s)
    parts.append(f"of the paper's {(r.paper_span_s - r.span_s) * 1e6:+.1f} µs more, COMP {d_comp * 1e6:+.1f} µs and "
                 f"the rest {d_rest * 1e6:+.1f} µs (outside COMP: ours {(r.span_s - r.comp_s) * 1e6:.1f}, the "
                 f"paper's {(r.paper_span_s - r.paper_comp_s) * 1e6:.1f})")
    if r.peak_s > 0 and r.paper_peak_s > 0:
        parts.append(f"COMP {r.comp_s / r.peak_s:.2f}x its peak ({r.peak_s * 1e6:.1f} µs), the paper's "
                     f"{r.paper_comp_s / r.paper_peak_s:.1f}x")
    parts.append(r.bound)
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def _us(s: float) -> str:
    return f"{s * 1e6:.1f}"


def markdown(runs: list[dict[str, Any]], cmd: str, wall_s: float) -> str:
    """The report: per mode the layer table, the busy totals and the generated explanations."""
    out = ["# ResNet50 on 4x4 under the paper's rules, beside the paper's own timelines", "",
           f"Command: `{cmd}` ({wall_s:.0f} s, compiles included)  ",
           "Paper figures: wbs-paper.md, \"Where the paper's estimates lose time — per layer\" (the paper's "
           "published timeline files). Ours: the time model's per-layer span and per-instruction busy time "
           "(the clocked replay's total is beside it on each Total line; docs/replay.md).", ""]
    rows_all: list[LayerRow] = []
    for run in runs:
        rows: list[LayerRow] = run["rows"]
        rows_all += rows
        out += [f"## {run['mode']} ({run['array']}, `{run['rules']}` rules)", "",
                f"Total: ours {run['total_s'] * 1e3:.3f} ms (replay {run['replay_total_s'] * 1e3:.3f} ms), the "
                f"paper's {PAPER_TOTAL_MS[run['mode']]:.2f} ms "
                f"(ratio {run['total_s'] * 1e3 / PAPER_TOTAL_MS[run['mode']]:.2f}).", "",
                "| paper layer | our layer | span µs ours / paper | ratio | COMP µs ours / paper | ratio "
                "| COMP at peak µs: our kept MACs / the paper's |",
                "|---|---|---|---|---|---|---|"]
        for r in rows:
            ours = f"{r.ours} (add fused)" if r.fused_in else r.ours
            out.append(f"| {r.label} | {ours} | {_us(r.span_s)} / {_us(r.paper_span_s)} | {r.span_ratio:.2f} | "
                       f"{_us(r.comp_s)} / {_us(r.paper_comp_s)} | {r.comp_ratio:.2f} | "
                       + (f"{_us(r.peak_s)} / {_us(r.paper_peak_s)} |" if r.peak_s > 0 else "— |"))
        out += ["", "Busy time per instruction type, whole network (ms):", "",
                "| instruction | ours | paper | ratio |", "|---|---|---|---|"]
        for op, ours_s, paper_s in run["busy"]:
            out.append(f"| {op} | {ours_s * 1e3:.3f} | {paper_s * 1e3:.2f} | {ours_s / paper_s:.2f} |")
        out.append("")
    out += ["## The largest differences, from our programs", "",
            "Ranked by how far our span is from the paper's (|log ratio|); the partition and the bound "
            "are read from our compiled program and its time model.", ""]
    for r in sorted(rows_all, key=lambda r: -abs(math.log(r.span_ratio)))[:10]:
        out.append(f"* **{r.label}, {r.mode}**: span {_us(r.span_s)} µs against {_us(r.paper_span_s)} µs "
                   f"({r.span_ratio:.2f}x). Partition: {r.partition}. {explain(r)}")
    out += ["", "## Reading", "", READING]
    return "\n".join(out) + "\n"


READING = """\
Where the time goes apart is COMP. Every listed conv's COMP but conv1's is 1.02–1.4x its peak in our
programs (the time model never charges less than the peak, and the compiler picks per layer the split
whose COMP rounds least: whole 4x8x8 matmul shapes, few kernel calls per core); conv1's is 2.7x, as
its 3 input channels fill 3 of the 8 rows of the matmul's K at every tap (docs/time-model.md, "conv1
padding"). The paper's is 1.0–21x. On the listed convs the paper's extra COMP accounts for nearly all
of the difference in span, so the gap on these layers is the paper's partition, not its rules:
layer2.0.conv2 (21x its peak), layer4.0.conv2 (17x), layer1.1.conv1 (16x), conv1 (13x) and
layer3.1.conv2 (6.9x dense, 13.7x sparse: the paper gains nothing from sparsity there). The one conv
the paper runs at its peak, layer1.0.conv3, is the one where the two spans agree (0.95): both are
bound by data movement, ours by WRITEFM (its 256-channel output, 802,816 B over four column channels
at 4 GB/s, 50 µs).

Outside COMP ours is often the slower. layer1.1.conv1 streams its 256-channel input through LOADFM
(50 µs) where the paper's 200 µs COMP hides it. layer4.0.conv2 loads 2.36 MB of weights, LOADW then
LOADWM over the four row / column channels, in sequence under the paper's rules. That is the
network-wide finding of the busy totals: our LOADWM is 1.63 ms dense where the paper's timelines show
0.11 ms, while LOADW (1.62 against 1.40 ms) and LOADFM (2.03 against 1.82 ms) are within 16 %.
0.11 ms cannot carry ResNet50's ~24 MB of weights from the memory tiles into the cores at 4 GB/s per
channel even over all 16 cores' channels (0.37 ms), so the paper's timelines do not charge LOADWM as
a transfer at that rate; we keep ours (docs/time-model.md, rule 1: a row's cores receive their weights
on that row's channel). Under the paper's rules adds are layers of their own, as in the paper: the
layer1.0 residual add reads two 802,816-byte inputs and writes one, 100.5 µs against the paper's
93.5 µs; our maxpool runs on 4 of the 16 cores and is bound by LOADFM (conv1's 802,816-byte output,
51 µs), where the paper's spends 151.6 µs on data movement for 1 µs of COMP.
"""


def run_mode(mode: str, array: str, rules: str, px: int) -> dict[str, Any]:
    """Compile ResNet50 at ``px`` on ``array`` under ``rules`` and build its rows."""
    from tilesparse.build import build_graph_from
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.estimate.timemodel import estimate_program
    from tilesparse.hw import load_array
    from tilesparse.sim.replay import replay

    g = build_graph_from("resnet50", sparsity=dict(MODES)[mode], block=(8, 8), input_shape=(1, 3, px, px),
                         quantized=False, seed=0).graph
    prog = compile_graph(g, load_array(array).model_copy(update={"rules": rules}))
    times = estimate_program(prog)
    return {"mode": mode, "array": array, "rules": prog.hw.rules, "total_s": times.total_s,
            "replay_total_s": replay(prog).total_s, "rows": layer_rows(prog, times, mode),
            "busy": busy_rows(prog, times, mode)}


def _profile_name(text: str) -> str:
    from tilesparse.hw import get_profile

    try:
        return get_profile(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=_profile_name, default="paper",
                    help="rule profile to compile and time under (default: paper)")
    ap.add_argument("--array", default="4x4")
    ap.add_argument("--input", type=int, default=224, help="input resolution (px)")
    ap.add_argument("--out", default=str(RESULTS / "paper_timelines.md"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    t = time.perf_counter()
    runs = [run_mode(m, a.array, a.rules, a.input) for m, _ in MODES]
    wall = time.perf_counter() - t
    cmd = "python benchmarks/paper_timelines.py" + "".join(
        f" --{k} {v}" for k, v, d in (("rules", a.rules, "paper"), ("array", a.array, "4x4"),
                                      ("input", a.input, 224)) if v != d)
    from tilesparse.utils.atomic import atomic_write_text

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, markdown(runs, cmd, wall))
    js = [{**r, "rows": [asdict(x) for x in r["rows"]]} for r in runs]
    atomic_write_text(out.with_suffix(".json"), json.dumps(js, indent=1))
    print(f"wrote {out} in {wall:.0f} s")


if __name__ == "__main__":
    main()
