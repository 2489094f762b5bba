"""Checkpoints that carry the weights, the block masks and the recipe.

File layout (a dict saved with ``torch.save``, written atomically)::

    format: "tilesparse-checkpoint", version: 2, model_name: str | None,
    model_state: plain state dict (keys as in the un-sparsified model; masked weights are zero),
    sparsifier: {"recipe", "masks", "gates"} | None, extra: {...},  # e.g. optimizer, epoch
    composite: {"pattern", "layers"}  # only in a TASD / SDQ checkpoint (sparsify.composite)
    checksum: {"algorithm": "crc32", "tensors": {path: crc}, "fields": crc}   # see checksum.py

Because ``model_state`` uses plain keys, a hard-masked checkpoint also loads into a vanilla model with
``model.load_state_dict(ckpt["model_state"])``. Loading into the wrong model raises ``CheckpointError``
naming the missing / unexpected / mis-shaped tensors; reading a damaged one raises it naming the
tensors whose checksum fails. Version 1 files (no checksum) are refused; ``upgrade_checkpoint``
re-saves one with checksums if you trust its contents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tilesparse.errors import CheckpointError, ConfigError
from tilesparse.sparsify.checksum import checksum, mismatches
from tilesparse.sparsify.recipe import Recipe
from tilesparse.sparsify.sparsifier import Sparsifier
from tilesparse.utils.atomic import atomic_torch_save
from tilesparse.utils.torchfile import TorchFileError, load_torch_file

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "read_checkpoint", "plain_state_dict",
           "load_plain_state", "upgrade_checkpoint"]

FORMAT = "tilesparse-checkpoint"
VERSION = 2  # 2: a checksum over every tensor and field
_UNCHECKED_VERSION = 1  # the same layout without a checksum (upgrade_checkpoint adds one)
_ORIG = ".parametrizations.weight.original"
_PARAM = ".parametrizations.weight.0."
_MAX_LISTED = 5  # mismatching keys shown in an error message


@dataclass
class Checkpoint:
    model: nn.Module
    sparsifier: Sparsifier | None
    recipe: Recipe | None
    model_name: str | None
    extra: dict[str, Any] = field(default_factory=dict)


def _plain_key(key: str) -> str | None:
    if _PARAM in key:
        return None  # mask buffers and gates live in the sparsifier state
    return key.replace(_ORIG, ".weight")


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with plain keys; a masked weight is stored as raw weight * mask (exact zeros)."""
    out = {}
    for key, value in model.state_dict().items():
        plain = _plain_key(key)
        if plain is None:
            continue
        if key.endswith(_ORIG):
            mod = model.get_submodule(key[: -len(_ORIG)])
            value = value * mod.parametrizations.weight[0].element_mask
        out[plain] = value.detach().cpu().clone()
    return out


