"""The ``Program`` artifact: instructions + packed weights + metadata, in one versioned file.

File format (``Program.save``): a NumPy ``.npz`` archive written atomically, holding
``header`` (UTF-8 JSON: magic, format version, array description, layers, buffers, DDR map,
instructions, metadata), ``weights`` (the DDR weight image, uint8), ``per_iter`` (float64: every
instruction's per-iteration busiest-channel bytes or slowest-core cycles, concatenated; each
instruction holds its offset) and ``param/<node>.<name>`` for per-channel quantization arrays.
The instruction semantics are in docs/program.md.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tilesparse.errors import ProgramError
from tilesparse.hw import ArrayConfig
from tilesparse.utils.atomic import atomic_write_bytes
from tilesparse.utils.config import validate_model

__all__ = ["FORMAT_VERSION", "MAGIC", "Instr", "LayerRecord", "Program"]

MAGIC = "tilesparse-program"
FORMAT_VERSION = 5  # 2: staging locks, copy-layer shifts, meta["input_scale_exp"]; 3: weight pieces;
# 4: ping-pong parity ([i%2]) counts iterations across the steps of a layer; 5: sliding windows
# (loops["slide"]: LOADFM moves only a tile's new columns into the core's input ring)
OPS = ("LOAD", "LOADW", "LOADFM", "LOADWM", "COMP", "WRITEFM", "WRITE")


@dataclass(frozen=True)
class Instr:
    """One instruction; it drives every core (or channel) involved, for ``iters`` iterations.

    ``src``/``dst`` name memories (docs/program.md): ``ddr@ADDR``, ``memtile:BUFFER@OFFSET``,
    ``memtile.wslot<i>``, ``memtile.stage_in``, ``memtile.stage_out``, ``core.in``, ``core.w``,
    ``core.out``. ``nbytes`` is the total moved over all channels and iterations (for COMP: the
    MACs executed). ``offset`` indexes ``Program.per_iter``: ``iters`` values of busiest-channel
    bytes (transfers) or slowest-core cycles (COMP).
    """

    op: str
    layer: int  # index into Program.layers
    step: int  # (s, k, q) step index within the layer
    s: int
    k: int
    q: int
    iters: int
    src: str
    dst: str
    nbytes: int
    offset: int
    acquire: str = ""  # lock(s) taken before the first iteration / each iteration
    release: str = ""


@dataclass
class LayerRecord:
    """A layer as executed: its spec, partition, buffers, weight chunks and quantization attrs."""

    name: str
    kind: str
    geometry: dict[str, Any]  # ci, hi, wi, co, ho, wo, kernel, stride, padding, dilation, groups, block
    inputs: list[dict[str, Any]]  # per input: buffer, c_total, c_offset
    output: dict[str, Any]  # buffer, c_total, c_offset
    grid: dict[str, Any]
    sub: dict[str, int]
    loops: dict[str, int]  # n_s, n_k, n_q, tiles_per_group, n_tiles, slide (0/1)
    cores: list[list[int]]  # row, col, oc0, oc1, h0, h1, w0, w1, oc_group, region
    chunks: list[list[int]]  # oc_group, k, q, oc0, oc1, cb0, cb1, ddr_addr, nbytes, with_bias
    attrs: dict[str, Any] = field(default_factory=dict)  # quantization attrs of the node
    dense_weight_bytes: int = 0
    packed_weight_bytes: int = 0  # bitmap + kept blocks, each distinct chunk once
    bias_bytes: int = 0
    kept_macs: int = 0
    macs: int = 0
    fused_add: str = ""  # an add executed by this conv's COMP (docs/program.md, "fused add")
    residual: str = ""  # its other operand (node name; its buffer is the last entry of inputs)


@dataclass
class Program:
    hw: ArrayConfig
    graph: str
    quantized: bool
    layers: list[LayerRecord]
    instrs: list[Instr]
    per_iter: np.ndarray
    weights: np.ndarray  # uint8 DDR weight image
    buffers: dict[str, dict[str, Any]]  # name -> memory, offset, part_bytes, shape (C, H, W)
    ddr: dict[str, list[int]]  # region -> [addr, nbytes]
    params: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def iter_values(self, ins: Instr) -> np.ndarray:
        return self.per_iter[ins.offset:ins.offset + ins.iters]

    # ---- serialization -------------------------------------------------------------------
    def _header(self) -> dict[str, Any]:
        return {"magic": MAGIC, "version": FORMAT_VERSION, "hw": self.hw.model_dump(mode="json"),
                "graph": self.graph, "quantized": self.quantized,
                "layers": [asdict(r) for r in self.layers], "instrs": [asdict(i) for i in self.instrs],
                "buffers": self.buffers, "ddr": self.ddr, "meta": self.meta}

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays = {"header": np.frombuffer(json.dumps(self._header(), default=_json).encode(), np.uint8),
                  "weights": self.weights, "per_iter": self.per_iter}
        arrays.update({f"param/{k}": v for k, v in self.params.items()})
        np.savez(buf, **arrays)  # type: ignore[arg-type]  # int8 weights do not compress
        return buf.getvalue()

    def save(self, path: str | Path) -> Path:
        """Write the program to ``path`` atomically (never a half-written file)."""
        return atomic_write_bytes(path, self.to_bytes())

    @classmethod
    def load(cls, path: str | Path, hw: ArrayConfig | None = None) -> Program:
        """Read a program; ``ProgramError`` if the file is missing, truncated, of another format
        version, or (when ``hw`` is given) compiled for another array."""
        path = Path(path)
        if not path.is_file():
            raise ProgramError(f"{path}: no such program file")
        try:
            with np.load(path, allow_pickle=False) as z:
                raw = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
            raise ProgramError(f"{path}: not a readable tilesparse program (truncated or corrupt: {e})") from None
        return cls._from_arrays(raw, str(path), hw)

    @classmethod
    def _from_arrays(cls, raw: dict[str, np.ndarray], src: str, hw: ArrayConfig | None) -> Program:
        if "header" not in raw:
            raise ProgramError(f"{src}: no header; not a tilesparse program")
        try:
            h = json.loads(raw["header"].tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ProgramError(f"{src}: corrupt header ({e})") from None
        if h.get("magic") != MAGIC:
            raise ProgramError(f"{src}: not a tilesparse program (magic {h.get('magic')!r})")
        if h.get("version") != FORMAT_VERSION:
            raise ProgramError(f"{src}: program format version {h.get('version')}, this tilesparse "
                               f"reads version {FORMAT_VERSION}; recompile it")
        phw = validate_model(ArrayConfig, h["hw"], source=f"{src} (array)")
        if hw is not None and phw != hw:
            raise ProgramError(f"{src}: compiled for array {phw.label} ({phw.rows}x{phw.cols}), "
                               f"not for {hw.label} ({hw.rows}x{hw.cols}); recompile for this array")
        params = {k[len("param/"):]: v for k, v in raw.items() if k.startswith("param/")}
        return cls(phw, h["graph"], h["quantized"], [LayerRecord(**r) for r in h["layers"]],
                   [Instr(**i) for i in h["instrs"]], raw["per_iter"], raw["weights"],
                   h["buffers"], h["ddr"], params, h["meta"])

    # ---- reading -------------------------------------------------------------------------
    def listing(self, max_instrs_per_layer: int | None = None) -> str:
        """A readable listing: per layer its partition and buffers, then its instructions."""
        lines = [(f"; program for {self.graph} on {self.hw.label} ({self.hw.rows}x{self.hw.cols}), "
                  f"{len(self.layers)} layers, {len(self.instrs)} instructions, "
                  f"weights {self.weights.nbytes} B")]
        by_layer: dict[int, list[Instr]] = {}
        for ins in self.instrs:
            by_layer.setdefault(ins.layer, []).append(ins)
        for li, rec in enumerate(self.layers):
            g = rec.geometry
            lines.append(f"\n{rec.name}: {rec.kind} {g['ci']}x{g['hi']}x{g['wi']} -> {g['co']}x{g['ho']}x{g['wo']}"
                         f" kernel {g['kernel']} stride {g['stride']}  grid {rec.grid}  sub {rec.sub}"
                         f"  loops {rec.loops}")
            lines.append(f"  in {rec.inputs}  out {rec.output}")
            items = by_layer.get(li, [])
            shown = items if max_instrs_per_layer is None else items[:max_instrs_per_layer]
            for ins in shown:
                lines.append(f"  {ins.op:<7} s{ins.s} k{ins.k} q{ins.q} x{ins.iters:<4} {ins.src} -> {ins.dst}"
                             f"  {ins.nbytes} {'MAC' if ins.op == 'COMP' else 'B'}"
                             f"  [{ins.acquire} | {ins.release}]")
            if len(shown) < len(items):
                lines.append(f"  ... {len(items) - len(shown)} more")
        return "\n".join(lines)


def _json(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, (set, frozenset)):
        return sorted(x)
    return str(x)
