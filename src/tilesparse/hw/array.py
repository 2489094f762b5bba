"""The AIE2 array description: schema, semantic checks, presets.

Units are in the field names (bytes, bytes_per_s, cycles, hz). Nothing else in tilesparse holds a
machine number: passes and models read them from an ``ArrayConfig``. Every field is bounded
(``tilesparse.utils.limits``, docs/limits.md: at most 64 x 64 tiles, memories that the simulator can
hold, a finite clock), so a description that validates can be compiled and simulated.
"""

from __future__ import annotations

import re
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from tilesparse.errors import ConfigError
from tilesparse.utils import limits as L
from tilesparse.utils.config import (
    Int,
    PositiveFloat,
    PositiveInt,
    StrictModel,
    at_most,
    clip,
    is_file,
    load_yaml,
    load_yaml_model,
    validate_model,
)

DType = Literal["int8", "int16", "int32", "int8xint4"]
_Strict = StrictModel
CoreBytes = Annotated[PositiveInt, at_most(L.MAX_CORE_MEMORY_BYTES, " B")]


LUT_MIN_TABLE_BYTES = 256  # an int8 → int8 table: one byte per int8 input


def _int8_only() -> dict[DType, int]:
    return {"int8": 256}


class SparseMatmulConfig(_Strict):
    """The core's sparse matrix multiply (UG1603 "Sparse Matrix Multiplication"; UG1583
    ``mul_4x16_16x8(v64int8, v128int8_sparse)``): in C = A·B the weight operand B may be sparse,
    with at most ``max_nonzero_per_group`` non-zero bytes in every ``group_bytes`` consecutive
    bytes; B is stored in ``chunk_bytes`` chunks, each a ``mask_bytes`` mask (one bit per byte of
    the chunk) followed by exactly ``chunk_bytes · max_nonzero_per_group / group_bytes`` payload
    bytes (the sparsity must be exactly 50 %: extra zeros stay in the payload). ``shape``: the
    dense-equivalent (M, K, N) per cycle with B sparse — twice the dense K. ``enabled: false``
    (or no ``sparse_matmul`` entry in a description that sets ``enabled: false``) compiles every
    conv in the block format, as before."""

    enabled: bool = True
    shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (4, 16, 8)
    group_bytes: Annotated[PositiveInt, at_most(64)] = 4
    max_nonzero_per_group: PositiveInt = 2
    chunk_bytes: Annotated[PositiveInt, at_most(4096, " B")] = 32
    mask_bytes: Annotated[PositiveInt, at_most(512, " B")] = 4

    @model_validator(mode="after")
    def _consistent(self) -> SparseMatmulConfig:
        g, nz, c = self.group_bytes, self.max_nonzero_per_group, self.chunk_bytes
        errs = []
        if nz >= g:
            errs.append(f"max_nonzero_per_group {nz} must be below group_bytes {g}")
        if c % g or c % 4:
            errs.append(f"chunk_bytes {c} must be a multiple of group_bytes {g} and of 4 (32-bit words)")
        if self.mask_bytes * 8 != c:
            errs.append(f"mask_bytes {self.mask_bytes} must hold one bit per byte of a {c}-byte chunk "
                        f"({c // 8} B)")
        if errs:
            raise ValueError("; ".join(errs))
        return self

    @property
    def payload_bytes(self) -> int:
        """Stored weight bytes per chunk (exactly the rule's density: 16 of 32 for 2 of every 4)."""
        return self.chunk_bytes * self.max_nonzero_per_group // self.group_bytes

    @property
    def packed_chunk_bytes(self) -> int:
        """Bytes of one compressed chunk: mask + payload (20 for the AIE-ML's 256-bit chunks)."""
        return self.mask_bytes + self.payload_bytes


class DmaCompressionConfig(_Strict):
    """Zero compression in the memory-tile and tile DMAs (AM020 "Sparsity"): zero bytes of a
    buffer are not sent on the streams when its buffer descriptor sets the compression bit.
    ``enabled``: the compiler may compress a layer's LOADFM / WRITEFM (``program.zero_compress``);
    the default (a description without the block) is off, the shipped AIE2 description turns it on."""

    enabled: bool = False
    chunk_bytes: Annotated[PositiveInt, at_most(4096, " B")] = 32
    mask_bytes: Annotated[PositiveInt, at_most(512, " B")] = 4
    word_bytes: Annotated[PositiveInt, at_most(64, " B")] = 4  # compressed data padded to 32-bit words


