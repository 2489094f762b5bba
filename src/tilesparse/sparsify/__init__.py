"""Structured-sparse training: attach masks, choose units, train, save.

    from tilesparse.sparsify import Sparsifier, Recipe, OneShot, Trainer, build_report

    recipe = Recipe(method="oneshot", pattern="8x8", sparsity=0.5)   # or pattern="2:4", "8x8@0.5/2:4"
    sparsifier = Sparsifier(recipe).prepare(model)
    Trainer(model, sparsifier, OneShot(), train_loader, test_loader).fit()
    print(build_report(model, sparsifier).to_text())
    save_checkpoint("sparse.pt", model, sparsifier, model_name="resnet50")

Or from your own loop, torch.ao.pruning style: ``sparsifier.step()`` re-selects masks,
``sparsifier.squash_mask()`` bakes them in. Masks pruned by another tool (NVIDIA ASP, torch.ao, zeroed
weights): ``import_masks(model, state)`` (``sparsify.importing``).
"""

from tilesparse.sparsify.calibration import recalibrate_batchnorm
from tilesparse.sparsify.checkpoint import (
    Checkpoint,
    load_checkpoint,
    plain_state_dict,
    save_checkpoint,
    upgrade_checkpoint,
)
from tilesparse.sparsify.composite import CompositeWeights, save_composite_checkpoint
from tilesparse.sparsify.importance import gradient_stats, hessian_traces
from tilesparse.sparsify.importing import ImportedMasks, import_masks
from tilesparse.sparsify.methods import (
    METHODS,
    Incremental,
    OneShot,
    Penalty,
    SparsityMethod,
    TrainContext,
    lse_penalty,
    make_method,
)
from tilesparse.sparsify.recipe import IncrementalConfig, PenaltyConfig, Recipe, TrainingConfig
from tilesparse.sparsify.report import LayerReport, SparsityReport, build_report
from tilesparse.sparsify.run import SparsifyResult, sparsify_model
from tilesparse.sparsify.sdq_train import export_sdq, finetune_sdq, sdq_model, squash_sdq
from tilesparse.sparsify.sparsifier import BlockSparsifier, SparseLayer, Sparsifier, SparsityShortfall, find_layers
from tilesparse.sparsify.tasd import TASDReport, export_terms, finetune_terms, squash_terms, tasd_model
from tilesparse.sparsify.trainer import EpochRecord, FitResult, Trainer, evaluate

__all__ = [
    "Sparsifier", "BlockSparsifier", "SparseLayer", "SparsityShortfall", "find_layers",
    "Recipe", "TrainingConfig", "IncrementalConfig", "PenaltyConfig",
    "SparsityMethod", "TrainContext", "OneShot", "Incremental", "Penalty", "METHODS", "make_method", "lse_penalty",
    "gradient_stats", "hessian_traces",
    "Trainer", "FitResult", "EpochRecord", "evaluate",
    "Checkpoint", "save_checkpoint", "load_checkpoint", "plain_state_dict", "upgrade_checkpoint",
    "SparsityReport", "LayerReport", "build_report",
    "sparsify_model", "SparsifyResult", "recalibrate_batchnorm",
    "import_masks", "ImportedMasks",
    "tasd_model", "finetune_terms", "export_terms", "squash_terms", "TASDReport",
    "sdq_model", "finetune_sdq", "export_sdq", "squash_sdq", "save_composite_checkpoint", "CompositeWeights",
]
