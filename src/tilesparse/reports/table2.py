"""Networks × arrays × dense/sparse → the Table II analog, with the paper's numbers beside ours.

Each (network, dense|sparse) graph is built once through the front door (``tilesparse.build``:
random weights, seed 0; sparse = the lowest-L2 blocks zeroed, ``patterns.prune_oneshot``), then
compiled for every array. Latency depends on shapes and
masks only, so the front end runs without quantization (timing-only programs). Work is spread
over ``jobs`` processes, one (network, mode) per task.
"""

from __future__ import annotations

import csv
import io
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

from tilesparse.reports.paper import paper_ms
from tilesparse.utils.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["SEED", "Cell", "run_table", "write_table"]

SEED = 0  # random weights and masks
CONV_ONLY = ("vgg16",)  # networks whose paper numbers cover the convolutional part only


@dataclass
class Cell:
    network: str
    array: str
    mode: str  # dense | sparse
    estimate_ms: float | None = None
    bound_ms: float | None = None
    compute_ms: float | None = None
    floor_ms: float | None = None  # halting floor (estimate/bounds.py): what time-model rule 5 forces
    paper_ms: float | None = None
    weight_pct: float | None = None  # packed (bitmap + kept blocks) / dense weight bytes
    compile_s: float | None = None  # wall clock
    compile_cpu_s: float | None = None  # CPU time of the compiling process
    conv_ms: float | None = None  # the convolutional part only (no classifier, no flatten)
    conv_bound_ms: float | None = None
    net_bound_ms: float | None = None  # network bound (estimate/bounds.py): largest per-resource sum
    # the same program timed under the paper's rules (tilesparse.hw.profiles.PAPER; the schedule
    # searched under tilesparse's rules, not re-optimised, its adds fused): whole network and conv part
    paper_rules_ms: float | None = None
    paper_rules_conv_ms: float | None = None
    # the network compiled under the paper's rules (the search times its candidates with them; adds
    # and pools are layers of their own, core.res no buffer) and timed under them
    paper_opt_ms: float | None = None
    paper_opt_conv_ms: float | None = None
    error: str = ""

    @property
    def compare_ms(self) -> float | None:
        """What to hold against the paper: VGG16's conv part (the paper's VGG16 numbers appear to
        cover the convolutions only), the whole network otherwise."""
        return self.conv_ms if self.network in CONV_ONLY else self.estimate_ms

    @property
    def compare_paper_rules_ms(self) -> float | None:
        """``compare_ms`` of the same program under the paper's rules."""
        return self.paper_rules_conv_ms if self.network in CONV_ONLY else self.paper_rules_ms

    @property
    def compare_paper_opt_ms(self) -> float | None:
        """``compare_ms`` of the program compiled and timed under the paper's rules."""
        return self.paper_opt_conv_ms if self.network in CONV_ONLY else self.paper_opt_ms

    @property
    def ratio(self) -> float | None:
        return None if self.estimate_ms is None or not self.bound_ms else self.estimate_ms / self.bound_ms

    @property
    def net_ratio(self) -> float | None:
        """The estimate over the network bound."""
        return None if self.estimate_ms is None or not self.net_bound_ms else self.estimate_ms / self.net_bound_ms


def _graph(network: str, sparsity: float):
    from tilesparse.build import build_graph_from

    return build_graph_from(network, sparsity=sparsity, block=(8, 8), quantized=False, seed=SEED).graph


def _conv_ms(prog, layer_s) -> float:
    """Milliseconds of a program's convolutional part (no classifier, no flatten) from its
    per-layer seconds."""
    return sum(sec for sec, rec in zip(layer_s, prog.layers, strict=True)
               if not rec.attrs.get("from_linear") and rec.kind != "flatten") * 1e3


