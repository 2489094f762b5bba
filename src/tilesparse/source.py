"""Model sources: the one argument every verb takes to name a model, parsed in one place.
Imports only the standard library at module level (the CLI's help text comes from here).

Forms (``SOURCE_FORMS``):

* a zoo name: ``resnet50``, ``digits_cnn``, any torchvision classifier (random weights, seeded),
  optionally with ``weights=`` a plain state dict of that architecture — or a tilesparse
  checkpoint of it, whose masks are then used;
* a ``tilesparse sparsify`` checkpoint file (``sparse.pt``): architecture from its model name,
  weights and block masks from the file;
* ``path/to/file.py:factory``: the file is imported by path and ``factory()`` must return an
  ``nn.Module`` (called after seeding torch, so random initialisation is reproducible);
* a ``torch.export`` ``.pt2`` file: ``torch.export.load(path).module()``; its example input gives
  the default input shape;
* an ONNX ``.onnx`` file: lifted to a module by ``tilesparse.ir.onnx_import`` (then the torch path);
  its graph input gives the default input shape (a dynamic batch dimension is 1).

From Python (not the CLI, so not in ``SOURCE_FORMS``) ``tilesparse.build.build_graph_from`` also
takes an in-memory ``nn.Module``: a ``ModelSource`` of kind "module" named by its class.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tilesparse.errors import CheckpointError, ConfigError, ProvenanceError

__all__ = ["SOURCE_FORMS", "LoadedModel", "ModelSource", "load_model", "locate_file", "parse_source",
           "require_file"]

SOURCE_FORMS = ("a zoo name (resnet50, digits_cnn, any torchvision classifier; with --weights FILE for a state "
                "dict or checkpoint of it), a `tilesparse sparsify` checkpoint (runs/x/sparse.pt: its "
                "architecture, weights and trained masks), path/to/file.py:factory (factory() returns an "
                "nn.Module; give --input-shape), a torch.export .pt2 file, or an ONNX .onnx file")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")
_PROGRAM_SUFFIXES = (".tsp", ".npz")


@dataclass(frozen=True)
class ModelSource:
    """A parsed source. ``spec`` is canonical (absolute paths), so two spellings of one file agree."""

    spec: str
    kind: str  # zoo | checkpoint | file | pt2 | onnx | module (an in-memory nn.Module, Python only)
    path: Path | None = None  # the checkpoint / .py / .pt2 / .onnx file
    factory: str | None = None
    weights: Path | None = None  # state dict (or checkpoint) for a zoo name
    given: str | None = field(default=None, compare=False)  # the file's path as the user wrote it
    given_weights: str | None = field(default=None, compare=False)

    @property
    def files(self) -> list[tuple[str, Path]]:
        """(role, path) of every file the model is read from (their hashes go in the provenance)."""
        return [(r, p) for r, p in (("source", self.path), ("weights", self.weights)) if p is not None]


@dataclass
class LoadedModel:
    model: Any  # nn.Module in eval mode, masks (if any) baked into zero weights
    name: str  # graph name
    zoo_name: str | None  # architecture name (default input shape)
    masks: dict[str, Any] | None = None  # module name -> bool block keep-mask, from a checkpoint
    block: tuple[int, int] | None = None  # the checkpoint recipe's block shape
    sparsity: float | None = None  # the checkpoint recipe's target
    example_shape: tuple[int, ...] | None = None  # a .pt2's example input, an .onnx file's graph input
    arch: str | None = None  # what a checkpoint of it records: zoo name, canonical file.py:factory, .pt2 or .onnx
    notices: list[str] = field(default_factory=list)  # e.g. a checkpoint's model file found next to it
    pattern: str | None = None  # the checkpoint recipe's pattern (masks/block: only for block patterns)
    composite: Any = None  # a TASD / SDQ checkpoint's terms or parts (sparsify.composite.CompositeWeights)


def require_file(path: Path, what: str) -> Path:
    """``path`` resolved; a one-line ``ConfigError`` naming it if it is missing or a folder."""
    if path.is_dir():
        hint = f"; did you mean {path / 'sparse.pt'}?" if (path / "sparse.pt").is_file() else ""
        raise ConfigError(str(path), [f"is a folder, expected a {what}{hint}"])
    if not path.is_file():
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise ConfigError(str(path), [f"no such {what}{where}"])
    return path.resolve()


def parse_source(spec: str, weights: str | Path | None = None) -> ModelSource:
    """Classify ``spec`` (see the module doc); ``ConfigError`` for a missing file or a bad form."""
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("model", [f"empty model source; expected {SOURCE_FORMS}"])
    head, sep, attr = spec.rpartition(":")
    if sep and head.endswith(".py"):
        if not attr.isidentifier():
            raise ConfigError(spec, [f"expected path/to/file.py:factory with a Python name after ':', got {attr!r}"])
        path = require_file(Path(head), "Python file")
        src = ModelSource(f"{path}:{attr}", "file", path, attr, given=head)
    elif _looks_like_a_path(spec):
        src = _file_source(spec)
    else:
        src = ModelSource(spec, "zoo")
    if weights is not None:
        if src.kind != "zoo":
            raise ConfigError("--weights", [f"only a zoo name takes --weights; {spec} ({src.kind}) carries its "
                                            "own weights"])
        src = ModelSource(src.spec, "zoo", weights=require_file(Path(weights), "weights file"),
                          given_weights=str(weights))
    return src


def _looks_like_a_path(spec: str) -> bool:
    """Zoo names have no folder separator and no suffix; anything else names a file (a bare name
    that is also a folder stays a zoo name: ``resnet50`` may be a run folder too)."""
    return "/" in spec or "\\" in spec or bool(Path(spec).suffix) or Path(spec).is_file()


def _file_source(spec: str) -> ModelSource:
    """A source that names a file: by its suffix (or, for an unknown suffix, a torch zip archive)."""
    suffix = Path(spec).suffix
    if suffix == ".py":
        raise ConfigError(spec, ["name the function that builds the model: path/to/file.py:factory"])
    if suffix in _PROGRAM_SUFFIXES:
        raise ConfigError(spec, ["is a compiled program, not a model; `tilesparse simulate` / `estimate` read "
                                 "programs, the other verbs need a model source"])
    if suffix == ".pt2":
        path = require_file(Path(spec), "torch.export .pt2 file")
        return ModelSource(str(path), "pt2", path, given=spec)
    if suffix == ".onnx":
        path = require_file(Path(spec), "ONNX model file")
        return ModelSource(str(path), "onnx", path, given=spec)
    what = "checkpoint (.pt, .pth, .ckpt)" if suffix in _CHECKPOINT_SUFFIXES else "file"
    path = require_file(Path(spec), what)
    if suffix not in _CHECKPOINT_SUFFIXES and not zipfile.is_zipfile(path):
        raise ConfigError(spec, [f"not a model source: expected {SOURCE_FORMS}"])
    return ModelSource(str(path), "checkpoint", path, given=spec)


def locate_file(role: str, recorded: str, others: list[tuple[Any, str]], sha: str | None, where: str,
                made: str = "was compiled", remedy: str = "recompile") -> tuple[Path, str]:
    """The first of (``recorded`` path, ``others`` as (path or None, why), the same name next to
    ``where``) holding a file with this sha256 (any file, for None), and a notice if it is not the
    recorded one; ``ProvenanceError`` naming what was found instead, or where it looked."""
    from tilesparse.program.provenance import file_sha256

    places = [(Path(recorded), ""), *((Path(p), why) for p, why in others if p is not None),
              (Path(where).parent / Path(recorded).name, f"next to {where}")]
    existing = list({p.resolve(): (p, why) for p, why in reversed(places) if p.is_file()}.values())[::-1]
    for place, why in existing:
        if sha is None or file_sha256(place) == sha:
            same = "same sha256" if sha else "no sha256 recorded"
            state = "changed" if Path(recorded).is_file() else "not found"
            return place.resolve(), f"{role} file {recorded} {state}; using {place} ({why}, {same})" * bool(why)
    if existing:
        place = existing[0][0]
        shas = f"(sha256 {file_sha256(place)[:12]}…, {where} {made} from {(sha or '')[:12]}…)"
        if place == Path(recorded):
            raise ProvenanceError(f"{role} file {recorded} changed since {where} {made} {shas}; {remedy}")
        raise ProvenanceError(f"{role} file {recorded} is gone, and {place} in its stead has other contents "
                              f"{shas}; restore the file or {remedy}")
    looked = ", ".join(dict.fromkeys(str(p) for p, _ in places[1:] if p.resolve() != Path(recorded).resolve()))
    raise ProvenanceError(f"{where} {made} from {role} file {recorded}, which no longer exists (nor at "
                          f"{looked}); restore it, or put it next to {where}, or {remedy}")


def load_model(src: ModelSource, seed: int = 0) -> LoadedModel:
    """Build the source's ``nn.Module`` (eval mode) and whatever the source says about its masks."""
    if src.kind == "checkpoint":
        return _from_checkpoint(src.path, None)
    if src.kind == "file":
        return _from_file(src.path, src.factory, seed)
    if src.kind == "pt2":
        return _from_pt2(src.path)
    if src.kind == "onnx":
        return _from_onnx(src.path)
    from tilesparse.models.zoo import get_model

    if src.weights is not None and _is_checkpoint(src.weights):
        return _from_checkpoint(src.weights, src.spec)
    try:
        model = get_model(src.spec, weights=src.weights, seed=seed)
    except ConfigError:
        if Path(src.spec).is_dir():  # `compile runs` for `compile runs/sparse.pt`
            require_file(Path(src.spec), "model source file")
        raise
    return LoadedModel(model, src.spec, src.spec, arch=src.spec)


