"""Build a model by name. Nothing is downloaded: weights are random unless a local file is given."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from tilesparse.errors import CheckpointError, ConfigError
from tilesparse.utils.torchfile import TorchFileError, load_torch_file

# Models tilesparse defines itself (registered by their modules on import).
_LOCAL: dict[str, Callable[..., nn.Module]] = {}

# Input size each torchvision network expects (C, H, W); others default to 3x224x224.
INPUT_SHAPES = {"inception_v3": (3, 299, 299)}


def register(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _LOCAL[name] = fn
        return fn

    return deco


def _torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def list_models() -> list[str]:
    return sorted(_LOCAL) + _torchvision_names()


def get_model(
    name: str, weights: str | Path | None = None, num_classes: int | None = None, seed: int = 0
) -> nn.Module:
    """Return model ``name`` in eval mode with random weights (seeded) or a local state dict.

    torchvision's inception_v3 is built without aux logits (the compiler handles the main path).
    """
    torch.manual_seed(seed)
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    if name in _LOCAL:
        model = _LOCAL[name](**kwargs)
    else:
        import torchvision

        names = _torchvision_names()
        if name not in names:
            raise ConfigError(
                "model",
                [f"unknown model {name!r}; known: {', '.join(sorted(_LOCAL))} and torchvision's "
                 f"classifiers (e.g. resnet50, inception_v3, vgg16)"],
            )
        if name == "inception_v3":
            kwargs.update(aux_logits=False, init_weights=True)
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    if weights is not None:
        load_weights(model, weights, name)
    return model.eval()


def load_weights(model: nn.Module, path: str | Path, name: str = "model") -> None:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        state = load_torch_file(path)
    except TorchFileError as e:
        raise CheckpointError(f"{path}: not a readable PyTorch state dict ({e.reason}); expected "
                              "torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    problems = _state_mismatch(model, state)
    if problems:
        raise CheckpointError(f"{path}: not a state dict of {name}: {'; '.join(problems)}")
    model.load_state_dict(state)


def _state_mismatch(model: nn.Module, state: dict) -> list[str]:
    """Missing / unexpected keys and shape differences, each list cut to three names (one line)."""
    own = model.state_dict()

    def few(keys: list[str]) -> str:
        return ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} is {tuple(v.shape)} in the file, {tuple(own[k].shape)} in the model" for k, v in state.items()
              if k in own and isinstance(v, torch.Tensor) and v.shape != own[k].shape]
    out = [f"{len(missing)} missing key(s) ({few(missing)})"] * bool(missing)
    out += [f"{len(unexpected)} unexpected key(s) ({few(unexpected)})"] * bool(unexpected)
    return out + [f"{len(shapes)} shape mismatch(es): {few(shapes)}"] * bool(shapes)
