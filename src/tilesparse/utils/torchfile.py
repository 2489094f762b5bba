"""Reading a user's ``torch.save`` file safely: never unpickling code (``weights_only=True``), and
saying in one line why a file is unreadable — without torch's advice to retry with
``weights_only=False``, which would run whatever code the file holds."""

from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

from tilesparse.errors import CheckpointError

__all__ = ["TorchFileError", "load_torch_file"]

_ZIP_MAGIC = b"PK\x03\x04"
_MAX_DETAIL = 100  # characters of torch's own message kept


class TorchFileError(CheckpointError):
    """A file ``torch.load`` cannot read; ``reason`` is one line, without the file name."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def load_torch_file(path: str | Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; ``TorchFileError`` if unreadable."""
    import torch

    path = Path(path)
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise beside our one line
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds (RuntimeError, OSError, EOFError, UnpicklingError ...)
        raise TorchFileError(path, _reason(path, e)) from None


def _reason(path: Path, e: Exception) -> str:
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as oe:
        return f"cannot be read ({oe.strerror or oe})"
    if not head:
        return "empty file, not a torch.save file"
    try:
        is_zip = zipfile.is_zipfile(path)
    except zipfile.BadZipFile:  # e.g. "zipfiles that span multiple disks": a damaged end record
        is_zip = False
    if not is_zip:
        if head == _ZIP_MAGIC:  # a zip archive whose end (the central directory) is missing
            return "truncated torch.save file (the zip archive has no end; was the write cut short?)"
        return "not a torch.save file"
    if isinstance(e, pickle.UnpicklingError):  # a whole pickled object (e.g. torch.save(model)) or damage
        return ("holds Python objects other than tensors and plain containers (a pickled nn.Module?), or is "
                "corrupt; tilesparse never unpickles code")
    detail = (str(e).strip().splitlines() or [""])[0].split(". This is an internal")[0]
    return f"corrupt torch.save file ({type(e).__name__}: {detail[:_MAX_DETAIL]})"
