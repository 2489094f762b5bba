"""How the command ends when something goes wrong: one line on stderr and an exit code, never a
traceback unless asked for (``tilesparse --debug VERB`` or ``TILESPARSE_DEBUG=1``).

Exit codes (README, "Exit codes"):

* 0: done;
* 1: the work ran and a check failed (``simulate``: a layer differs from the reference or the bytes
  from the time model; ``demo``: an image not bit-exact);
* 2: refused: bad input (a ``TilesparseError``; a usage error, printed by the CLI framework), a
  path the system refuses (an ``OSError`` naming it) or memory running out (``MemoryError``);
* 3: an internal error, i.e. a bug in tilesparse: any other exception, one line naming its type;
* 130: interrupted (Ctrl-C).

Kept free of torch: imported by the entry point before any verb.
"""

from __future__ import annotations

import errno
import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from tilesparse.errors import TilesparseError

__all__ = ["DEBUG_ENV", "EXIT_CHECK_FAILED", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_REFUSED", "EscapedEOF",
           "debug_requested", "describe", "guarded"]

EXIT_CHECK_FAILED = 1
EXIT_REFUSED = 2
EXIT_INTERNAL = 3
EXIT_INTERRUPTED = 130
DEBUG_ENV = "TILESPARSE_DEBUG"
DEBUG_FLAG = "--debug"
_MAX_DETAIL = 300  # characters of a foreign message kept on the one line (a numpy shape can be long)
_ENV_OFF = ("", "0", "false", "no", "off")
_F = TypeVar("_F", bound=Callable[..., Any])


class EscapedEOF(Exception):
    """An ``EOFError`` that escaped a verb (a file shorter than its reader expected). The CLI
    framework would print "Aborted." and exit 1, taking it for the end of a prompt's input."""


def guarded(verb: _F) -> _F:
    """``verb`` with an escaping ``EOFError`` re-raised as ``EscapedEOF`` (reported in one line)."""

    @functools.wraps(verb)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return verb(*args, **kwargs)
        except EOFError as e:
            raise EscapedEOF(str(e)) from e

    return run  # type: ignore[return-value]  # same signature: functools.wraps, read by typer


def debug_requested(args: Sequence[str], environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """``--debug`` among the options before the verb (``tilesparse --debug compile ...``), or
    ``TILESPARSE_DEBUG`` set to anything but 0/false/no/off."""
    for a in args:
        if not a.startswith("-"):  # the verb: its own options follow
            break
        if a == DEBUG_FLAG:
            return True
    return environ.get(DEBUG_ENV, "").strip().lower() not in _ENV_OFF


def describe(e: BaseException) -> tuple[int, str]:
    """(exit code, the one line after ``error: ``) of an exception that ended a verb."""
    if isinstance(e, EscapedEOF) and isinstance(e.__cause__, EOFError):
        e = e.__cause__
    if isinstance(e, TilesparseError):
        return EXIT_REFUSED, str(e)  # a ConfigError listing several problems keeps its lines
    if isinstance(e, MemoryError):
        return EXIT_REFUSED, "out of memory" + (f" ({_first_line(e)})" if _first_line(e) else "")
    if isinstance(e, OSError) and e.errno is not None and e.filename is not None:  # a path the system refused
        return EXIT_REFUSED, _os_error(e)
    detail = f"{type(e).__name__}: {_first_line(e)}" if _first_line(e) else type(e).__name__
    return EXIT_INTERNAL, (f"internal error: {detail} (run with --debug for the traceback; please report it)")


def _os_error(e: OSError) -> str:
    """``PATH: what the system said`` (the path a rename failed on is the second one: the target)."""
    why = (e.strerror or os.strerror(e.errno or 0)).strip()
    why = why[:1].lower() + why[1:]
    if e.errno == errno.EISDIR:
        why += ", expected a file"
    elif e.errno == errno.ENOTDIR and why == "not a directory":  # the system's words, not ours
        why = "not a folder (a part of this path is a file)"
    path = e.filename2 if e.filename2 is not None and e.errno in (errno.EISDIR, errno.EEXIST) else e.filename
    return f"{os.fsdecode(path)}: {why}" if path is not None else why


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    text = lines[0].strip() if lines else ""
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "…"
