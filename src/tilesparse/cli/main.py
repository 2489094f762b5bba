"""Entry point of the ``tilesparse`` command.

Each verb lives in its own module with a ``register(app)`` function; heavy imports (torch,
torchvision) happen inside the verbs so that ``tilesparse --help`` stays fast. Errors that
tilesparse raises on purpose (``TilesparseError``) are printed without a traceback, exit code 2.
"""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console
from rich.text import Text

from tilesparse.errors import TilesparseError

app = typer.Typer(
    name="tilesparse",
    help=(
        "Weight block sparsity for deep networks: train to block sparsity, quantize, compile to an "
        "AMD AIE2 tile array, simulate, and estimate what sparsity buys.\n\n"
        "Start with `tilesparse demo`; every verb has --help."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="markdown",  # docstrings wrap at 100 columns; markdown joins their lines
)

# Verb modules, each exposing register(app). Order = order in --help.
VERB_MODULES = (
    "tilesparse.cli.demo_cmd",
    "tilesparse.cli.sparsify_cmd",
    "tilesparse.cli.map_cmd",
    "tilesparse.cli.compile_cmd",
    "tilesparse.cli.sim_cmd",
)


def _version(value: bool) -> None:
    if value:
        from tilesparse.program.provenance import package_version

        typer.echo(f"tilesparse {package_version()}")
        raise typer.Exit()


@app.callback()
def _streams(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the tilesparse version (the one programs record) and exit."),
) -> None:
    # Progress bars and spinners (rich's global console) draw on stderr, and only on a terminal:
    # stdout carries the verbs' results alone, so that `--json -` and `| cat` get no stray lines.
    import rich

    rich.reconfigure(stderr=True, quiet=not sys.stderr.isatty())


for _mod in VERB_MODULES:
    importlib.import_module(_mod).register(app)


def main() -> None:
    err = Console(stderr=True)
    try:
        app()
    except TilesparseError as e:
        err.print(Text.assemble(("error: ", "bold red"), str(e)), soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
