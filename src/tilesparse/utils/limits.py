"""Upper bounds on what tilesparse accepts, in one place (docs/limits.md says why each is what it is).

Every bound is checked before anything is allocated: an array description, a block shape, an input
shape, a YAML file, a program file's header or an input ``.npy`` above it is refused with one line
naming the field and the bound. They sit far above any real AIE-ML device or network (the largest
Versal AIE-ML part has 8 x 38 compute tiles of 64 KiB and a 512 KiB MemTile per column), and low
enough that a compile and a simulation at the bound fit the memory of a workstation.
"""

from __future__ import annotations

__all__ = [
    "DOC", "MAX_BLOCK", "MAX_BUFFER_BYTES", "MAX_CLOCK_HZ", "MAX_COLS", "MAX_CORE_MEMORY_BYTES", "MAX_DDR_BYTES",
    "MAX_DDR_MAP_BYTES", "MAX_INPUT_ELEMENTS", "MAX_INPUT_NPY_BYTES", "MAX_ITERS", "MAX_LAYER_WEIGHT_BYTES",
    "MAX_MEMTILE_BYTES", "MAX_NAME_CHARS", "MAX_ONCHIP_BYTES", "MAX_PROGRAM_FILE_BYTES", "MAX_ROWS",
    "MAX_YAML_ALIASES", "MAX_YAML_BYTES", "MAX_YAML_DEPTH", "MAX_YAML_NODES", "above",
]

DOC = "docs/limits.md"  # where a refused value's message points

KIB, MIB, GIB = 1 << 10, 1 << 20, 1 << 30

# --- the array (tilesparse.hw.ArrayConfig) ------------------------------------------------------
MAX_ROWS = 64  # compute tiles per column (real parts: 4 to 8)
MAX_COLS = 64  # columns (real parts: 4 to 38; 64 x 64 compiles ResNet18 in ~16 s, ~1.2 GB)
MAX_CORE_MEMORY_BYTES = 1 * MIB  # a core's data memory (real: 64 KiB)
MAX_MEMTILE_BYTES = 16 * MIB  # one MemTile (real: 512 KiB)
# rows x cols x core memory + cols x MemTile: the simulator holds every on-chip byte in RAM.
MAX_ONCHIP_BYTES = 1 * GIB
MAX_DDR_BYTES = 1 << 40  # DDR capacity: a number the compiler compares with, never allocated
MAX_CLOCK_HZ = 1e11  # 100 GHz (real: 1 to 1.3 GHz)
MAX_NAME_CHARS = 100  # an array description's name (it is in every label and message)

# --- models and programs ----------------------------------------------------------------------
MAX_BLOCK = 4096  # block out / in channels (ResNet50's widest conv: 2048 channels)
MAX_INPUT_ELEMENTS = 1 << 24  # N*C*H*W of --input-shape (1x3x2048x2048 fits)
MAX_BUFFER_BYTES = 256 * MIB  # one int8 activation buffer (VGG16 at 224x224: 3.2 MB)
MAX_LAYER_WEIGHT_BYTES = 1 * GIB  # one layer's dense int8 weights (VGG16's fc6: 103 MB)
MAX_DDR_MAP_BYTES = 4 * GIB  # the DDR a program maps (the simulator materialises it)
MAX_ITERS = 1 << 24  # iterations of one instruction (ResNet50 on 1x1: at most 224)
MAX_PROGRAM_FILE_BYTES = 4 * GIB  # a program file, and its members once unpacked

# --- input files ------------------------------------------------------------------------------
MAX_YAML_BYTES = 1 * MIB  # an array description, recipe or cost-model file (the preset: 2 KB)
MAX_YAML_ALIASES = 64  # '*name' references in one YAML document
MAX_YAML_NODES = 100_000  # scalars, lists and mappings of a YAML document with every alias expanded
MAX_YAML_DEPTH = 64  # nesting of lists and mappings
MAX_INPUT_NPY_BYTES = 2 * GIB  # simulate --input: a float64 array of the largest buffer


def above(what: str, value: object, limit: object, unit: str = "") -> str:
    """The one wording of a refused value: ``rows 100000 is above the limit 64 (docs/limits.md)``."""
    return f"{what} {value}{unit} is above the limit {limit}{unit} ({DOC})"