def _describe(keys: list[str]) -> str:
    return ", ".join(keys[:_MAX_LISTED]) + (f" (+{len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else "")


def load_plain_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a plain state dict into ``model`` (prepared or not); CheckpointError on any mismatch."""
    actual = {p: k for k in model.state_dict() if (p := _plain_key(k)) is not None}
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(actual) - set(state))
    unexpected = sorted(set(state) - set(actual))
    bad_shape = [f"{p} {tuple(state[p].shape)} vs model {shapes[actual[p]]}"
                 for p in actual if p in state and tuple(state[p].shape) != shapes[actual[p]]]
    problems = ([f"missing tensors: {_describe(missing)}"] * bool(missing)
                + [f"unexpected tensors: {_describe(unexpected)}"] * bool(unexpected)
                + [f"shape mismatch: {_describe(bad_shape)}"] * bool(bad_shape))
    if problems:
        raise CheckpointError(f"{source} does not match the model ({type(model).__name__}): " + "; ".join(problems))
    model.load_state_dict({actual[p]: v for p, v in state.items()}, strict=False)


def save_checkpoint(path: str | Path, model: nn.Module, sparsifier: Sparsifier | None = None, *,
                    model_name: str | None = None, extra: dict[str, Any] | None = None,
                    composite: dict[str, Any] | None = None) -> Path:
    """Write weights + masks + recipe atomically (an interrupted save leaves the old file intact).
    ``composite``: the TASD terms / SDQ parts entry (``sparsify.composite.save_composite_checkpoint``)."""
    payload = {
        "format": FORMAT, "version": VERSION, "model_name": model_name,
        "model_state": plain_state_dict(model),
        "sparsifier": sparsifier.state_dict() if sparsifier is not None and sparsifier.model is not None else None,
        "extra": extra or {},
    }
    if composite is not None:
        payload["composite"] = composite
    payload["checksum"] = checksum(payload)
    return atomic_torch_save(payload, path)


def _read_envelope(path: Path) -> dict[str, Any]:
    """The file's payload, with its format checked (not its version or checksum)."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        data = load_torch_file(path)
    except TorchFileError as e:
        raise CheckpointError(f"{path}: not a readable checkpoint: {e.reason}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a tilesparse checkpoint (no '{FORMAT}' header)")
    return data


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file and check its envelope and checksum (no model needed)."""
    path = Path(path)
    data = _read_envelope(path)
    version = data.get("version")
    if version == _UNCHECKED_VERSION:
        raise CheckpointError(f"{path}: checkpoint version 1 has no checksum, this tilesparse reads version "
                              f"{VERSION}; if you trust the file, re-save it with tilesparse.sparsify."
                              f"upgrade_checkpoint('{path}'), else sparsify again")
    if version != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version!r}, this tilesparse reads {VERSION}")
    bad = mismatches(data)
    if bad:
        raise CheckpointError(f"{path}: checksum mismatch in {_damaged(bad)}: the file changed after it was "
                              "written (damaged on disk or in a copy); use an intact copy, or sparsify again "
                              "(--resume needs an intact last.pt)")
    return data


def _damaged(bad: list[str]) -> str:
    if bad == ["checksum"]:
        return "the checksum record itself"
    tensors = [p for p in bad if p != "fields"]
    parts = [f"tensor{'s' * (len(tensors) > 1)} {_describe(tensors)}"] * bool(tensors)
    return " and ".join(parts + ["the non-tensor fields (recipe, settings, history)"] * ("fields" in bad))


def upgrade_checkpoint(path: str | Path) -> Path:
    """Re-save a version-1 checkpoint (no checksum) as version 2, in place. Use it only on a file you
    trust: the checksum then vouches for whatever it holds now."""
    path = Path(path)
    data = _read_envelope(path)
    if data.get("version") != _UNCHECKED_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {data.get('version')!r}; only version "
                              f"{_UNCHECKED_VERSION} files need upgrading")
    data["version"] = VERSION
    data["checksum"] = checksum(data)
    return atomic_torch_save(data, path)


def load_checkpoint(path: str | Path, model: nn.Module | None = None) -> Checkpoint:
    """Load a checkpoint into ``model`` (or the zoo model it names) and re-attach its masks.

    ``model`` must be un-prepared; the returned sparsifier is prepared on it with the saved recipe.
    """
    data = read_checkpoint(path)
    name = data.get("model_name")
    if model is None:
        if not name:
            raise CheckpointError(f"{path}: checkpoint names no model; pass the model to load into")
        from tilesparse.models.zoo import get_model

        model = get_model(name)
    sp_state = data.get("sparsifier")
    recipe = sparsifier = None
    if sp_state is not None:
        try:
            recipe = Recipe.from_dict(sp_state["recipe"], f"{path} (recipe)")
        except ConfigError as e:
            raise CheckpointError(str(e)) from None
        try:
            sparsifier = Sparsifier(recipe).prepare(model)
        except ConfigError as e:
            raise CheckpointError(f"{path}: recipe does not fit the model: {e}") from None
    load_plain_state(model, data["model_state"], str(path))
    if sparsifier is not None:
        try:
            sparsifier.load_state_dict(sp_state)
        except ConfigError as e:
            raise CheckpointError(f"{path}: masks do not match the model: {e}") from None
    return Checkpoint(model, sparsifier, recipe, name, data.get("extra", {}))