class CoreConfig(_Strict):
    macs_per_cycle: dict[DType, PositiveInt] = Field(default_factory=_int8_only)
    matmul_shape: tuple[PositiveInt, PositiveInt, PositiveInt] = (4, 8, 8)
    kernel_call_overhead_cycles: Int = Field(64, ge=0)
    data_memory_bytes: CoreBytes = 65536
    bank_bytes: CoreBytes = 8192
    input_buffer_bytes: CoreBytes = 16384
    output_buffer_bytes: CoreBytes = 16384
    weight_buffer_bytes: CoreBytes = 16384
    # Two halves of the weight buffer (docs/time-model.md, rule 5): a layer whose every weight chunk
    # fits half of it loads step j+1's chunk into one half while the cores compute step j from the
    # other, instead of halting them. Off (the default of a description without the key) halts as
    # before; the shipped AIE2 description turns it on. Used only where the rule profile allows
    # the mechanism "weight_double_buffer".
    weight_double_buffer: bool = False
    sparse_matmul: SparseMatmulConfig = SparseMatmulConfig()
    # Element-wise lookup tables (op lut): table entries read per cycle, and the data memory one
    # table takes in the core as laid out for those parallel reads (it lives in the weight buffer:
    # a compile with a lut layer refuses a weight buffer smaller than this).
    lut_lookups_per_cycle: PositiveInt = 4
    lut_table_bytes: CoreBytes = 1024

    @model_validator(mode="after")
    def _fits(self) -> CoreConfig:
        used = self.input_buffer_bytes + self.output_buffer_bytes + self.weight_buffer_bytes
        if used > self.data_memory_bytes:
            raise ValueError(
                f"input+output+weight buffers ({used} B) exceed data_memory_bytes "
                f"({self.data_memory_bytes} B)"
            )
        if self.lut_table_bytes < LUT_MIN_TABLE_BYTES:
            raise ValueError(
                f"lut_table_bytes {self.lut_table_bytes} B cannot hold the {LUT_MIN_TABLE_BYTES} entries of "
                f"an int8 table"
            )
        m, k, n = self.matmul_shape
        if "int8" in self.macs_per_cycle and m * k * n != self.macs_per_cycle["int8"]:
            raise ValueError(
                f"matmul_shape {m}x{k}x{n} = {m * k * n} MACs/cycle does not match "
                f"macs_per_cycle.int8 = {self.macs_per_cycle['int8']}"
            )
        sm = self.sparse_matmul
        if sm.enabled and (sm.shape[0] != m or sm.shape[2] != n or sm.shape[1] < k):
            raise ValueError(f"sparse_matmul.shape {'x'.join(map(str, sm.shape))} must keep matmul_shape's M and N "
                             f"({m}, {n}) and a K of at least {k}")
        return self


class MemTileConfig(_Strict):
    bytes: Annotated[PositiveInt, at_most(L.MAX_MEMTILE_BYTES, " B")] = 524288
    # Each weight slot is split into this many pieces, each with its own lock pair, so LOADWM
    # copies piece i into the cores while LOADW still fills the later ones (weight cut-through).
    # 2 slots x pieces x 2 locks must fit the MemTile's 64 locks, beside the activation locks.
    weight_slot_pieces: Int = Field(4, ge=1, le=8)
    # Cross-layer weight prefetch (docs/time-model.md, rule 7): while layer k runs, LOADW brings the
    # first weight step of layer k+1 into MemTile space that no activation live in layers k and
    # k+1 uses, so that layer starts with its first weights on chip. Off (the default of a
    # description without the key) keeps layers apart as before; the shipped AIE2 description turns
    # it on. Used only where the rule profile allows the mechanism "weight_prefetch".
    weight_prefetch: bool = False


class DdrConfig(_Strict):
    bytes: Annotated[PositiveInt, at_most(L.MAX_DDR_BYTES, " B")] = 8 * 1024**3


class LinkConfig(_Strict):
    ddr_to_memtile_bytes_per_s: PositiveFloat = 4.0e9
    memtile_to_ddr_bytes_per_s: PositiveFloat = 8.0e9
    memtile_to_core_bytes_per_s: PositiveFloat = 4.0e9