def _is_checkpoint(path: Path) -> bool:
    from tilesparse.sparsify.checkpoint import FORMAT
    from tilesparse.utils.torchfile import TorchFileError, load_torch_file

    try:
        data = load_torch_file(path)
    except TorchFileError:  # unreadable: get_model's own loader reports it, naming the file
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


def _from_checkpoint(path: Path, zoo_name: str | None) -> LoadedModel:
    """Architecture from the checkpoint's model name, weights and masks from the file."""
    from tilesparse.sparsify.checkpoint import load_checkpoint, read_checkpoint

    try:
        data = read_checkpoint(path)
    except CheckpointError as e:
        if "not a tilesparse checkpoint" not in str(e):
            raise
        raise CheckpointError(f"{e}; for a plain state dict pass its architecture's zoo name and --weights "
                              f"{path}") from None
    name = data.get("model_name")
    if zoo_name is not None and name and name != zoo_name:
        raise CheckpointError(f"{path}: checkpoint of model {name!r}, not {zoo_name!r}; pass the checkpoint "
                              "itself as the model source")
    if not name and zoo_name is None:
        raise CheckpointError(f"{path}: checkpoint names no model architecture; pass the zoo name and "
                              "--weights with this file")
    arch, notices, shape = name or zoo_name, [], None
    if ".py:" in arch or arch.endswith((".pt2", ".onnx")):  # sparsified from a file: the checkpoint names it
        arch, note = _checkpoint_model_file(arch, data.get("extra") or {}, path)
        inner = load_model(parse_source(arch))
        model, zoo, shape, notices = inner.model, None, inner.example_shape, [note] * bool(note)
    else:
        from tilesparse.models.zoo import get_model

        model, zoo = get_model(arch), arch
    ck = load_checkpoint(path, model)
    masks = block = sparsity = pattern = None
    if ck.sparsifier is not None:
        pattern, sparsity = ck.recipe.pattern, float(ck.recipe.sparsity)
        if ck.recipe.block is not None:
            masks = {n: m.clone() for n, m in ck.sparsifier.masks.items()}
            block = tuple(ck.recipe.block)
        else:
            notices.append(f"{path.name}: pattern {pattern} is compiled by the all-zero blocks of its trained "
                           "weights; layers whose kept blocks meet the sparse multiply's rule (at most 2 non-zero "
                           "of every 4 input channels) run in its masked format, the others compute their zeros")
        ck.sparsifier.squash_mask()
    composite = None
    if data.get("composite") is not None:
        from tilesparse.sparsify.composite import read_composite

        composite = read_composite(data["composite"], path, ck.model)
        pattern = composite.pattern.spec()
    return LoadedModel(ck.model.eval(), path.stem, zoo, masks, block, sparsity, shape, arch, notices, pattern=pattern,
                       composite=composite)


