"""Analytical, Sparseloop-style cost model of a layer on a memory hierarchy.

>>> from tilesparse.costmodel import Problem, load_arch, Mapping, evaluate
>>> arch = load_arch("eyeriss")
>>> p = Problem.matmul(4, 4, 4)
>>> m = Mapping.build(arch, [{}, {}, {"P": 4, "K": 4, "C": 4}])
>>> evaluate(p, arch, m).macs
64

The sparsity patterns (8x8 blocks, 2:4, HSS, TASD, SDQ) as cost-model terms:
:mod:`tilesparse.costmodel.pattern` (``pattern_terms``, ``weight_bytes``, ``energy``).
"""

from tilesparse.costmodel.arch import (
    Architecture,
    Compute,
    Level,
    aie2_arch,
    list_arch_presets,
    load_arch,
)
from tilesparse.costmodel.density import (
    NM,
    Actual,
    Blocks,
    Dense,
    DensityModel,
    Hierarchical,
    Uniform,
)
from tilesparse.costmodel.formats import FORMAT_NAMES, Format, make_format
from tilesparse.costmodel.mapping import (
    InvalidMappingError,
    Mapping,
    MappingBatch,
    check_batch,
    validate_mapping,
    why_invalid,
)
from tilesparse.costmodel.model import (
    OBJECTIVES,
    BatchResult,
    Breakdown,
    SparseSpec,
    evaluate,
    evaluate_batch,
    objective_values,
)
from tilesparse.costmodel.problem import DIMS, TENSORS, Problem

__all__ = [
    "DIMS",
    "FORMAT_NAMES",
    "NM",
    "OBJECTIVES",
    "TENSORS",
    "Actual",
    "Architecture",
    "BatchResult",
    "Blocks",
    "Breakdown",
    "Compute",
    "Dense",
    "DensityModel",
    "Format",
    "Hierarchical",
    "InvalidMappingError",
    "Level",
    "Mapping",
    "MappingBatch",
    "Problem",
    "SparseSpec",
    "Uniform",
    "aie2_arch",
    "check_batch",
    "evaluate",
    "evaluate_batch",
    "list_arch_presets",
    "load_arch",
    "make_format",
    "objective_values",
    "validate_mapping",
    "why_invalid",
]
