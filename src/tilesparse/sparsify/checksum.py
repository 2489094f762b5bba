"""Checksums of a checkpoint's contents, written on save and checked on load.

``torch.load`` does not check the zip CRCs of a ``torch.save`` file, so a flipped byte in a weight
loads silently (a 0.0 becomes 2.3e-38). A checkpoint therefore carries, under ``"checksum"``:

* ``tensors``: the CRC-32 of every tensor's bytes (C order), by its path in the payload
  (``model_state/conv.weight``, ``sparsifier/masks/conv``, ``extra/optimizer/state/0/momentum_buffer``),
  so that a mismatch names the damaged tensors;
* ``fields``: the CRC-32 of everything else — a canonical text of the nested dicts, lists and values,
  with each tensor's path, dtype and shape — so that a changed recipe, epoch or learning rate is
  caught too.

CRC-32 (zlib, as zip archives and the program files use) because the threat is accidental damage
(disk, copy, truncation), which it detects (every 1- or 2-bit error, every burst of up to 32 bits)
at memory speed; a cryptographic hash stored in the same file would not stop a deliberate edit, and
``weights_only=True`` already keeps a malicious file from running code.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["ALGORITHM", "checksum", "mismatches"]

ALGORITHM = "crc32"
_KEY = "checksum"  # the payload key that holds the checksum (left out of it)


def _tensor_crc(t: torch.Tensor) -> int:
    flat = t.detach().cpu().contiguous().reshape(-1)
    return zlib.crc32(flat.view(torch.uint8).numpy().data) if flat.numel() else 0


def _walk(obj: Any, path: str, tensors: dict[str, int]) -> Iterator[str]:
    """Canonical text lines of ``obj`` (tensors as path, dtype and shape; their CRCs into ``tensors``)."""
    if isinstance(obj, torch.Tensor):
        tensors[path] = _tensor_crc(obj)
        yield f"T {path} {obj.dtype} {tuple(obj.shape)}"
    elif isinstance(obj, Mapping):
        keys = sorted((k for k in obj if path or k != _KEY), key=repr)
        yield f"D {path} {len(keys)}"
        for key in keys:
            yield from _walk(obj[key], f"{path}/{key}" if path else str(key), tensors)
    elif isinstance(obj, (list, tuple)):
        yield f"L {path} {len(obj)}"
        for i, item in enumerate(obj):
            yield from _walk(item, f"{path}/{i}", tensors)
    else:
        yield f"V {path} {type(obj).__name__} {obj!r}"


def checksum(payload: Mapping[str, Any]) -> dict[str, Any]:
    """The ``"checksum"`` entry of a checkpoint payload (every key but ``"checksum"`` itself)."""
    tensors: dict[str, int] = {}
    text = "\n".join(_walk(payload, "", tensors))
    fields = zlib.crc32(text.encode("utf-8", "backslashreplace"))
    return {"algorithm": ALGORITHM, "tensors": tensors, "fields": fields}


def mismatches(payload: Mapping[str, Any]) -> list[str]:
    """What no longer matches the payload's stored checksum: tensor paths, then ``"fields"``.

    A payload without a well-formed checksum entry gives ``["checksum"]``.
    """
    saved = payload.get(_KEY)
    if not isinstance(saved, Mapping) or saved.get("algorithm") != ALGORITHM or \
            not isinstance(saved.get("tensors"), Mapping):
        return ["checksum"]
    now = checksum(payload)
    bad = [p for p in dict.fromkeys([*now["tensors"], *saved["tensors"]])
           if now["tensors"].get(p) != saved["tensors"].get(p)]
    return bad + ["fields"] * (now["fields"] != saved.get("fields"))
