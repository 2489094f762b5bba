"""Built-in datasets (nothing downloaded): scikit-learn's bundled 8x8 digits, and procedural 16x16
shapes-and-textures (18 classes), hard enough for sparsity patterns and methods to separate."""

from tilesparse.data.digits import DigitsData, digits_loaders, load_digits_tensors
from tilesparse.data.shapes import ShapesData, load_shapes_tensors, make_shapes, shapes_loaders

__all__ = ["DigitsData", "digits_loaders", "load_digits_tensors", "ShapesData", "load_shapes_tensors", "make_shapes",
           "shapes_loaders"]
