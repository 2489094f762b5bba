"""Datasets (nothing downloaded): scikit-learn's bundled 8x8 digits, procedural 16x16 shapes-and-textures
(18 classes, hard enough for sparsity patterns and methods to separate), and image folders from disk."""

from tilesparse.data.digits import DigitsData, digits_loaders, load_digits_tensors
from tilesparse.data.folder import FolderLoader, folder_loaders
from tilesparse.data.shapes import ShapesData, load_shapes_tensors, make_shapes, shapes_loaders

__all__ = ["DigitsData", "FolderLoader", "ShapesData", "digits_loaders", "folder_loaders", "load_digits_tensors",
           "load_shapes_tensors", "make_shapes", "shapes_loaders"]
