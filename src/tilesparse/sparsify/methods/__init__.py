"""Training methods for every sparsity pattern: one-shot, incremental (gradual), penalty (soft LSE mask).
Second-order importance (Fisher, Hessian) is a recipe ``score`` usable by one-shot and incremental."""

from tilesparse.errors import ConfigError
from tilesparse.sparsify.methods.base import SparsityMethod, TrainContext
from tilesparse.sparsify.methods.incremental import Incremental, ranked_steps
from tilesparse.sparsify.methods.oneshot import OneShot
from tilesparse.sparsify.methods.penalty import Penalty, lse_penalty

__all__ = ["SparsityMethod", "TrainContext", "OneShot", "Incremental", "Penalty", "lse_penalty",
           "ranked_steps", "make_method", "METHODS"]

METHODS = {"oneshot": OneShot, "incremental": Incremental, "penalty": Penalty}


def make_method(name: str) -> SparsityMethod:
    if name not in METHODS:
        raise ConfigError("method", [f"unknown method {name!r}; expected one of {', '.join(METHODS)}"])
    return METHODS[name]()