def _checkpoint_model_file(arch: str, extra: dict, ckpt: Path) -> tuple[str, str]:
    """(the model source a checkpoint names, a notice or ""): its recorded file, else as given at
    sparsify (relative to the working directory), else of that name next to the checkpoint; with
    the sha256 recorded at sparsify (checkpoints written before it: any file)."""
    head, sep, factory = arch.rpartition(":") if ".py:" in arch else (arch, "", "")
    found, note = locate_file("model", head, [(extra.get("model_given"), "as given at sparsify, from this folder")],
                              extra.get("model_sha256"), str(ckpt), "was written", "sparsify again")
    return f"{found}{sep}{factory}", note


def _from_file(path: Path, factory: str, seed: int) -> LoadedModel:
    import torch
    from torch import nn

    mod_name = f"tilesparse_user_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(str(path), ["cannot be imported as a Python file"])
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # the user's code (sys.exit() too): report it, naming the file
        sys.modules.pop(mod_name, None)
        raise ConfigError(str(path), [f"importing it failed: {_raised(e)}"]) from None
    fn = getattr(module, factory, None)
    if not callable(fn):
        have = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(f"{path}:{factory}", [f"{path.name} defines no function {factory!r}"
                                                f" (callables there: {', '.join(have) or 'none'})"])
    torch.manual_seed(seed)
    try:
        model = fn()
    except (Exception, SystemExit) as e:
        raise ConfigError(f"{path}:{factory}", [f"{factory}() failed: {_raised(e)}"]) from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{path}:{factory}", [f"{factory}() returned {type(model).__name__}, expected a "
                                                "torch.nn.Module"])
    return LoadedModel(model.eval(), factory, None, arch=f"{path}:{factory}")