class ArrayConfig(_Strict):
    """An AIE2 array: ``rows`` compute tiles in each of ``cols`` columns, one MemTile per column."""

    name: str = Field("aie2", min_length=1, max_length=L.MAX_NAME_CHARS)
    rows: Annotated[PositiveInt, at_most(L.MAX_ROWS)] = 4
    cols: Annotated[PositiveInt, at_most(L.MAX_COLS)] = 4
    clock_hz: Annotated[PositiveFloat, at_most(L.MAX_CLOCK_HZ, " Hz")] = 1.0e9
    core: CoreConfig = CoreConfig()
    memtile: MemTileConfig = MemTileConfig()
    ddr: DdrConfig = DdrConfig()
    links: LinkConfig = LinkConfig()
    dma_compression: DmaCompressionConfig = DmaCompressionConfig()
    # The timing rule profile (tilesparse.hw.profiles) a verb uses when not given --rules.
    rules: Literal["tilesparse", "paper", "measured"] = "tilesparse"

    @model_validator(mode="before")
    @classmethod
    def _shape_first(cls, data: Any) -> Any:
        """An array above the shape limits is one error naming both numbers, not one per field."""
        rows, cols = (data.get("rows"), data.get("cols")) if isinstance(data, dict) else (None, None)
        if type(rows) is int and type(cols) is int and (rows > L.MAX_ROWS or cols > L.MAX_COLS):
            msg = L.above("rows x cols", f"{rows}x{cols}", f"{L.MAX_ROWS}x{L.MAX_COLS}")
            raise PydanticCustomError("limit", "{msg}", {"msg": msg})
        return data

    @model_validator(mode="after")
    def _simulable(self) -> ArrayConfig:
        """Every on-chip byte must fit the simulator's memory (``limits.MAX_ONCHIP_BYTES``)."""
        onchip = self.rows * self.cols * self.core.data_memory_bytes + self.cols * self.memtile.bytes
        if onchip > L.MAX_ONCHIP_BYTES:
            raise ValueError(L.above("rows x cols x core.data_memory_bytes + cols x memtile.bytes =",
                                     f"{onchip:,}", f"{L.MAX_ONCHIP_BYTES:,}", " B"))
        return self

    @property
    def n_cores(self) -> int:
        return self.rows * self.cols

    @property
    def label(self) -> str:
        return f"{self.name}-{self.rows}x{self.cols}"

    def macs_per_cycle(self, dtype: DType = "int8") -> int:
        try:
            return self.core.macs_per_cycle[dtype]
        except KeyError:
            raise ConfigError(self.label, [f"core.macs_per_cycle has no entry for {dtype}"]) from None

    @cached_property
    def peak_macs_per_s(self) -> float:
        """int8 MACs per second of the whole array at peak."""
        return self.n_cores * self.macs_per_cycle("int8") * self.clock_hz

    def cycles_to_s(self, cycles: float) -> float:
        return cycles / self.clock_hz

    def with_shape(self, rows: int, cols: int, source: str | None = None) -> ArrayConfig:
        """This description with ``rows`` x ``cols``; an error names ``source`` (default: the label)."""
        return validate_model(
            ArrayConfig, {**self.model_dump(), "rows": rows, "cols": cols}, source=source or self.label
        )


_SHAPE = re.compile(r"^(?:(?P<base>[a-z][a-z0-9_]*)-)?(?P<rows>\d+)x(?P<cols>\d+)$")
_MAX_DIGITS = 9
SHOWN_CHARS = 200  # an --array value longer than this is cut in messages (array_arg knows)
_NAMED = {
    # Real parts, usable compute tiles as rows x cols (wbs-paper.md, "Real parts").
    "phoenix": ("aie2", 4, 4),
    "strix": ("aie2", 4, 8),
}


def _preset_file(base: str) -> Path:
    ref = resources.files("tilesparse.hw") / "presets" / f"{base}.yaml"
    return Path(str(ref))


def list_presets() -> list[str]:
    """Base descriptions shipped with the package, and named parts."""
    folder = Path(str(resources.files("tilesparse.hw") / "presets"))
    return sorted([p.stem for p in folder.glob("*.yaml")] + list(_NAMED))


def load_array(spec: str | Path | ArrayConfig = "4x4") -> ArrayConfig:
    """Load an array description.

    ``spec`` is an ``ArrayConfig``; a YAML file path; a shape ``"RxC"`` (rows x columns) on the
    default AIE2 description; ``"base-RxC"`` on a shipped base; or a named part (``phoenix``,
    ``strix``).

    >>> load_array("8x2").label  # rows x columns of the default base
    'aie2-8x2'
    >>> a = load_array("strix")  # a named part: a base and its shape
    >>> a.label, a.n_cores
    ('aie2-4x8', 32)
    """
    if isinstance(spec, ArrayConfig):
        return spec
    text = str(spec)
    path = Path(text)
    if path.suffix in {".yaml", ".yml"} or is_file(path):
        return load_yaml_model(ArrayConfig, path)
    key, shown = text.strip().lower(), clip(text, SHOWN_CHARS)  # a name echoed is never a huge line
    if key in _NAMED:
        base, rows, cols = _NAMED[key]
        return _load_base(base, shown).with_shape(rows, cols, shown)
    m = _SHAPE.match(key)
    if m is None:
        if is_file(_preset_file(key)):
            return _load_base(key, shown)
        raise ConfigError(shown, [f"unknown array {shown!r}: expected 'RxC' (e.g. 4x4, 5x7), 'base-RxC' "
                                  f"(e.g. aie2-8x2), a YAML file, or one of {', '.join(list_presets())}"])
    if max(len(m["rows"]), len(m["cols"])) > _MAX_DIGITS:  # no Python int from thousands of digits
        raise ConfigError(shown, [L.above("rows x cols", f"of more than {_MAX_DIGITS} digits",
                                          f"{L.MAX_ROWS}x{L.MAX_COLS}")])
    rows, cols = int(m["rows"]), int(m["cols"])
    if rows < 1 or cols < 1:
        raise ConfigError(shown, [f"array shape must be at least 1x1, got {rows}x{cols}"])
    return _load_base(m["base"] or "aie2", shown).with_shape(rows, cols, shown)


def _load_base(base: str, asked: str) -> ArrayConfig:
    path = _preset_file(base)
    if not is_file(path):
        raise ConfigError(asked, [f"unknown base description {base!r}; shipped: {list_presets()}"])
    return validate_model(ArrayConfig, load_yaml(path), source=path.name)
