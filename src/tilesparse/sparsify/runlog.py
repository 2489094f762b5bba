"""Per-epoch records of a training run beside its checkpoints: ``metrics.csv`` and ``metrics.jsonl``.

Both files are rewritten whole (atomically) from the run's history after every epoch's checkpoint,
so they always hold exactly the epochs ``last.pt`` holds: a run killed between the two writes lags
one epoch until the next, and a resumed run (whose history comes from ``last.pt``) never repeats an
epoch. Columns (``COLUMNS``): epoch (from 1, as the progress bar counts), training loss, top-1 and
top-5 test accuracy in percent (empty without test data), mean sparsity of the sparsified layers,
learning rate, training images per second and the epoch's wall time in seconds (training and
evaluation). ``tilesparse report RUN_DIR`` prints them and plots them.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tilesparse.errors import ConfigError
from tilesparse.utils.atomic import atomic_write_bytes, atomic_write_text

__all__ = ["COLUMNS", "METRICS_CSV", "METRICS_JSONL", "metric_rows", "write_metrics", "read_metrics",
           "metrics_table", "plot_metrics"]

METRICS_CSV = "metrics.csv"
METRICS_JSONL = "metrics.jsonl"
COLUMNS = ("epoch", "loss", "top1", "top5", "sparsity", "lr", "images_per_s", "epoch_seconds")
_FROM_RECORD = {"loss": "train_loss", "top1": "test_accuracy", "top5": "test_top5"}  # column -> EpochRecord field


def metric_rows(history: Iterable[Any]) -> list[dict[str, Any]]:
    """One row per ``EpochRecord`` (fields a record lacks, from runs before they existed, are None)."""
    return [{c: (r.epoch + 1 if c == "epoch" else getattr(r, _FROM_RECORD.get(c, c), None)) for c in COLUMNS}
            for r in history]


def write_metrics(folder: str | Path, history: Iterable[Any]) -> None:
    """Rewrite ``folder``/metrics.csv and metrics.jsonl from the run's history."""
    rows = metric_rows(history)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    atomic_write_text(Path(folder) / METRICS_CSV, buf.getvalue())
    atomic_write_text(Path(folder) / METRICS_JSONL, "".join(json.dumps(row) + "\n" for row in rows))


def read_metrics(folder: str | Path) -> list[dict[str, Any]]:
    """The rows of ``folder``/metrics.jsonl; ConfigError naming the file if it is missing or damaged."""
    path = Path(folder) / METRICS_JSONL
    if not Path(folder).is_dir():
        raise ConfigError("RUN_DIR", [f"{folder}: not a folder; expected a run folder (sparsify --out)"])
    if not path.is_file():
        raise ConfigError("RUN_DIR", [f"{path}: not found; a run writes it after its first epoch of training "
                                      "(sparsify with data and --epochs >= 1)"])
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ConfigError(str(path), [f"line {n}: not JSON ({e.msg})"]) from None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise ConfigError(str(path), [f"line {n}: expected an object with an integer 'epoch'"])
        rows.append({c: row.get(c) for c in COLUMNS})
    return rows


def _cell(column: str, value: Any) -> str:
    if value is None:
        return "-"
    if column == "epoch":
        return str(value)
    if column == "sparsity":
        return f"{100 * value:.1f} %"
    if column == "lr":
        return f"{value:.3g}"
    return f"{value:.1f}" if column in ("images_per_s", "epoch_seconds") else f"{value:.4g}"


_HEADINGS = {"epoch": "epoch", "loss": "loss", "top1": "top-1 %", "top5": "top-5 %", "sparsity": "sparsity",
             "lr": "lr", "images_per_s": "images/s", "epoch_seconds": "time s"}


def metrics_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A plain-text table of the rows, right-aligned, one epoch a line."""
    cells = [[_HEADINGS[c] for c in COLUMNS]] + [[_cell(c, row.get(c)) for c in COLUMNS] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells)


def _series(rows: Sequence[Mapping[str, Any]], column: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """(epochs, values) of the rows where ``column`` has a finite value."""
    pts = [(int(r["epoch"]), float(r[column]) * scale) for r in rows
           if isinstance(r.get(column), (int, float)) and math.isfinite(r[column])]
    return [e for e, _ in pts], [v for _, v in pts]


def plot_metrics(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Loss, accuracy (top-1, top-5) and sparsity against the epoch, as a PNG (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("training loss", [("loss", "loss", 1.0)]),
              ("test accuracy (%)", [("top1", "top-1", 1.0), ("top5", "top-5", 1.0)]),
              ("sparsity (%)", [("sparsity", "mean layer sparsity", 100.0)]))
    for ax, (label, lines) in zip(axes, panels, strict=True):
        for column, name, scale in lines:
            xs, ys = _series(rows, column, scale)
            if xs:
                ax.plot(xs, ys, marker="o", ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if len(lines) > 1 and ax.lines:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
