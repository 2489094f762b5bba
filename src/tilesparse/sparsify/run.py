"""One call that runs a recipe end to end on a model: prepare, (optionally) train, report."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from tilesparse.sparsify.ddp import Distributed
from tilesparse.sparsify.methods import make_method
from tilesparse.sparsify.recipe import Recipe
from tilesparse.sparsify.report import SparsityReport, build_report
from tilesparse.sparsify.sparsifier import Sparsifier
from tilesparse.sparsify.trainer import FitResult, Trainer, evaluate

__all__ = ["SparsifyResult", "sparsify_model"]


@dataclass
class SparsifyResult:
    model: nn.Module
    sparsifier: Sparsifier
    fit: FitResult
    report: SparsityReport
    accuracy_before: float | None


def sparsify_model(model: nn.Module, recipe: Recipe, train_loader: Iterable | None = None,
                   test_loader: Iterable | None = None, *, device: torch.device | str = "cpu",
                   checkpoint_dir: str | Path | None = None, resume: bool = False,
                   model_name: str | None = None, progress: bool = True,
                   sparsifier: Sparsifier | None = None, bytes_per_weight: int = 1,
                   override: bool = False, run: dict | None = None,
                   dist: Distributed | None = None) -> SparsifyResult:
    """Apply ``recipe`` to ``model``. Without a train loader, only the masks are chosen (no training;
    the penalty method then needs data and is rejected). ``resume`` continues from
    ``checkpoint_dir/last.pt`` if the settings (recipe, model, ``run``: e.g. the data) are the same,
    or with ``override`` from the new ones (``Trainer.fit``). ``dist``: one rank of a torchrun job
    (``sparsify.ddp.init_from_env``)."""
    from tilesparse.errors import ConfigError

    model.to(device)
    if dist is not None:
        dist.broadcast_state(model)  # every rank starts from rank 0's weights, however each built its model
    test = dist.shard_eval(test_loader) if dist is not None else test_loader
    before = evaluate(model, test, device, dist) if test is not None and not resume else None
    sparsifier = sparsifier or Sparsifier(recipe).prepare(model)
    method = make_method(recipe.method)
    has_data = train_loader is not None
    if not has_data:
        if recipe.method == "penalty":
            raise ConfigError("recipe", ["method 'penalty' trains soft masks and needs training data"])
        training = recipe.training.model_copy(update={"epochs": 0})
        train_loader = []
    else:
        training = recipe.training
    trainer = Trainer(model, sparsifier, method, train_loader, test_loader, training, device=device,
                      checkpoint_dir=checkpoint_dir, model_name=model_name, progress=progress, run=run,
                      dist=dist)
    if not has_data:
        trainer.ctx.loader = None  # gradient scores must fail clearly, not on an empty loader
    fit = trainer.fit(resume=resume, override=override)
    return SparsifyResult(model, sparsifier, fit, build_report(model, sparsifier, bytes_per_weight), before)
