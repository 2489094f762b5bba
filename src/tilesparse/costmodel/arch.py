"""Accelerator architecture for the cost model: a memory hierarchy over a MAC array.

Levels are listed innermost first (the level that feeds the MACs) to outermost (main memory, which
holds every tensor). ``fanout`` of a level is the number of child instances each of its instances
feeds (the level below, or MAC units for level 0); instances of a level are the product of the
fan-outs above it. Units are in the field names.

Two presets: ``aie2`` (derived from :func:`tilesparse.hw.load_array`, so it follows the same array
description the compiler uses) and ``eyeriss`` (a generic row-stationary-style PE array, YAML).
"""

from __future__ import annotations

from importlib import resources
from math import prod
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tilesparse.errors import ConfigError
from tilesparse.utils.config import (
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    StrictModel,
    is_file,
    load_yaml_model,
    validate_model,
)

__all__ = ["Architecture", "Compute", "Level", "aie2_arch", "list_arch_presets", "load_arch"]

TensorName = Literal["W", "I", "O"]


_Strict = StrictModel  # unknown fields refused, finite floats, no booleans for numbers


class Level(_Strict):
    """One storage level (per instance)."""

    name: str
    capacity_bytes: PositiveFloat | None = None  # None: unbounded (main memory)
    # Optional per-tensor partitions (e.g. AIE2 core: separate input/output/weight buffers).
    tensor_capacity_bytes: dict[TensorName, PositiveFloat] = Field(default_factory=dict)
    read_bytes_per_cycle: PositiveFloat | None = None  # None: never the bottleneck
    write_bytes_per_cycle: PositiveFloat | None = None
    rw_bytes_per_cycle: PositiveFloat | None = None  # one port shared by reads and writes
    read_pj_per_byte: NonNegativeFloat = 0.0
    write_pj_per_byte: NonNegativeFloat = 0.0
    fanout: PositiveInt = 1
    holds: tuple[TensorName, ...] = ("W", "I", "O")


class Compute(_Strict):
    """The MAC units under level 0 (``levels[0].fanout`` units per level-0 instance)."""

    macs_per_cycle: PositiveFloat = 1.0  # per MAC unit (a vector unit counts its lanes here)
    pj_per_mac: NonNegativeFloat = 1.0
    gated_pj_per_mac: NonNegativeFloat = 0.0  # a gated (zero-operand) MAC still costs this
    # Fixed cycles per level-0 tile (one kernel call per tile on a core: loop prologue, locks).
    overhead_cycles_per_tile: NonNegativeFloat = 0.0


class Architecture(_Strict):
    name: str = "arch"
    clock_hz: PositiveFloat = 1.0e9
    compute: Compute = Compute()
    levels: tuple[Level, ...]

    @model_validator(mode="after")
    def _check(self) -> Architecture:
        errs = []
        if not self.levels:
            errs.append("levels: at least one storage level is needed")
        else:
            top = self.levels[-1]
            if set(top.holds) != {"W", "I", "O"}:
                errs.append(f"levels.{len(self.levels) - 1} ({top.name}): the outermost level must "
                            f"hold W, I and O, holds {list(top.holds)}")
        names = [lv.name for lv in self.levels]
        if len(set(names)) != len(names):
            errs.append(f"levels: names must be unique, got {names}")
        if errs:
            raise ValueError("; ".join(errs))
        return self

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def instances(self, i: int) -> int:
        """Instances of level ``i`` (the MAC units for ``i == -1``)."""
        return prod(lv.fanout for lv in self.levels[i + 1:])

    @property
    def mac_units(self) -> int:
        return self.instances(-1)

    @property
    def peak_macs_per_cycle(self) -> float:
        return self.mac_units * self.compute.macs_per_cycle

    def describe(self) -> str:
        rows = [f"{self.name}: {self.mac_units} MAC units x {self.compute.macs_per_cycle:g} MACs/cycle"]
        for i, lv in reversed(list(enumerate(self.levels))):
            cap = "unbounded" if lv.capacity_bytes is None else f"{lv.capacity_bytes:,.0f} B"
            rows.append(f"  L{i} {lv.name}: {self.instances(i)} x {cap}, fanout {lv.fanout}, "
                        f"holds {''.join(lv.holds)}")
        return "\n".join(rows)


