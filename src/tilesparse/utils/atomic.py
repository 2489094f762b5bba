"""Atomic writes: write to a temporary file in the same folder, fsync, then rename over the target,
so an interrupted run never leaves a half-written artifact behind."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def _atomic(path: str | Path, write: Callable[[IO[bytes]], object]) -> Path:  # what write returns is unused
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:  # a parent is a file: say so (mkdir's own words are "File exists")
        raise NotADirectoryError(errno.ENOTDIR, "not a folder (a file is in the way)", e.filename) from None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # named after the folder, not the temporary file's random name
        raise _naming(e, path.parent) from None
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _mode(path))  # mkstemp makes it owner-only (0600); an artifact is shared
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None and e.filename in (tmp, None):
            raise _naming(e, path) from None  # the target, not the temporary file
        raise
    return path


def _naming(e: OSError, path: Path) -> OSError:
    """The same error (same type and number) naming ``path``."""
    return type(e)(e.errno, e.strerror, str(path))


def _mode(path: Path) -> int:
    """The permissions a plain ``open(path, "w")`` would give: the replaced file's, or 0666 less the umask."""
    if path.is_file():
        return path.stat().st_mode & 0o777
    return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask: read from /proc where it is shown (Linux), else set and restored at once
    (the only portable way, which a thread creating a file at that instant would see as 0)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
        return umask


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return _atomic(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return _atomic(path, lambda f: f.write(text.encode("utf-8")))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    import torch

    return _atomic(path, lambda f: torch.save(obj, f))
