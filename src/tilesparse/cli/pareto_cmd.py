"""``tilesparse pareto``: every pattern at every sparsity, compiled and measured, with the Pareto front."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tilesparse.cli.common import INPUT_SHAPE_HELP, JSON_HELP, array_arg, check_outputs, console, write_json
from tilesparse.errors import ConfigError

__all__ = ["register"]

PATTERNS_HELP = ("Comma-separated patterns: dense, block patterns (8x8: one point per --sparsity), N:M (2:4, 1:4: "
                 "their own sparsity), hierarchies (8x8/2:4 or hss: the free level set per --sparsity; "
                 "8x8@0.5/2:4), tasd (2:4+1:4) and sdq (int8-2:4+int4): rows 'not compiled: <reason>' while the "
                 "compiler refuses them.")


def _floats(text: str, flag: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(flag, [f"expected comma-separated numbers, got {text!r}"]) from None


def _names(text: str, flag: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if not items:
        raise ConfigError(flag, ["give at least one"])
    return items


def pareto_verb(
    networks: Annotated[str, typer.Option(help="Comma-separated model sources (zoo names, file.py:factory).")
                        ] = "resnet50",
    arrays: Annotated[str, typer.Option(help="Comma-separated arrays (RxC or hw YAML).")] = "4x4",
    patterns: Annotated[str, typer.Option(help=PATTERNS_HELP)] = "dense,8x8,2:4,1:4,hss,tasd,sdq",
    sparsities: Annotated[str, typer.Option("--sparsity", "--sparsities",
                                            help="Comma-separated target sparsities (fractions of zero weights) "
                                                 "for the patterns with a free level.")] = "0.5,0.75",
    input_shape: Annotated[str | None, typer.Option(help=INPUT_SHAPE_HELP)] = None,
    accuracy: Annotated[Path | None, typer.Option(help="Evaluation file to join: CSV / JSON with network, "
                                                       "pattern, density or sparsity, accuracy; or the accuracy "
                                                       "study's .jsonl. The front is then latency vs accuracy.")
                        ] = None,
    energy: Annotated[bool, typer.Option(help="Energy from the cost model (each layer mapped once per network "
                                              "and array); --no-energy skips it.")] = True,
    energy_budget: Annotated[int, typer.Option(help="Mapper evaluations per layer for the energy mapping.", min=10)
                             ] = 300,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="Write the points as CSV.")] = None,
    md_out: Annotated[Path | None, typer.Option("--md", help="Write the tables as Markdown.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write latency vs accuracy (or density) with the front, .png."
                                              )] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help=JSON_HELP + " One record per point.")] = None,
) -> None:
    """Compile each pattern at each sparsity for each network and array; report latency (the
    estimate), packed weight bytes, DDR and MemTile<->core traffic, energy (cost model; patterns
    enter it as per-layer densities) and accuracy when a table is given; mark the Pareto front.

    Examples:

    * `tilesparse pareto --networks resnet50 --arrays 4x4,8x8 --md pareto.md --plot pareto.png`
    * `tilesparse pareto --networks digits_cnn --arrays 2x2 --accuracy accuracy_study.jsonl --csv d.csv`
    * `tilesparse pareto --networks vgg16 --patterns dense,8x8,2:4 --sparsity 0.5,0.75,0.875 --no-energy`
    """
    from dataclasses import asdict

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tilesparse.reports.pareto import load_accuracy, plan_points, run_pareto
    from tilesparse.reports.pareto_render import markdown, write_csv, write_markdown, write_plot

    nets, arrs, pats = (_names(text, flag) for text, flag in ((networks, "--networks"), (arrays, "--arrays"),
                                                              (patterns, "--patterns")))
    for a in arrs:
        array_arg(a, "--arrays")
    sps = _floats(sparsities, "--sparsity")
    plan = plan_points(pats, sps)  # usage errors (a bad pattern or sparsity) before any work
    if plot is not None and plot.suffix != ".png":
        raise ConfigError(f"--plot {plot}", ["expected a .png file name"])
    check_outputs({"--csv": csv_out, "--md": md_out, "--plot": plot, "--json": json_out})
    table = load_accuracy(accuracy) if accuracy is not None else None
    total = len(nets) * len(arrs) * len(plan)
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  transient=True) as bar:
        task = bar.add_task("pareto", total=total)
        done = [0]

        def step(desc: str) -> None:
            if done[0]:
                bar.advance(task)
            done[0] += 1
            bar.update(task, description=desc)

        rows = run_pareto(nets, arrs, pats, sps, input_shape=input_shape, accuracy=table, energy=energy,
                          energy_budget=energy_budget, on_point=step)
        bar.advance(task)
    con = console(json_out)
    con.print(markdown(rows), soft_wrap=True, markup=False, highlight=False)
    written = []
    if csv_out is not None:
        written.append(write_csv(rows, csv_out))
    if md_out is not None:
        written.append(write_markdown(rows, md_out))
    if plot is not None:
        written.append(write_plot(rows, plot))
    if written:
        con.print("wrote " + ", ".join(str(p) for p in written), markup=False, highlight=False)
    write_json(json_out, [asdict(r) for r in rows])


def register(app: typer.Typer) -> None:
    app.command("pareto")(pareto_verb)