# --- AIE2, derived from the hw description -------------------------------------------------------
# Energies are NOT in the hw description (the paper gives none): these are assumptions of the
# right order for a 7 nm-class part, used only to rank mappings by energy / EDP.
AIE2_PJ_PER_MAC = 0.1  # int8 MAC in a 256-lane vector unit
AIE2_CORE_PJ_PER_BYTE = 0.5  # 64 KB core data memory (8 KB banks)
AIE2_MEMTILE_PJ_PER_BYTE = 2.0  # 512 KB MemTile plus the stream switch hop
AIE2_DDR_PJ_PER_BYTE = 80.0  # LPDDR5-class off-chip access (~10 pJ/bit)
# The wbs paper's data movers: two DDR->MemTile channels per column (activations and weights in
# parallel) and two MemTile->core channels (activation broadcast down a column, weights along a row).
AIE2_CHANNELS = 2
# Core buffers are ping-pong: a tile may use half of the input and output buffer; the weight
# buffer is single (LOADWM halts the core while it refills).
PING_PONG = 2


def aie2_arch(hw: object = "4x4") -> Architecture:
    """Cost-model view of an AIE2 array: core memory (one per core), MemTile (one per column), DDR.

    Capacities and bandwidths come from ``tilesparse.hw.load_array(hw)``; spatial fan-out is the
    array shape (DDR -> ``cols`` columns -> ``rows`` cores per column)."""
    from tilesparse.hw import load_array

    a = load_array(hw)  # type: ignore[arg-type]
    clk = a.clock_hz
    core = Level(
        name="core", capacity_bytes=a.core.data_memory_bytes,
        tensor_capacity_bytes={"I": a.core.input_buffer_bytes / PING_PONG,
                               "O": a.core.output_buffer_bytes / PING_PONG,
                               "W": a.core.weight_buffer_bytes},
        # The vector unit's load/store path is sized for its MAC rate, and the core's fills and
        # write-backs are already limited by the MemTile side of the stream (its read/write bw).
        read_bytes_per_cycle=None, write_bytes_per_cycle=None,
        read_pj_per_byte=AIE2_CORE_PJ_PER_BYTE, write_pj_per_byte=AIE2_CORE_PJ_PER_BYTE, fanout=1)
    memtile = Level(
        name="memtile", capacity_bytes=a.memtile.bytes,
        read_bytes_per_cycle=AIE2_CHANNELS * a.links.memtile_to_core_bytes_per_s / clk,
        write_bytes_per_cycle=(AIE2_CHANNELS * a.links.ddr_to_memtile_bytes_per_s
                               + a.links.memtile_to_core_bytes_per_s) / clk,
        read_pj_per_byte=AIE2_MEMTILE_PJ_PER_BYTE, write_pj_per_byte=AIE2_MEMTILE_PJ_PER_BYTE,
        fanout=a.rows)
    ddr = Level(
        name="ddr", capacity_bytes=a.ddr.bytes,
        read_bytes_per_cycle=a.cols * AIE2_CHANNELS * a.links.ddr_to_memtile_bytes_per_s / clk,
        write_bytes_per_cycle=a.cols * a.links.memtile_to_ddr_bytes_per_s / clk,
        read_pj_per_byte=AIE2_DDR_PJ_PER_BYTE, write_pj_per_byte=AIE2_DDR_PJ_PER_BYTE,
        fanout=a.cols)
    return Architecture(
        name=f"aie2-{a.rows}x{a.cols}", clock_hz=clk,
        compute=Compute(macs_per_cycle=a.macs_per_cycle("int8"), pj_per_mac=AIE2_PJ_PER_MAC,
                        overhead_cycles_per_tile=a.core.kernel_call_overhead_cycles),
        levels=(core, memtile, ddr))


def _preset_dir() -> Path:
    return Path(str(resources.files("tilesparse.costmodel") / "presets"))


def list_arch_presets() -> list[str]:
    return sorted(["aie2", *(p.stem for p in _preset_dir().glob("*.yaml"))])


def load_arch(spec: str | Path | Architecture = "aie2") -> Architecture:
    """``Architecture`` from a preset name (``aie2``, ``aie2:RxC`` or any hw spec after the colon,
    ``eyeriss``), a YAML file, or an ``Architecture`` (returned as is)."""
    if isinstance(spec, Architecture):
        return spec
    text = str(spec)
    path = Path(text)
    if path.suffix in {".yaml", ".yml"} or is_file(path):
        return load_yaml_model(Architecture, path)
    base, _, hw = text.partition(":")
    if base.lower() == "aie2":
        return aie2_arch(hw or "4x4")
    preset = _preset_dir() / f"{base.lower()}.yaml"
    if is_file(preset):
        return load_yaml_model(Architecture, preset)
    raise ConfigError(text, [f"unknown architecture {text!r}: expected a YAML file or one of "
                             f"{', '.join(list_arch_presets())} (aie2 accepts aie2:RxC)"])


def arch_from_dict(data: dict, source: str = "<dict>") -> Architecture:
    return validate_model(Architecture, data, source)
