"""BlockSparsifier: attach block masks to a model and update them, torch.ao.pruning style.

    sparsifier = BlockSparsifier(Recipe(sparsity=0.5)).prepare(model)
    sparsifier.step()            # score blocks, select, mask (weights stay zero under any optimizer step)
    ...train...
    sparsifier.squash_mask()     # bake the zeros in, remove the machinery

Masked weights are exactly zero in the forward pass (W * mask) and get zero gradient; the stored
weight is zeroed too, so plain SGD/Adam/weight decay keep it at zero.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from tilesparse.errors import ConfigError
from tilesparse.patterns.block import BlockGeometry
from tilesparse.patterns.oneshot import first_conv_name
from tilesparse.patterns.scores import SCORES, block_scores
from tilesparse.patterns.selection import check_sparsity, select_masks
from tilesparse.sparsify.parametrization import BlockMaskParametrization
from tilesparse.sparsify.recipe import Recipe

__all__ = ["BlockSparsifier", "SparseLayer", "find_layers"]

_KINDS = {"conv": nn.Conv2d, "linear": nn.Linear}


@dataclass
class SparseLayer:
    """One sparsified weight: its module, block geometry and target sparsity."""

    name: str
    module: nn.Module
    geom: BlockGeometry
    target: float

    @property
    def param(self) -> BlockMaskParametrization:
        return self.module.parametrizations.weight[0]

    @property
    def raw_weight(self) -> nn.Parameter:
        """The trainable weight underneath the mask."""
        return self.module.parametrizations.weight.original

    @property
    def mask(self) -> Tensor:
        return self.param.block_mask


def _kind(module: nn.Module) -> str | None:
    return next((k for k, t in _KINDS.items() if type(module) is t or isinstance(module, t)), None)


def find_layers(model: nn.Module, recipe: Recipe) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Layers the recipe sparsifies, and the skipped ones with the reason (name -> reason)."""
    chosen: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    b = recipe.block_shape
    first_conv = first_conv_name(model)
    for name, m in model.named_modules():
        kind = _kind(m)
        if kind is None:
            continue
        if kind not in recipe.layer_types:
            skipped[name] = f"{kind} layers are not in the recipe's layer_types"
            continue
        geom = BlockGeometry.of_module(m, b)
        if name == first_conv and not recipe.include_first_conv:
            skipped[name] = "first convolution (excluded by default; include_first_conv to keep it)"
        elif any(fnmatch.fnmatchcase(name, p) for p in recipe.exclude):
            skipped[name] = "excluded by the recipe"
        elif geom.in_per_group < b.in_ and not recipe.include_narrow:
            what = "depthwise" if geom.groups > 1 and geom.in_per_group == 1 else "narrow"
            skipped[name] = (f"{what}: {geom.in_per_group} input channels per group < block width {b.in_} "
                             "(include_narrow to sparsify anyway)")
        else:
            chosen[name] = m
    _check_names(model, recipe, chosen)
    return chosen, skipped


def _check_names(model: nn.Module, recipe: Recipe, chosen: Mapping[str, nn.Module]) -> None:
    all_names = {n for n, m in model.named_modules() if _kind(m)}
    errs = [f"exclude: pattern {p!r} matches no Conv2d/Linear layer" for p in recipe.exclude
            if not any(fnmatch.fnmatchcase(n, p) for n in all_names)]
    for n in recipe.layer_sparsity:
        if n not in chosen:
            hint = "is not sparsified by this recipe" if n in all_names else "is not a Conv2d/Linear layer of the model"
            errs.append(f"layer_sparsity: unknown layer {n!r} ({hint}); sparsified layers: "
                        f"{', '.join(list(chosen)[:8])}{' ...' if len(chosen) > 8 else ''}")
    if errs:
        raise ConfigError("recipe", errs)


