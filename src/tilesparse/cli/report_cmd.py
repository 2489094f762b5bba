"""``tilesparse report``: a training run's per-epoch records, as a table and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tilesparse.cli.common import JSON_HELP, check_outputs, console, write_json

__all__ = ["register"]

DEFAULT_PLOT = "metrics.png"  # in RUN_DIR
RUN_DIR_HELP = "A sparsify output folder (--out) holding metrics.jsonl, written after every epoch of training."
PLOT_HELP = f"Write the plot (loss, top-1/top-5 accuracy, sparsity vs epoch) here (default RUN_DIR/{DEFAULT_PLOT})."


def report(
    run_dir: Annotated[Path, typer.Argument(help=RUN_DIR_HELP, metavar="RUN_DIR")],
    plot: Annotated[Optional[Path], typer.Option(help=PLOT_HELP)] = None,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="Print the table only.")] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help=JSON_HELP + " The rows.")] = None,
) -> None:
    """Print a training run's per-epoch loss, top-1 / top-5 accuracy, sparsity, learning rate,
    images/s and epoch time (from RUN_DIR/metrics.jsonl), and plot them to a PNG.

    Examples:

    * `tilesparse report runs/d` (table, and runs/d/metrics.png)
    * `tilesparse report runs/r50 --plot r50.png --json -`
    """
    from tilesparse.sparsify.runlog import metrics_table, plot_metrics, read_metrics

    rows = read_metrics(run_dir)  # refused before anything is written
    target = None if no_plot else plot if plot is not None else run_dir / DEFAULT_PLOT
    check_outputs({"--plot": target, "--json": json_out})
    con = console(json_out)
    con.print(metrics_table(rows), highlight=False, soft_wrap=True)
    if target is not None:
        plot_metrics(rows, target, title=str(run_dir))
        con.print(f"wrote {target}", soft_wrap=True, highlight=False)
    write_json(json_out, rows)


def register(app: typer.Typer) -> None:
    app.command("report")(report)
