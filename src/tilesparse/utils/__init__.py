"""Small shared helpers: atomic file writes and validated YAML loading."""

from tilesparse.utils.atomic import atomic_torch_save, atomic_write_bytes, atomic_write_text
from tilesparse.utils.config import load_yaml, load_yaml_model, validate_model

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_torch_save",
    "load_yaml",
    "load_yaml_model",
    "validate_model",
]
