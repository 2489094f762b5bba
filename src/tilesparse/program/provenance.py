"""Where a Program came from: the model source, its files' hashes, every choice the front end and
the compiler made. ``tilesparse simulate prog.tsp`` rebuilds the model from this record and
verifies the program bit for bit; a flag that contradicts it is refused.

The record is the Program's ``provenance`` field, saved in the file's header. Imports nothing
heavy.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from tilesparse.errors import ProgramError

__all__ = [
    "SOURCE_KINDS",
    "TIME_MODEL",
    "Provenance",
    "file_sha256",
    "package_version",
    "provenance_of",
    "set_provenance",
]

SOURCE_KINDS = ("zoo", "checkpoint", "file", "pt2", "onnx", "module")  # module: an in-memory nn.Module (Python only)
TIME_MODEL = "tilesparse-v1"  # the time model's rules (docs/time-model.md); bump when they change


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB pieces)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_version() -> str:
    """The installed tilesparse version, or "unknown" for a source tree that is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tilesparse")
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Provenance:
    """Everything needed to rebuild the graph a Program was compiled from (and to tell whether a
    later request contradicts it). Paths are absolute; hashes are hex SHA-256."""

    source: str  # what the user passed: a zoo name, a checkpoint / .pt2 / .onnx path, file.py:factory, a module's class
    source_kind: str  # one of SOURCE_KINDS
    source_sha256: str | None  # of the file behind the source (None for a zoo name)
    weights: str | None  # a state-dict file loaded into a zoo architecture
    weights_sha256: str | None
    pattern: str  # "block"
    block: tuple[int, int]
    sparsity: float  # the fraction of blocks asked for (0 = dense); a checkpoint's recipe target
    # "none" (dense), "l2-oneshot", "checkpoint-masks", "module-weights" (its zero blocks) or
    # "checkpoint-weights" (a checkpoint of a non-block pattern: the zero blocks of its trained weights)
    selection: str
    seed: int  # random zoo weights and calibration inputs
    quantization: str  # e.g. "int8 power-of-two, per-tensor weights" or "none (float graph)"
    # e.g. "random normal, n=2, seed=0", "given: n=16" (inputs passed in, module sources), or images
    # from a folder ("images: n=16 from ...", the files in ``calibration_images``)
    calibration: str
    input_shape: tuple[int, ...]
    array: str  # the array's label (hw.label)
    time_model: str
    balance: bool
    version: str  # tilesparse version that compiled the program
    # the source / weights file as the user wrote it (a relative path stays relative), so that a
    # folder moved as a whole still finds it from the same working directory; None for a zoo name
    source_given: str | None = None
    weights_given: str | None = None
    # calibration images from a folder (``--calib``): {"path": absolute folder, "given": as the user
    # wrote it, "files": the images' paths relative to it, in order, "sha256": of those names and
    # bytes}; rebuilt through the eval transform at ``input_shape``. None: no images (older programs)
    calibration_images: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        errs = _check(self)
        if errs:
            raise ProgramError("malformed provenance: " + "; ".join(errs))

    @property
    def quantized(self) -> bool:
        return not self.quantization.startswith("none")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["block"], d["input_shape"] = list(self.block), list(self.input_shape)
        return d

    @classmethod
    def from_dict(cls, data: Any, where: str = "program") -> Provenance:
        """Validate and build; ``ProgramError`` naming ``where`` and the bad fields otherwise."""
        if not isinstance(data, dict):
            raise ProgramError(f"{where}: malformed provenance (expected a mapping, got {type(data).__name__})")
        names = [f.name for f in fields(cls)]
        optional = {f.name for f in fields(cls) if f.default is not MISSING}  # added later: older records lack them
        missing = [n for n in names if n not in data and n not in optional]
        unknown = sorted(set(data) - set(names))
        if missing or unknown:
            raise ProgramError(f"{where}: malformed provenance: " + "; ".join(
                [f"missing field(s) {', '.join(missing)}"] * bool(missing)
                + [f"unknown field(s) {', '.join(unknown)}"] * bool(unknown)))
        d = dict(data)
        try:
            d["block"] = tuple(int(x) for x in d["block"])
            d["input_shape"] = tuple(int(x) for x in d["input_shape"])
        except (TypeError, ValueError):
            raise ProgramError(f"{where}: malformed provenance: block and input_shape must be lists of "
                               f"integers, got {data['block']!r} and {data['input_shape']!r}") from None
        try:
            return cls(**d)
        except ProgramError as e:
            raise ProgramError(f"{where}: {e}") from None


_STR = ("source", "pattern", "selection", "quantization", "calibration", "array", "time_model", "version")
_OPT_STR = ("source_sha256", "weights", "weights_sha256", "source_given", "weights_given")


def _check(p: Provenance) -> list[str]:
    errs = [f"{n} must be a string, got {getattr(p, n)!r}" for n in _STR if not isinstance(getattr(p, n), str)]
    errs += [f"{n} must be a string or null, got {getattr(p, n)!r}" for n in _OPT_STR
             if getattr(p, n) is not None and not isinstance(getattr(p, n), str)]
    if p.source_kind not in SOURCE_KINDS:
        errs.append(f"source_kind must be one of {', '.join(SOURCE_KINDS)}, got {p.source_kind!r}")
    elif p.source_kind == "module" and (p.source_sha256 is not None or p.weights is not None):
        errs.append("an in-memory model (source_kind module) has no source or weights file to hash")
    if len(p.block) != 2 or min(p.block) < 1:
        errs.append(f"block must be two positive integers, got {p.block!r}")
    if not p.input_shape or min(p.input_shape) < 1:
        errs.append(f"input_shape must be positive integers, got {p.input_shape!r}")
    if not isinstance(p.sparsity, (int, float)) or isinstance(p.sparsity, bool) or math.isnan(p.sparsity) \
            or not 0 <= p.sparsity < 1:
        errs.append(f"sparsity must be a number in [0, 1), got {p.sparsity!r}")
    if not isinstance(p.seed, int) or isinstance(p.seed, bool):
        errs.append(f"seed must be an integer, got {p.seed!r}")
    if not isinstance(p.balance, bool):
        errs.append(f"balance must be true or false, got {p.balance!r}")
    return errs + _check_images(p.calibration_images)


_IMAGE_KEYS = ("path", "given", "files", "sha256")


def _check_images(rec: Any) -> list[str]:
    if rec is None:
        return []
    if not isinstance(rec, dict) or sorted(rec) != sorted(_IMAGE_KEYS):
        return [f"calibration_images must be null or a mapping with keys {', '.join(_IMAGE_KEYS)}, got "
                f"{str(rec)[:120]}"]
    files = rec["files"]
    if not isinstance(files, (list, tuple)) or not files or not all(isinstance(f, str) for f in files):
        return [f"calibration_images.files must be a non-empty list of relative paths, got {str(files)[:120]}"]
    return [f"calibration_images.{k} must be a string, got {rec[k]!r}" for k in ("path", "given", "sha256")
            if not isinstance(rec[k], str)]


def set_provenance(program: Any, prov: Provenance) -> None:
    """Record ``prov`` in ``program`` (saved with it)."""
    program.provenance = prov


def provenance_of(program: Any, where: str = "program") -> Provenance | None:
    """The program's provenance, None if it has none (compiled before provenance existed, or from
    a graph directly); ``ProgramError`` if the record is malformed."""
    prov = program.provenance
    return prov if prov is None or isinstance(prov, Provenance) else Provenance.from_dict(prov, where)
