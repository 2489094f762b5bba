"""Rules 1 and 2 of the time model: what a transfer or a COMP iteration costs, and the engine bound.

1. **Transfers**: time = bytes on the busiest channel / that channel's bandwidth, from ``hw.links``:
   LOAD and LOADW at ``ddr_to_memtile_bytes_per_s`` (activations and weights on separate channels of
   each column), WRITE at ``memtile_to_ddr_bytes_per_s``, LOADFM / LOADWM / WRITEFM at
   ``memtile_to_core_bytes_per_s`` (one channel per column for activations in and out, one per row
   for weights).
2. **COMP**: cycles of the slowest core / ``clock_hz``. A core's cycles for a tile are
   ``ceil(positions / M) × Σ_slabs ceil(kept input channels / K) × taps + overhead`` with
   ``(M, K, N) = hw.core.matmul_shape`` (slabs of N output channels) and the per-call
   ``hw.core.kernel_call_overhead_cycles``: skipped blocks cost nothing, padding to the matmul shape
   is paid per tap (a K vector holds channels of one tap: 3 channels cost as 8; docs/time-model.md,
   "conv1 padding"), and no core ever exceeds ``M·K·N`` MACs per cycle. Pools, adds and copies run
   one element operation per MAC slot (``macs_per_cycle`` per cycle); a lookup table (``lut``) reads
   ``hw.core.lut_lookups_per_cycle`` entries per cycle (``comp_cycles``).
   **Sparse weights** (``matmul_shape(hw, sparse=True)``): a conv whose weights are packed in the
   sparse multiply's masked format runs at ``hw.core.sparse_matmul.shape`` instead — the same M and
   N, K twice the dense one (UG1583 ``mul_4x16_16x8`` with a ``v128int8_sparse`` B), so the same
   formula with K = 16 dense-equivalent input values per cycle.

The compiler counts the bytes and the matmul steps (``compiler.steps``); this module turns them
into cycles and seconds, for the compiler's search and the estimator alike.
"""

from __future__ import annotations

import numpy as np

from tilesparse.hw import ArrayConfig, RuleProfile, get_profile

__all__ = [
    "part_matmul_shapes",
    "parts_lower_rate",
    "PIPE_OPS",
    "TRANSFER_OPS",
    "WEIGHT_HALVES",
    "WEIGHT_SLOTS",
    "bandwidth",
    "comp_cycles",
    "comp_s",
    "element_cycles",
    "lookup_cycles",
    "engine_bound_s",
    "matmul_shape",
    "peak_macs_per_cycle",
    "profile_of",
    "stage_seconds",
    "transfer_s",
    "weight_double_buffer_on",
]

TRANSFER_OPS = ("LOAD", "LOADW", "LOADFM", "LOADWM", "WRITEFM", "WRITE")
PIPE_OPS = ("LOAD", "LOADFM", "COMP", "WRITEFM", "WRITE")  # the order of an iteration's stages
WEIGHT_SLOTS = 2  # MemTile weight staging is double-buffered
WEIGHT_HALVES = 2  # a double-buffered core weight buffer: a chunk must fit one of its two halves


def bandwidth(op: str, hw: ArrayConfig) -> float:
    """Bytes per second of one channel used by transfer instruction ``op``."""
    links = hw.links
    return {
        "LOAD": links.ddr_to_memtile_bytes_per_s,
        "LOADW": links.ddr_to_memtile_bytes_per_s,
        "WRITE": links.memtile_to_ddr_bytes_per_s,
        "LOADFM": links.memtile_to_core_bytes_per_s,
        "LOADWM": links.memtile_to_core_bytes_per_s,
        "WRITEFM": links.memtile_to_core_bytes_per_s,
    }[op]


def transfer_s(op: str, nbytes: float | np.ndarray, hw: ArrayConfig) -> np.ndarray:
    """Rule 1: seconds to move ``nbytes`` on the busiest channel of ``op``."""
    return np.asarray(nbytes, dtype=np.float64) / bandwidth(op, hw)


def profile_of(hw: ArrayConfig, profile: RuleProfile | None = None) -> RuleProfile:
    """``profile``, or the one the array description names (``hw.rules``, tilesparse by default)."""
    return profile if profile is not None else get_profile(hw.rules)


def weight_double_buffer_on(hw: ArrayConfig, profile: RuleProfile | None = None) -> bool:
    """Whether the compiler may double-buffer the core weight buffer (rule 5's exception): the
    array's ``core.weight_double_buffer`` flag and the profile's mechanism ``weight_double_buffer``
    (the ``paper`` profile names none)."""
    return hw.core.weight_double_buffer and profile_of(hw, profile).allows("weight_double_buffer")


def comp_s(cycles: float | np.ndarray, hw: ArrayConfig, profile: RuleProfile | None = None) -> np.ndarray:
    """Rule 2: seconds of ``cycles`` on the slowest core (at the profile's measured kernel
    efficiency: 1 but under ``measured``; default profile: ``hw.rules``)."""
    s = np.asarray(cycles, dtype=np.float64) / hw.clock_hz
    eff = profile_of(hw, profile).measured.kernel_efficiency
    return s if eff == 1.0 else s / eff


def stage_seconds(op: str, per_iter: np.ndarray, hw: ArrayConfig, profile: RuleProfile | None = None) -> np.ndarray:
    """Seconds of pipeline stage ``op`` per iteration, from its bytes (transfers) or cycles (COMP)."""
    return comp_s(per_iter, hw, profile) if op == "COMP" else transfer_s(op, per_iter, hw)


