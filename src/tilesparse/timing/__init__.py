"""The time model's rules — every timing rule of tilesparse, below the compiler (docs/time-model.md).

``rules``: what a transfer or a COMP iteration costs (rules 1–2, ``comp_cycles``) and the engine
bound; ``recurrence``: a layer's steps played out engine by engine as the program's locks allow
(rules 3–6). The compiler's search times its candidates with these, and ``estimate.timemodel``
applies them to a compiled ``Program``. This package imports nothing from tilesparse but ``hw``
(tests/test_import_boundaries_timing.py), so both can use it without a cycle.
"""

from tilesparse.timing.recurrence import (
    LayerTime,
    StepTime,
    layer_time,
    layer_time_arrays,
    pipeline_s,
    prefetch_start_s,
)
from tilesparse.timing.rules import (
    PIPE_OPS,
    TRANSFER_OPS,
    WEIGHT_HALVES,
    WEIGHT_SLOTS,
    bandwidth,
    comp_cycles,
    comp_s,
    element_cycles,
    engine_bound_s,
    lookup_cycles,
    matmul_shape,
    part_matmul_shapes,
    parts_lower_rate,
    peak_macs_per_cycle,
    stage_seconds,
    transfer_s,
    weight_double_buffer_on,
)

__all__ = [
    "PIPE_OPS",
    "TRANSFER_OPS",
    "WEIGHT_HALVES",
    "WEIGHT_SLOTS",
    "LayerTime",
    "StepTime",
    "bandwidth",
    "comp_cycles",
    "comp_s",
    "element_cycles",
    "engine_bound_s",
    "layer_time",
    "layer_time_arrays",
    "matmul_shape",
    "part_matmul_shapes",
    "parts_lower_rate",
    "peak_macs_per_cycle",
    "lookup_cycles",
    "pipeline_s",
    "prefetch_start_s",
    "stage_seconds",
    "transfer_s",
    "weight_double_buffer_on",
]
