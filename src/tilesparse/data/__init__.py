"""Datasets (nothing downloaded): scikit-learn's bundled 8x8 digits, and image folders from disk."""

from tilesparse.data.digits import DigitsData, digits_loaders, load_digits_tensors
from tilesparse.data.folder import FolderLoader, folder_loaders

__all__ = ["DigitsData", "FolderLoader", "digits_loaders", "folder_loaders", "load_digits_tensors"]