def _task(network: str, mode: str, arrays: list[str], sparsity: float, repeats: int = 1,
          paper_opt: bool = True) -> list[Cell]:
    import torch

    torch.set_num_threads(1)
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.compiler.planning import clear_caches
    from tilesparse.errors import TilesparseError
    from tilesparse.estimate.report import layer_rows, summarize
    from tilesparse.estimate.timemodel import estimate_program
    from tilesparse.hw import load_array

    g = _graph(network, sparsity if mode == "sparse" else 0.0)
    cells = []
    for arr in arrays:
        c = Cell(network, arr, mode, paper_ms=paper_ms(network, arr, mode == "sparse"))
        try:
            for _ in range(max(1, repeats)):  # cold compiles; the fastest is the least disturbed
                clear_caches()
                t, cpu = time.perf_counter(), time.process_time()
                prog = compile_graph(g, arr)
                wall, cpu = time.perf_counter() - t, time.process_time() - cpu
                c.compile_s = min(wall, c.compile_s or wall)
                c.compile_cpu_s = min(cpu, c.compile_cpu_s or cpu)
            est = estimate_program(prog)  # once for the rows and the summary
            rows = layer_rows(prog, est)
            s = summarize(prog, est)
            c.estimate_ms, c.bound_ms, c.compute_ms = s.estimate_ms, s.bound_ms, s.compute_ms
            c.floor_ms, c.net_bound_ms = s.floor_ms, s.net_bound_ms
            c.weight_pct = 100 * s.weight_fraction
            conv = [r for r, rec in zip(rows, prog.layers, strict=True)
                    if not rec.attrs.get("from_linear") and rec.kind != "flatten"]
            c.conv_ms = sum(r["time_us"] for r in conv) / 1e3
            c.conv_bound_ms = sum(r["bound_us"] for r in conv) / 1e3
            pt = estimate_program(prog, "paper")
            c.paper_rules_ms = pt.total_s * 1e3
            c.paper_rules_conv_ms = _conv_ms(prog, [sec for _, _, sec in pt.layers])
            if paper_opt:  # re-optimised: the search itself runs under the paper's rules
                pp = compile_graph(g, load_array(arr).model_copy(update={"rules": "paper"}))
                po = estimate_program(pp)  # the program's own rules: paper
                c.paper_opt_ms = po.total_s * 1e3
                c.paper_opt_conv_ms = _conv_ms(pp, [sec for _, _, sec in po.layers])
        except TilesparseError as e:  # a failed cell is reported, not fatal
            c.error = f"{type(e).__name__}: {e}"
        cells.append(c)
    return cells


def run_table(networks: list[str], arrays: list[str], rect: list[str], sparsity: float = 0.5,
              jobs: int = 2, progress: bool = False, repeats: dict[str, int] | None = None,
              paper_opt: bool = True) -> list[Cell]:
    """Compile every cell; ``rect`` arrays are added for the first network only. ``repeats``:
    how many cold compiles to time per cell of a network (the fastest is reported; default 1).
    ``paper_opt``: also compile every cell under the paper's rules (``Cell.paper_opt_ms``; about
    doubles the work)."""
    tasks, order = [], {}
    for i, net in enumerate(networks):
        arrs = arrays + (rect if i == 0 else [])
        order.update({(net, a): len(order) for a in arrs})
        # one task per (network, mode): the graph is built once; dense and sparse of a network
        # cost about the same, so with the slowest networks first two workers stay balanced
        tasks += [(net, mode, arrs, sparsity, (repeats or {}).get(net, 1), paper_opt) for mode in ("dense", "sparse")]
    tasks.sort(key=lambda t: {"vgg16": 0, "resnet50": 1}.get(t[0], 2))
    cells: list[Cell] = []
    bar = _bar(progress, len(tasks))
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as ex:
        futs = [ex.submit(_task, *t) for t in tasks]
        for f in as_completed(futs):
            cells += f.result()
            if bar:
                bar[0].update(bar[1], advance=1)
    if bar:
        bar[0].stop()
    return sorted(cells, key=lambda c: (order[(c.network, c.array)], c.mode))


