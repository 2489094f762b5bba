"""The program file: a NumPy ``.npz`` archive written atomically (docs/program.md, "File").

It holds ``header`` (UTF-8 JSON: magic, format version, array description, graph name, layers,
instructions, buffers, DDR map, metadata, provenance; every record as a JSON object: operands as
``{"memory", "buffer", "addr"}``, locks as ``{"name", "per", "state"}``), ``weights`` (the DDR
weight image, uint8), ``per_iter`` (float64: every instruction's per-iteration values,
concatenated) and ``param/<node>.<name>`` for per-channel quantization arrays.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from tilesparse.errors import ConfigError, ProgramError
from tilesparse.hw import ArrayConfig
from tilesparse.program.checks import check_limits, check_tables
from tilesparse.program.geometry import LayerGeometry
from tilesparse.program.instr import Instr, Lock, Operand
from tilesparse.program.provenance import Provenance
from tilesparse.program.records import (
    ChunkRow,
    CoreWork,
    Grid,
    LayerRecord,
    Loops,
    SubVolume,
    TensorSlice,
)
from tilesparse.utils import limits as L
from tilesparse.utils.config import clip, is_file, short_repr, validate_model

if TYPE_CHECKING:  # the Program imports this module
    from tilesparse.program.artifact import Program

__all__ = ["FORMAT_VERSION", "MAGIC", "decode_header", "encode", "read_arrays"]

_R = TypeVar("_R")  # the record a decoder builds

MAGIC = "tilesparse-program"
FORMAT_VERSION = 10
# 2: staging locks, copy-layer shifts, meta["input_scale_exp"]; 3: weight pieces; 4: ping-pong parity
# ([i%2]) counts iterations across the steps of a layer; 5: sliding windows (loops["slide"]);
# 6: typed records: operands, locks, cores, chunks, loops, grid and geometry are JSON objects (no
# more "+"-joined operand or ";"-joined lock strings, "cores halted" is the instruction's "halts"),
# the layer kind lives in its geometry, and the header carries "provenance"; 7: layers carry
# in_zero_frac, out_zero_frac and compressed (DMA activation zero compression); 8: an output
# TensorSlice's c_stride (a channel shuffle's copy layers write every groups-th channel); 9: a
# double-buffered weight buffer: LOADWM / COMP name their half as core.w@OFFSET, with per-step
# locks core.w0 / core.w1 (Lock.per "step"), and such a LOADWM does not halt; 10: an avgpool's
# loops n_q > 1 are bands of window rows (layout.splits_window), not input-channel chunks


def encode(program: Program) -> bytes:
    """The ``.npz`` bytes of ``program``."""
    header = {"magic": MAGIC, "version": FORMAT_VERSION, "hw": program.hw.model_dump(mode="json"),
              "graph": program.graph, "quantized": program.quantized,
              "layers": [asdict(r) for r in program.layers], "instrs": [asdict(i) for i in program.instrs],
              "buffers": program.buffers, "ddr": program.ddr, "meta": program.meta,
              "provenance": None if program.provenance is None else program.provenance.to_dict()}
    buf = io.BytesIO()
    arrays = {"header": np.frombuffer(json.dumps(header, default=_json).encode(), np.uint8),
              "weights": program.weights, "per_iter": program.per_iter}
    arrays.update({f"param/{k}": v for k, v in program.params.items()})
    # not savez_compressed: int8 weights do not compress; no pickled arrays, as read_arrays loads
    np.savez(buf, allow_pickle=False, **arrays)
    return buf.getvalue()


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a program file; ``ProgramError`` if missing, not an archive, above the size
    limit (file or unpacked members, checked before reading), truncated or corrupt (the zip CRC of
    each member is checked on read)."""
    if not is_file(path):
        raise ProgramError(f"{clip(str(path), 200)}: no such program file")
    _check_archive(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        raise ProgramError(f"{path}: not a readable tilesparse program (truncated or corrupt: {e})") from None


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"


def _check_archive(path: Path) -> None:
    """A zip archive (what ``np.savez`` writes) within ``MAX_PROGRAM_FILE_BYTES``, on disk and
    unpacked (a small file of compressed members cannot unpack to more)."""
    size = path.stat().st_size
    if size > L.MAX_PROGRAM_FILE_BYTES:
        raise ProgramError(f"{path}: " + L.above("file size", f"{size:,}", f"{L.MAX_PROGRAM_FILE_BYTES:,}", " B"))
    if not zipfile.is_zipfile(path):
        with path.open("rb") as f:
            start = f.read(len(_NPY_MAGIC))
        if start.startswith(_ZIP_MAGIC):  # a zip archive cut before its directory
            raise ProgramError(f"{path}: not a readable tilesparse program (truncated or corrupt: no zip directory)")
        what = "a NumPy .npy array" if start == _NPY_MAGIC else "not a zip archive"
        raise ProgramError(f"{path}: not a tilesparse program ({what}; programs are written by `tilesparse compile`)")
    try:
        with zipfile.ZipFile(path) as z:
            unpacked = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ProgramError(f"{path}: not a readable tilesparse program (truncated or corrupt: {e})") from None
    if unpacked > L.MAX_PROGRAM_FILE_BYTES:
        raise ProgramError(f"{path}: " + L.above("unpacked size", f"{unpacked:,}", f"{L.MAX_PROGRAM_FILE_BYTES:,}",
                                                 " B"))


def decode_header(raw: dict[str, np.ndarray], src: str, hw: ArrayConfig | None) -> dict[str, Any]:
    """The header as constructor arguments of ``Program`` (records built and validated, every
    size within ``tilesparse.utils.limits`` before anything is allocated from it)."""
    h = _header(raw, src)
    phw = _array(h, src)
    if hw is not None and phw != hw:
        raise ProgramError(f"{src}: compiled for array {phw.label} ({phw.rows}x{phw.cols}), "
                           f"not for {hw.label} ({hw.rows}x{hw.cols}); recompile for this array")
    for key in ("per_iter", "weights"):
        if key not in raw:
            raise ProgramError(f"{src}: no {key!r} array; not a complete tilesparse program")
    out = {"hw": phw, "graph": _field(h, "graph", src, str), "quantized": _field(h, "quantized", src, bool)}
    layers = _field(h, "layers", src, list)
    out["layers"] = tuple(_decode(_layer, d, f"{src}: layer {i}") for i, d in enumerate(layers))
    instrs = _field(h, "instrs", src, list)
    out["instrs"] = tuple(_decode(_instr, d, f"{src}: instruction #{i}") for i, d in enumerate(instrs))
    buffers, ddr = _field(h, "buffers", src, dict), _field(h, "ddr", src, dict)
    check_tables(buffers, ddr, src)
    check_limits(phw, out["layers"], out["instrs"], raw["per_iter"].size, src)
    out.update(buffers=buffers, ddr=ddr, meta=_field(h, "meta", src, dict),
               provenance=_provenance(h.get("provenance"), src), per_iter=raw["per_iter"], weights=raw["weights"],
               params={k[len("param/"):]: v for k, v in raw.items() if k.startswith("param/")})
    return out


def _header(raw: dict[str, np.ndarray], src: str) -> dict[str, Any]:
    """The header's JSON object, with this tilesparse's magic and format version."""
    if "header" not in raw:
        raise ProgramError(f"{src}: no header; not a tilesparse program")
    try:
        h = json.loads(raw["header"].tobytes().decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: JSON, or a 5000-digit int
        raise ProgramError(f"{src}: corrupt header ({short_repr(str(e), 100)})") from None
    if not isinstance(h, dict) or h.get("magic") != MAGIC:
        got = h.get("magic") if isinstance(h, dict) else h
        raise ProgramError(f"{src}: not a tilesparse program (magic {short_repr(got, 40)})")
    version = h.get("version")
    if type(version) is not int:
        raise ProgramError(f"{src}: header field 'version' is {short_repr(version, 40)} "
                           f"({type(version).__name__}): expected the integer {FORMAT_VERSION}")
    if version != FORMAT_VERSION:
        raise ProgramError(f"{src}: program format version {version}, this tilesparse "
                           f"reads version {FORMAT_VERSION}; recompile it")
    return h


def _array(h: dict[str, Any], src: str) -> ArrayConfig:
    """The header's array description, validated (and within the array limits) like any other."""
    data = _field(h, "hw", src, dict)
    try:
        return validate_model(ArrayConfig, data, source=src)
    except ConfigError as e:
        raise ProgramError(f"{src}: header field hw: " + "; ".join(f"hw.{err}" if ":" in err else err
                                                                     for err in e.errors)) from None


def _provenance(data: Any, src: str) -> Provenance | None:
    """The header's provenance record (None or {} for a program compiled from a graph directly)."""
    return Provenance.from_dict(data, src) if data else None


def _field(h: dict, key: str, src: str, kind: type) -> Any:
    """Header field ``key``, of JSON type ``kind`` (a missing or mistyped field named)."""
    if key not in h:
        raise ProgramError(f"{src}: corrupt header (no {key!r})")
    if not isinstance(h[key], kind):
        raise ProgramError(f"{src}: header field {key!r} is {short_repr(h[key], 40)}: expected a "
                           f"{_JSON_KIND[kind]}; recompile it")
    return h[key]


_JSON_KIND = {str: "string", bool: "boolean", list: "list", dict: "mapping"}


def _decode(fn: Callable[[Any], _R], d: Any, where: str) -> _R:
    try:
        return fn(d)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        what = f"no field {e}" if isinstance(e, KeyError) else str(e)
        raise ProgramError(f"{where}: corrupt record ({clip(what, 200)}); recompile it") from None


def _layer(d: dict) -> LayerRecord:
    rest = {k: v for k, v in d.items() if k not in _TYPED}
    return LayerRecord(
        geometry=LayerGeometry(**d["geometry"]), inputs=tuple(TensorSlice(**x) for x in d["inputs"]),
        output=TensorSlice(**d["output"]), grid=Grid(**d["grid"]), sub=SubVolume(**d["sub"]),
        loops=Loops(**d["loops"]), cores=tuple(CoreWork(**c) for c in d["cores"]),
        chunks=tuple(ChunkRow(**c) for c in d["chunks"]), **rest)


_TYPED = ("geometry", "inputs", "output", "grid", "sub", "loops", "cores", "chunks")


def _instr(d: dict) -> Instr:
    return Instr(**{**d, "src": tuple(Operand(**o) for o in d["src"]), "dst": tuple(Operand(**o) for o in d["dst"]),
                    "acquire": tuple(Lock(**lk) for lk in d["acquire"]),
                    "release": tuple(Lock(**lk) for lk in d["release"])})


def _json(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    return str(x)
