"""Entry point of the ``tilesparse`` command (and of ``python -m tilesparse``).

Each verb lives in its own module with a ``register(app)`` function; heavy imports (torch,
torchvision) happen inside the verbs so that ``tilesparse --help`` stays fast. No input reaches a
traceback: whatever ends a verb is printed as one ``error: ...`` line with an exit code
(``tilesparse.cli.failures``: 2 refused, 3 internal error); ``tilesparse --debug VERB`` (or
``TILESPARSE_DEBUG=1``) prints the traceback too.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Sequence

import typer
from rich.console import Console
from rich.text import Text

from tilesparse.cli.failures import DEBUG_ENV, EXIT_INTERRUPTED, debug_requested, describe, guarded

app = typer.Typer(
    name="tilesparse",
    help=(
        "Structured sparsity for deep networks: train to a pattern (8x8 blocks, 2:4, hierarchies ...), "
        "quantize, compile to an AMD AIE2 tile array, simulate, and estimate what sparsity buys.\n\n"
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
    "tilesparse.cli.report_cmd",
    "tilesparse.cli.import_cmd",
    "tilesparse.cli.map_cmd",
    "tilesparse.cli.compile_cmd",
    "tilesparse.cli.pareto_cmd",
    "tilesparse.cli.onnx_cmd",
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
    debug: bool = typer.Option(False, "--debug", help=f"On an error, print the full traceback too (also "
                               f"{DEBUG_ENV}=1); for reporting bugs. Before the verb: tilesparse --debug compile ..."),
) -> None:
    # --debug is read by main() from the arguments themselves: it must know it whatever the verb does.
    # Progress bars and spinners (rich's global console) draw on stderr, and only on a terminal:
    # stdout carries the verbs' results alone, so that `--json -` and `| cat` get no stray lines.
    import rich

    rich.reconfigure(stderr=True, quiet=not sys.stderr.isatty())


for _mod in VERB_MODULES:
    importlib.import_module(_mod).register(app)
for _verb in app.registered_commands:  # an EOFError is a failure like any other, not "Aborted."
    _verb.callback = guarded(_verb.callback) if _verb.callback else None


def main(argv: Sequence[str] | None = None) -> None:
    """Run ``tilesparse ARGS`` (``sys.argv[1:]`` by default); every failure ends in one line on
    stderr and its exit code (tilesparse.cli.failures), the traceback only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(args)
    try:
        app(args=args, prog_name="tilesparse")  # `python -m tilesparse` too: usage lines name the command
    except KeyboardInterrupt:
        _print_error(None, "interrupted", debug)
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:  # the one place that catches everything: a bug shows as one line too
        code, line = describe(e)
        _print_error(e, line, debug)
        sys.exit(code)


def _print_error(e: BaseException | None, line: str, debug: bool) -> None:
    err = Console(stderr=True)
    if debug and e is not None:
        traceback.print_exception(e, file=sys.stderr)
        sys.stderr.flush()
    err.print(Text.assemble(("error: ", "bold red"), line), soft_wrap=True, highlight=False)


if __name__ == "__main__":
    main()
