"""``tilesparse demo``: the whole pipeline on a built-in default (see ``tilesparse.demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tilesparse.cli.common import (
    ARRAY_HELP,
    BLOCK_PATTERN_HELP,
    JSON_HELP,
    SEED_MAX,
    array_arg,
    block_arg,
    block_pattern_args,
    check_outputs,
    console,
    sparsity_arg,
    write_json,
)

OUT_FILES = ("sparse.pt", "report.txt", "report.json", "demo.json")  # what --out receives


def demo(
    seed: Annotated[int, typer.Option(help="Seed for the data split, initialisation and data order.",
                                                min=0, max=SEED_MAX)] = 0,
    sparsity: Annotated[Optional[float], typer.Option(help="Target block sparsity in [0, 1) (default 0.5).")
                        ] = None,
    block: Annotated[Optional[str], typer.Option(help="Block shape OUTxIN (default 8x8).")] = None,
    pattern: Annotated[Optional[str], typer.Option(help=BLOCK_PATTERN_HELP)] = None,
    array: Annotated[str, typer.Option("--array", "-a", help=ARRAY_HELP)] = "4x4",
    images: Annotated[int, typer.Option(min=1, help="Test images to simulate and verify.")] = 16,
    networks: Annotated[str, typer.Option(help="Comma-separated torchvision networks to compile dense "
                                          "and sparse for the latency comparison ('' to skip).")] = "resnet50",
    device: Annotated[str, typer.Option(help="torch device for training (cpu, cuda, ...).")] = "cpu",
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Write sparse.pt, report.txt/.json and "
                                                "demo.json here.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help=JSON_HELP + " The demo's summary.")] = None,
) -> None:
    """Run the whole pipeline once on built-in data: nothing is downloaded.

    1. Train a small CNN on scikit-learn's digits, prune it to 50 % 8x8 blocks (one-shot L2), fine-tune it.
    2. Quantize it to int8 and compile it for an AIE2 array.
    3. Simulate the program on test images; verify every layer bit for bit against the PyTorch integer reference.
    4. Compile ResNet50 dense and sparse for the same array; compare the latency estimates with their lower bounds.

    About a minute on two CPU cores. Example: `tilesparse demo -a 2x2 --networks '' -o runs/demo`
    """
    import json

    from rich.table import Table

    from tilesparse.demo import run_pipeline_demo
    from tilesparse.utils.atomic import atomic_write_text

    sparsity_arg(sparsity), block_arg(block)
    block, sparsity = block_pattern_args(pattern, block, sparsity)
    b = block_arg(block or "8x8")
    sparsity = 0.5 if sparsity is None else sparsity
    array_arg(array)
    check_outputs({"--json": json_out}, ("--out", out, OUT_FILES))
    con = console(json_out)
    nets = tuple(n.strip() for n in networks.split(",") if n.strip())
    r = run_pipeline_demo(seed=seed, sparsity=sparsity, block=b, array=array, device=device,
                          sim_images=images, networks=nets, log=lambda m: con.print(f"[bold cyan]{m}[/]"))
    t = r.training
    con.print(t.report.to_text(), highlight=False, soft_wrap=True)
    con.print(f"accuracy: dense {t.dense_accuracy:.2f} %, after pruning {t.pruned_accuracy:.2f} %, "
              f"after fine-tuning {t.sparse_accuracy:.2f} %")
    con.print(f"program: {r.n_instructions} instructions on {r.hw.label}; estimate {r.digits_estimate_us:.1f} µs "
              f"(lower bound {r.digits_bound_us:.1f} µs)")
    verdict = "[green]all bit-exact[/]" if r.ok else f"[red]MISMATCH[/] {r.first_mismatch}"
    con.print(f"simulated {r.images_verified} test images: {r.images_bit_exact} bit-exact ({verdict}); "
              f"correct: float model {r.float_correct}, int8 program {r.int8_correct}")
    if r.networks:
        con.print(_network_table(r, Table))
    if out is not None:
        from tilesparse.sparsify.checkpoint import save_checkpoint

        save_checkpoint(out / "sparse.pt", t.model, t.sparsifier, model_name="digits_cnn")
        atomic_write_text(out / "report.txt", t.report.to_text() + "\n")
        atomic_write_text(out / "report.json", t.report.to_json() + "\n")
        atomic_write_text(out / "demo.json", json.dumps(_summary(r), indent=2) + "\n")
        con.print(f"wrote {out}/sparse.pt, report.txt, report.json, demo.json")
    write_json(json_out, _summary(r))
    if not r.ok:
        raise typer.Exit(1)


def _summary(r) -> dict:
    return {"array": r.hw.label, "bit_exact": r.images_bit_exact, "images": r.images_verified,
            "networks": [vars(n) for n in r.networks], "provenance": r.provenance.to_dict()}


def _network_table(r, Table):
    table = Table(title=f"what sparsity buys on {r.hw.label} (random weights, lowest-L2 blocks zeroed; "
                  "weights = packed bytes vs dense int8)")
    for col in ("network", "sparsity", "est. ms", "bound ms", "est./bound", "weights"):
        table.add_column(col, justify="right")
    for n in r.networks:
        table.add_row(n.network, f"{n.sparsity:.0%}", f"{n.estimate_ms:.2f}", f"{n.bound_ms:.2f}",
                      f"{n.estimate_ms / n.bound_ms:.2f}x", f"{n.packed_weight_fraction:.1%}")
    dense = {n.network: n for n in r.networks if n.sparsity == 0}
    for n in r.networks:
        if n.sparsity > 0 and n.network in dense:
            table.caption = (table.caption or "") + (f"{n.network}: sparse/dense speedup "
                                                     f"{dense[n.network].estimate_ms / n.estimate_ms:.2f}x  ")
    return table


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
