"""Hardware descriptions: AIE2 arrays of any rows x columns, loaded from validated YAML.

>>> from tilesparse.hw import load_array
>>> hw = load_array("4x4")
>>> hw.n_cores, hw.peak_macs_per_s
(16, 4096000000000.0)
"""

from tilesparse.hw.array import (
    ArrayConfig,
    CoreConfig,
    DdrConfig,
    DmaCompressionConfig,
    LinkConfig,
    MemTileConfig,
    SparseMatmulConfig,
    list_presets,
    load_array,
)
from tilesparse.hw.profiles import MEASURED, PAPER, PROFILES, TILESPARSE, MeasuredFigures, RuleProfile, get_profile

__all__ = [
    "ArrayConfig",
    "CoreConfig",
    "DdrConfig",
    "DmaCompressionConfig",
    "LinkConfig",
    "MemTileConfig",
    "SparseMatmulConfig",
    "MEASURED",
    "PAPER",
    "PROFILES",
    "TILESPARSE",
    "MeasuredFigures",
    "RuleProfile",
    "get_profile",
    "list_presets",
    "load_array",
]
