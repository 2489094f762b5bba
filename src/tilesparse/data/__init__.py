"""Built-in datasets (nothing downloaded): scikit-learn's bundled 8x8 digits."""

from tilesparse.data.digits import DigitsData, digits_loaders, load_digits_tensors

__all__ = ["DigitsData", "digits_loaders", "load_digits_tensors"]
