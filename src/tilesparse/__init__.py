"""tilesparse: structured sparsity from PyTorch training to AIE2 tile programs.

Pipeline (see docs/architecture.md): patterns -> sparsify -> quant -> ir/passes -> compiler
-> sim / estimate -> report; beside it hw, costmodel and mapper.
"""

from tilesparse.errors import ConfigError, TilesparseError

__version__ = "0.1.0"
__all__ = ["ConfigError", "TilesparseError", "__version__"]