class BlockSparsifier:
    """Block-sparse masks over a model's Conv2d / Linear weights, driven by a ``Recipe``."""

    def __init__(self, recipe: Recipe | None = None, **overrides: Any):
        base = (recipe or Recipe()).model_dump()
        self.recipe = Recipe.from_dict({**base, **overrides}, "BlockSparsifier") if overrides else (recipe or Recipe())
        self.layers: dict[str, SparseLayer] = {}
        self.skipped: dict[str, str] = {}
        self.model: nn.Module | None = None

    # ---- lifecycle -------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> BlockSparsifier:
        """Attach an all-ones mask parametrization to every layer the recipe selects."""
        if self.model is not None:
            raise ConfigError("BlockSparsifier", ["already prepared; call squash_mask() first"])
        chosen, self.skipped = find_layers(model, self.recipe)
        for name, m in chosen.items():
            if parametrize.is_parametrized(m, "weight"):
                raise ConfigError(name, ["weight is already parametrized (prepared twice?)"])
            geom = BlockGeometry.of_module(m, self.recipe.block_shape)
            p = BlockMaskParametrization(geom, m.weight.dim(), m.weight.dtype, m.weight.device)
            parametrize.register_parametrization(m, "weight", p)
            target = self.recipe.layer_sparsity.get(name, self.recipe.sparsity)
            self.layers[name] = SparseLayer(name, m, geom, target)
        self.model = model
        return self

    def _require_prepared(self) -> None:
        if self.model is None:
            raise ConfigError("BlockSparsifier", ["not prepared: call prepare(model) first"])

    def scores(self, stats: Mapping[str, Tensor] | None = None, score: str | None = None) -> dict[str, Tensor]:
        """Block scores of every layer (``stats``: gradient statistics for taylor/fisher/hessian)."""
        self._require_prepared()
        score = score or self.recipe.score
        out = {}
        for name, layer in self.layers.items():
            w = layer.module.weight.detach()  # effective (masked) weight: zeroed blocks score lowest
            stat = None if stats is None else stats.get(name)
            if SCORES.get(score) and stat is None:
                raise ConfigError("score", [f"score {score!r} needs gradient statistics for layer {name!r}"])
            out[name] = block_scores(score, w, layer.geom, stat)
        return out

    def step(self, stats: Mapping[str, Tensor] | None = None, sparsity: float | Mapping[str, float] | None = None,
             monotone: bool = True, scores: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
        """Recompute masks from scores at ``sparsity`` (default: each layer's target) and apply them.

        ``monotone``: blocks zeroed before stay zeroed. Returns the new block masks.
        """
        self._require_prepared()
        scores = scores if scores is not None else self.scores(stats)
        targets = self._targets(sparsity)
        keep = {n: layer.mask.clone() for n, layer in self.layers.items()} if monotone else None
        masks = select_masks(scores, targets, self.recipe.selection, self.recipe.allow_empty_rows, keep)
        self.set_masks(masks)
        return masks

    def _targets(self, sparsity: float | Mapping[str, float] | None) -> dict[str, float]:
        if sparsity is None:
            return {n: layer.target for n, layer in self.layers.items()}
        if isinstance(sparsity, Mapping):
            unknown = [n for n in sparsity if n not in self.layers]
            if unknown:
                raise ConfigError("sparsity", [f"unknown layer {n!r}; sparsified layers: {', '.join(self.layers)}"
                                               for n in unknown])
            return {n: check_sparsity(sparsity.get(n, layer.target), n) for n, layer in self.layers.items()}
        return {n: check_sparsity(sparsity) for n in self.layers}

    @torch.no_grad()
    def set_masks(self, masks: Mapping[str, Tensor]) -> None:
        """Apply given block masks (predetermined masks); zeroes the stored weights under them."""
        self._require_prepared()
        for name, mask in masks.items():
            if name not in self.layers:
                raise ConfigError("masks", [f"unknown layer {name!r}; sparsified layers: {', '.join(self.layers)}"])
            layer = self.layers[name]
            if tuple(mask.shape) != layer.geom.grid:
                raise ConfigError("masks", [f"{name}: expected block mask {layer.geom.grid}, got {tuple(mask.shape)}"])
            layer.param.set_mask(mask)
            layer.raw_weight.mul_(layer.param.element_mask)

    @torch.no_grad()
    def mask_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        """Zero the optimizer's per-weight state (momentum, Adam moments) under the masks.

        The forward pass is exact without this (W * mask), but momentum gathered before a block was
        pruned would keep moving the hidden raw weight; call it after ``step()`` in your own loop if
        you want the stored weights to stay exactly zero too (the Trainer does).
        """
        for layer in self.layers.values():
            state = optimizer.state.get(layer.raw_weight, {})
            for value in state.values():
                if torch.is_tensor(value) and value.shape == layer.raw_weight.shape:
                    value.mul_(layer.param.element_mask)

    @property
    def masks(self) -> dict[str, Tensor]:
        return {n: layer.mask.clone() for n, layer in self.layers.items()}

    def sparsity(self) -> dict[str, float]:
        """Achieved block sparsity per layer (zero blocks / all blocks)."""
        return {n: 1.0 - layer.mask.float().mean().item() for n, layer in self.layers.items()}

    def squash_mask(self) -> nn.Module:
        """Bake the masks into the weights and remove the parametrizations; returns the model."""
        self._require_prepared()
        for layer in self.layers.values():
            parametrize.remove_parametrizations(layer.module, "weight", leave_parametrized=True)
        model, self.model, self.layers = self.model, None, {}
        return model

    # ---- soft gates (penalty method) -------------------------------------------------------
    def attach_gates(self, init: float = 1.0) -> list[nn.Parameter]:
        self._require_prepared()
        return [layer.param.attach_gate(init) for layer in self.layers.values()]

    @property
    def gates(self) -> dict[str, nn.Parameter]:
        return {n: layer.param.gate for n, layer in self.layers.items() if layer.param.gate is not None}

    @torch.no_grad()
    def fold_gates(self) -> None:
        """W <- W * gate, then drop the gates (the forward pass is unchanged)."""
        from tilesparse.patterns.block import expand_mask

        for layer in self.layers.values():
            if layer.param.gate is not None:
                layer.raw_weight.mul_(expand_mask(layer.param.gate, layer.geom, layer.param.ndim))
                layer.param.detach_gate()

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.model_dump(mode="json"),
            "masks": {n: layer.mask.cpu().clone() for n, layer in self.layers.items()},
            "gates": {n: g.detach().cpu().clone() for n, g in self.gates.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore masks (and gates) saved by ``state_dict`` into a prepared sparsifier."""
        self._require_prepared()
        masks = state.get("masks", {})
        missing = [n for n in self.layers if n not in masks]
        extra = [n for n in masks if n not in self.layers]
        if missing or extra:
            raise ConfigError("sparsifier state", [f"layers missing from state: {missing}"] * bool(missing)
                              + [f"state has unknown layers: {extra}"] * bool(extra))
        self.set_masks(masks)
        for name, g in state.get("gates", {}).items():
            param = self.layers[name].param
            gate = param.gate if param.gate is not None else param.attach_gate()
            with torch.no_grad():
                gate.copy_(g)