def _raised(e: BaseException) -> str:
    """``Type: first line of the message`` of what the user's code raised (one line of ours)."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def _from_pt2(path: Path) -> LoadedModel:
    import torch

    if not zipfile.is_zipfile(path):
        raise ConfigError(str(path), ["not a torch.export program (a .pt2 file is a zip archive written by "
                                      "torch.export.save)"])
    quiet = logging.getLogger("torch.export")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # torch logs its own traceback before raising; ours is one line
    try:
        ep = torch.export.load(str(path))
    except Exception as e:  # torch raises many kinds; the message names the file
        raise ConfigError(str(path), [f"not a readable torch.export program ({type(e).__name__} in "
                                      "torch.export.load); write one with torch.export.save(torch.export."
                                      "export(model, (x,)), path)"]) from None
    finally:
        quiet.setLevel(level)
    shape = None
    args = (ep.example_inputs or ((), {}))[0]
    if args and isinstance(args[0], torch.Tensor):
        shape = tuple(int(d) for d in args[0].shape)
    from tilesparse.ir.exported import lift_exported

    return LoadedModel(lift_exported(ep.module(), path.stem).eval(), path.stem, None, example_shape=shape,
                       arch=str(path))


def _from_onnx(path: Path) -> LoadedModel:
    from tilesparse.ir.onnx_import import load_onnx

    module, shape = load_onnx(path)  # shape None: dynamic dims, build asks for --input-shape
    return LoadedModel(module.eval(), path.stem, None, example_shape=shape, arch=str(path),
                       notices=list(getattr(module, "qdq_notices", [])))