def _bar(progress: bool, n: int):
    if not progress:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    p = Progress("explore", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    p.start()
    return p, p.add_task("cells", total=n)


def _pairs(cells: list[Cell]) -> list[tuple[Cell, Cell]]:
    d = {(c.network, c.array, c.mode): c for c in cells}
    return [(d[(c.network, c.array, "dense")], d[(c.network, c.array, "sparse")]) for c in cells
            if c.mode == "dense" and (c.network, c.array, "sparse") in d]


def _f(x: float | None, fmt: str = ".2f") -> str:
    return "—" if x is None else format(x, fmt)


def markdown(cells: list[Cell]) -> str:
    lines = [("| network | array | paper dense | dense ms, paper rules | dense ms, same program, paper rules "
              "| dense ms | dense bound | dense floor | paper sparse | sparse ms, paper rules "
              "| sparse ms, same program, paper rules | sparse ms | sparse bound | sparse floor | speedup "
              "| bound ratio | floor ratio | paper speedup | weights % | compile s (cpu) | dense / net bound "
              "| sparse / net bound |"),
             "|" + "---|" * 22]
    for d, s in _pairs(cells):
        sp = d.estimate_ms / s.estimate_ms if d.estimate_ms and s.estimate_ms else None
        br = d.bound_ms / s.bound_ms if d.bound_ms and s.bound_ms else None
        pp = d.paper_ms / s.paper_ms if d.paper_ms and s.paper_ms else None
        fr = d.floor_ms / s.floor_ms if d.floor_ms and s.floor_ms else None
        lines.append(
            f"| {d.network} | {d.array} | {_paper(d)} | {_ms(d, 'opt')} | {_ms(d, 'same')} | {_ms(d)} "
            f"| {_f(d.bound_ms)} | {_f(d.floor_ms)} | {_paper(s)} | {_ms(s, 'opt')} | {_ms(s, 'same')} | {_ms(s)} "
            f"| {_f(s.bound_ms)} | {_f(s.floor_ms)} "
            f"| {_f(sp)} | {_f(br)} | {_f(fr)} | {_f(pp)} | {_f(s.weight_pct, '.1f')} | "
            f"{_f(max(d.compile_cpu_s or 0, s.compile_cpu_s or 0), '.1f')} | {_f(d.net_ratio)} | {_f(s.net_ratio)} |")
    errs = [c for c in cells if c.error]
    if errs:
        lines += ["", "Failed cells:"] + [f"- {c.network} {c.array} {c.mode}: {c.error}" for c in errs]
    return "\n".join(lines) + "\n"


_SQ = {f"{r}x{r}" for r in range(2, 9)}


def _ms(c: Cell, rules: str = "tilesparse") -> str:
    """A cell's milliseconds (VGG16: and its conv part) under ``rules``: ``tilesparse``, ``opt``
    (compiled under the paper's) or ``same`` (the tilesparse program under the paper's)."""
    whole, conv = {"tilesparse": (c.estimate_ms, c.conv_ms), "opt": (c.paper_opt_ms, c.paper_opt_conv_ms),
                   "same": (c.paper_rules_ms, c.paper_rules_conv_ms)}[rules]
    if c.network in CONV_ONLY and conv is not None:
        return f"{_f(whole)} (conv {_f(conv)})"
    return _f(whole)


def _paper(c: Cell) -> str:
    return _f(c.paper_ms) if c.paper_ms else "failed" if c.array in _SQ else "—"


def write_table(cells: list[Cell], out_dir: str | Path, stem: str = "table2", preamble: str = "") -> list[Path]:
    out_dir = Path(out_dir)
    buf = io.StringIO()
    extra = ["ratio", "net_ratio", "compare_ms", "compare_paper_rules_ms", "compare_paper_opt_ms"]
    fields = list(asdict(cells[0]).keys()) + extra if cells else []
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for c in cells:
        w.writerow({**asdict(c), "ratio": c.ratio, "net_ratio": c.net_ratio, "compare_ms": c.compare_ms,
                    "compare_paper_rules_ms": c.compare_paper_rules_ms, "compare_paper_opt_ms": c.compare_paper_opt_ms})
    paths = [atomic_write_text(out_dir / f"{stem}.csv", buf.getvalue()),
             atomic_write_text(out_dir / f"{stem}.md", preamble + markdown(cells))]
    paths.append(_plot(cells, out_dir / f"{stem}.png"))
    return paths


def _plot(cells: list[Cell], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nets = sorted({c.network for c in cells}, key=[c.network for c in cells].index)
    fig, axes = plt.subplots(1, len(nets), figsize=(5 * len(nets), 4), squeeze=False)
    for ax, net in zip(axes[0], nets, strict=True):
        for mode, color in (("dense", "#4c72b0"), ("sparse", "#dd8452")):
            cs = [c for c in cells if c.network == net and c.mode == mode and c.array in _SQ]
            xs = [int(c.array.split("x")[0]) for c in cs]
            ax.plot(xs, [c.estimate_ms for c in cs], "o-", color=color, label=f"ours {mode}")
            ax.plot(xs, [c.bound_ms for c in cs], ":", color=color, label=f"bound {mode}")
            px = [(x, c.paper_ms) for x, c in zip(xs, cs, strict=True) if c.paper_ms]
            ax.plot([p[0] for p in px], [p[1] for p in px], "s--", color=color, alpha=0.5, label=f"paper {mode}")
        ax.set_yscale("log")
        ax.set_title(net)
        ax.set_xlabel("array r x r")
        ax.set_ylabel("ms")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
