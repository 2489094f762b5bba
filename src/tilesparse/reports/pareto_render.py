"""CSV, Markdown and plot of a pattern sweep (``reports.pareto``), each written atomically."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from tilesparse.reports.pareto import ParetoRow, front_axes
from tilesparse.utils.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["COLUMNS", "markdown", "to_csv", "write_csv", "write_markdown", "write_plot"]

COLUMNS = ("network", "array", "pattern", "spec", "sparsity", "status", "latency_ms", "bound_ms",
           "packed_weight_bytes", "dense_weight_bytes", "ddr_bytes", "memtile_core_bytes", "core_macs", "energy_uj",
           "accuracy", "on_front", "compute_bound_ms", "ddr_bound_ms", "memtile_bound_ms")


def _cells(r: ParetoRow) -> dict[str, object]:
    d: dict[str, object] = {c: getattr(r, c) for c in COLUMNS if hasattr(r, c)}
    for lim in ("compute", "ddr", "memtile"):
        d[f"{lim}_bound_ms"] = r.limiter_ms.get(lim, 0.0) if r.compiled else None
    return d


def to_csv(rows: Sequence[ParetoRow]) -> str:
    """One line per point, ``COLUMNS`` in order; empty cells where a point was not compiled."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None else v for k, v in _cells(r).items()})
    return buf.getvalue()


def _num(v: float | int | None, fmt: str) -> str:
    return "" if v is None else format(v, fmt)


def markdown(rows: Sequence[ParetoRow]) -> str:
    """A table per (network, array); front points marked with a star. Columns: latency (ms),
    packed weights (MB), DDR and MemTile<->core traffic (MB), energy (uJ), accuracy (%), and the
    share of the latency spent in compute-, DDR- and MemTile-bound layers."""
    out: list[str] = []
    groups: dict[tuple[str, str], list[ParetoRow]] = {}
    for r in rows:
        groups.setdefault((r.network, r.array), []).append(r)
    for (net, array), group in groups.items():
        axis = front_axes(group)
        out += [f"### {net} on {array}", "",
                f"Front: latency against {axis} (* = no other point at least as good in both, better in one).", "",
                "| pattern | spec | sparsity | latency ms | bound ms | weights MB | DDR MB | MemTile-core MB | "
                "energy uJ | accuracy % | time in compute / DDR / MemTile-bound layers | front |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in group:
            if not r.compiled:
                status = r.status.replace("|", "\\|")
                out.append(f"| {r.pattern} | {r.spec} | {r.sparsity:g} | {status} |  |  |  |  |  |  |  |  |")
                continue
            lat = r.latency_ms or 0.0
            share = " / ".join(f"{100 * r.limiter_ms.get(k, 0.0) / lat:.0f} %" if lat else "-"
                               for k in ("compute", "ddr", "memtile"))
            out.append(f"| {r.pattern} | {r.spec} | {r.sparsity:g} | {_num(r.latency_ms, '.4f')} | "
                       f"{_num(r.bound_ms, '.4f')} | {_num((r.packed_weight_bytes or 0) / 1e6, '.3f')} | "
                       f"{_num((r.ddr_bytes or 0) / 1e6, '.3f')} | {_num((r.memtile_core_bytes or 0) / 1e6, '.3f')} | "
                       f"{_num(r.energy_uj, '.1f')} | {_num(r.accuracy, '.2f')} | {share} | "
                       f"{'*' if r.on_front else ''} |")
        out.append("")
    return "\n".join(out)


def write_csv(rows: Sequence[ParetoRow], path: str | Path) -> Path:
    return atomic_write_text(path, to_csv(rows))


def write_markdown(rows: Sequence[ParetoRow], path: str | Path, preamble: str = "") -> Path:
    return atomic_write_text(path, preamble + markdown(rows))


def write_plot(rows: Sequence[ParetoRow], path: str | Path) -> Path:
    """One panel per (network, array): latency (log) against accuracy, or against density (1 -
    sparsity) when the group has no accuracy; a marker per pattern, the front joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    groups: dict[tuple[str, str], list[ParetoRow]] = {}
    for r in rows:
        if r.compiled:
            groups.setdefault((r.network, r.array), []).append(r)
    n = max(1, len(groups))
    cols = min(n, 3)
    nrows = -(-n // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    patterns = sorted({r.pattern for r in rows}, key=[r.pattern for r in rows].index)
    markers = dict(zip(patterns, "osD^v<>pP*hX", strict=False))
    for ax, ((net, array), group) in zip(axes.ravel(), groups.items(), strict=False):
        axis = front_axes(group)

        def y(r: ParetoRow, axis: str = axis) -> float | None:
            return r.accuracy if axis == "accuracy" else 1.0 - r.sparsity

        for p in patterns:
            pts = [(r.latency_ms, y(r)) for r in group if r.pattern == p and y(r) is not None]
            if pts:
                ax.scatter([a for a, _ in pts], [b for _, b in pts], marker=markers.get(p, "o"), label=p, s=36)
        front = sorted((r.latency_ms, y(r)) for r in group if r.on_front)
        if front:
            ax.plot([a for a, _ in front], [b for _, b in front], "k--", lw=1, alpha=0.6, label="front")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels of a narrow log range overlap
        ax.set_title(f"{net} {array}", fontsize=9)
        ax.set_xlabel("latency ms (estimate)")
        ax.set_ylabel("accuracy %" if axis == "accuracy" else "density (kept weights)")
        ax.legend(fontsize=6)
    for ax in axes.ravel()[len(groups):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
