"""Model zoo: torchvision classifiers by name (random or local weights) and the small CNNs used in
experiments."""

from tilesparse.models import digits as _digits  # noqa: F401  registers "digits_cnn"
from tilesparse.models.zoo import get_model, list_models

__all__ = ["get_model", "list_models"]