def matmul_shape(hw: ArrayConfig, sparse: bool = False) -> tuple[int, int, int]:
    """Rule 2's (M, K, N) for a conv: the dense int8 MMUL, or — for weights in the masked format
    (``sparse``) on an array whose ``core.sparse_matmul`` is enabled — the sparse multiply's
    dense-equivalent shape (K twice the dense one on AIE-ML)."""
    sm = hw.core.sparse_matmul
    if sparse:
        if not sm.enabled:
            raise ValueError(f"{hw.label}: weights in the masked format need core.sparse_matmul enabled")
        return sm.shape
    return hw.core.matmul_shape


def part_matmul_shapes(hw: ArrayConfig, weight_format: str) -> tuple[tuple[int, int, int], ...]:
    """Rule 2's (M, K, N) per weight part a COMP multiplies: one for ``block`` (the dense MMUL) and
    ``masked`` (the sparse multiply's), two for ``parts`` (an SDQ layer: its masked int8 part at the
    sparse multiply's shape, then its int4 part at the int8 x int4 rate — K scaled by
    ``macs_per_cycle("int8xint4") / macs_per_cycle("int8")``, 16 on AIE-ML, AM020 "Summary")."""
    if weight_format != "parts":
        return (matmul_shape(hw, weight_format == "masked"),)
    m, k, n = hw.core.matmul_shape
    k4 = k * hw.macs_per_cycle("int8xint4") // hw.macs_per_cycle("int8")
    return matmul_shape(hw, True), (m, k4, n)


def parts_lower_rate(hw: ArrayConfig, weight_format: str) -> float:
    """MACs per cycle per core of one kept MAC of every part, each part at its peak: the harmonic
    combination 1 / sum(1 / rate_part) (the dense-equivalent rate of a ``parts`` layer's work)."""
    return 1.0 / sum(1.0 / (m * k * n) for m, k, n in part_matmul_shapes(hw, weight_format))


def peak_macs_per_cycle(hw: ArrayConfig, sparse: bool = False) -> int:
    """Dense-equivalent MACs per cycle per core at rule 2's shape (``matmul_shape``): 256 dense,
    512 with sparse weights on AIE-ML."""
    m, k, n = matmul_shape(hw, sparse)
    return m * k * n


def element_cycles(ops: np.ndarray, hw: ArrayConfig) -> np.ndarray:
    """Rule 2 for element-wise work (pools, adds, copies, a fused add): one operation per MAC slot,
    whole cycles."""
    return np.ceil(ops / hw.macs_per_cycle("int8"))


def lookup_cycles(lookups: np.ndarray, hw: ArrayConfig) -> np.ndarray:
    """Rule 2 for a lookup-table layer: ``hw.core.lut_lookups_per_cycle`` table reads per cycle,
    whole cycles."""
    return np.ceil(lookups / hw.core.lut_lookups_per_cycle)


def comp_cycles(kind: str, hw: ArrayConfig, work: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Rule 2: cycles of the slowest core in every iteration of every step, as steps × tiles.

    ``work[j, r]``: the COMP work of the heaviest core of region r in step j — for a conv (``kind ==
    "conv"``) its matmul steps per ``M`` output positions (Σ over its slabs of ``ceil(kept input
    channels / K) × taps``), for other layers its element operations per position (a lookup-table
    layer's: its lookups, at ``lookup_cycles``); ``positions[r, t]``: the output positions of tile t of
    region r. Every call a core makes pays ``kernel_call_overhead_cycles``; a core with no positions or
    no work idles (0)."""
    w = work[:, :, None]
    if kind == "conv":
        cyc = np.ceil(positions / hw.core.matmul_shape[0])[None] * w
    elif kind == "lut":
        cyc = lookup_cycles(positions[None] * w, hw)
    else:
        cyc = element_cycles(positions[None] * w, hw)
    busy = (positions[None] > 0) & (w > 0)
    out = np.where(busy, cyc + hw.core.kernel_call_overhead_cycles, 0)
    return out.max(axis=1) if out.shape[1] else np.zeros((work.shape[0], positions.shape[1]))


def engine_bound_s(loadw_bytes: np.ndarray, loadwm_bytes: np.ndarray, pipe: dict[str, np.ndarray],
                   hw: ArrayConfig, profile: RuleProfile | None = None, double: bool = False) -> float:
    """Seconds no schedule under rules 1–6 beats for a layer given as arrays (as
    ``layer_time_arrays``): each engine runs its iterations one at a time, and the cores never
    compute during a LOADWM (rule 5), so the layer takes at least the busiest engine's total, COMP
    plus LOADWM for the cores — or, with the weight buffer ``double``-buffered (LOADWM does not
    halt), COMP and LOADWM each on its own. Cheap: the compiler's search drops a candidate whose
    bound cannot beat its best. Every profile only adds waits to rules 3–6, so this bounds each
    (COMP at the profile's kernel efficiency)."""
    busy = [float(stage_seconds(op, np.asarray(v, dtype=np.float64), hw).sum()) for op, v in pipe.items()
            if op != "COMP"]
    lwm = float(transfer_s("LOADWM", np.asarray(loadwm_bytes, dtype=np.float64), hw).sum())
    comp = float(comp_s(pipe["COMP"], hw, profile).sum()) if "COMP" in pipe else 0.0
    cores = [lwm, comp] if double else [lwm + comp]
    return max(busy + cores + [float(transfer_s("LOADW", np.asarray(loadw_bytes, dtype=np.float64), hw).sum())])
