"""Sparsifier: attach pattern masks to a model and update them, torch.ao.pruning style.

    sparsifier = Sparsifier(Recipe(pattern="2:4")).prepare(model)   # or "8x8", "8x8@0.5/2:4", ...
    sparsifier.step()            # score, select, mask (weights stay zero under any optimizer step)
    ...train...
    sparsifier.squash_mask()     # bake the zeros in, remove the machinery

Every layer gets the recipe's pattern at its target sparsity (``patterns.family``); the mask the
sparsifier stores is the pattern's native mask: the unit grid for grid patterns (blocks, channels,
filters, single weights) and the element mask for N:M and hierarchies. Masked weights are exactly
zero in the forward pass (W * mask) and get zero gradient; the stored weight is zeroed too, so plain
SGD/Adam/weight decay keep it at zero. ``BlockSparsifier`` is the same class under its older name.
"""

from __future__ import annotations

import fnmatch
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from tilesparse.errors import ConfigError
from tilesparse.patterns.block import BlockGeometry
from tilesparse.patterns.family import Filter, GridPattern, Pattern, Scorer
from tilesparse.patterns.oneshot import first_conv_name
from tilesparse.patterns.scores import SCORES, unit_scores
from tilesparse.patterns.selection import check_sparsity, select_masks
from tilesparse.sparsify.parametrization import MaskParametrization
from tilesparse.sparsify.recipe import Recipe

__all__ = ["Sparsifier", "BlockSparsifier", "SparseLayer", "SparsityShortfall", "find_layers"]

_KINDS = {"conv": nn.Conv2d, "linear": nn.Linear}


@dataclass
class SparseLayer:
    """One sparsified weight: its module, pattern (every level fixed) and target sparsity."""

    name: str
    module: nn.Module
    pattern: Pattern
    target: float

    @property
    def param(self) -> MaskParametrization:
        return self.module.parametrizations.weight[0]

    @property
    def shape(self) -> tuple[int, ...]:
        return self.param.shape

    @property
    def groups(self) -> int:
        return self.param.groups

    @property
    def geom(self) -> BlockGeometry:
        """The unit grid of a grid pattern (blocks: the block geometry)."""
        if not isinstance(self.pattern, GridPattern):
            raise ConfigError(self.name, [f"pattern {self.pattern.spec()} has no unit grid"])
        return self.pattern.grid(self.shape, self.groups)[0]

    @property
    def units(self) -> int:
        """How many units the pattern chooses among: grid units, else single weights."""
        return self.geom.n_blocks if isinstance(self.pattern, GridPattern) else math.prod(self.shape)

    @property
    def raw_weight(self) -> nn.Parameter:
        """The trainable weight underneath the mask."""
        return self.module.parametrizations.weight.original

    @property
    def mask(self) -> Tensor:
        """The native mask (block grid for blocks, element mask for N:M and hierarchies)."""
        return self.param.mask

    def scorer(self, score: str, stat: Tensor | None) -> Scorer:
        """Score ``score`` of any unit the pattern asks about, on the effective (masked) weight:
        zeroed units score lowest."""
        w = self.module.weight.detach()
        return lambda reduce: unit_scores(score, w, reduce, stat)


def _kind(module: nn.Module) -> str | None:
    return next((k for k, t in _KINDS.items() if type(module) is t or isinstance(module, t)), None)


def find_layers(model: nn.Module, recipe: Recipe) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Layers the recipe sparsifies, and the skipped ones with the reason (name -> reason)."""
    chosen: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    pattern = recipe.layer_pattern()
    first_conv = first_conv_name(model)
    for name, m in model.named_modules():
        kind = _kind(m)
        if kind is None:
            continue
        if kind not in recipe.layer_types:
            skipped[name] = f"{kind} layers are not in the recipe's layer_types"
            continue
        too_small = pattern.eligible(tuple(m.weight.shape), getattr(m, "groups", 1))
        if name == first_conv and not recipe.include_first_conv:
            skipped[name] = "first convolution (excluded by default; include_first_conv to keep it)"
        elif any(fnmatch.fnmatchcase(name, p) for p in recipe.exclude):
            skipped[name] = "excluded by the recipe"
        elif too_small is not None and not recipe.include_narrow:
            skipped[name] = f"{too_small} (include_narrow to sparsify anyway)"
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


class Sparsifier:
    """Pattern masks over a model's Conv2d / Linear weights, driven by a ``Recipe``."""

    def __init__(self, recipe: Recipe | None = None, **overrides: Any):
        base = recipe or Recipe()
        if overrides:  # fields the recipe derived (sparsity, selection) follow an overridden pattern
            given = base.model_dump(exclude_unset=True)
            if {"pattern", "block"} & set(overrides):  # a new pattern replaces the old in both spellings
                given = {k: v for k, v in given.items() if k not in ("pattern", "block")}
            base = Recipe.from_dict({**given, **overrides}, "Sparsifier")
        self.recipe = base
        self.layers: dict[str, SparseLayer] = {}
        self.skipped: dict[str, str] = {}
        self.model: nn.Module | None = None
        self.shortfalls: dict[str, str] = {}  # layers the last full step left below their target, and why

    @property
    def pattern(self) -> Pattern:
        """The recipe's pattern at the recipe's sparsity."""
        return self.recipe.layer_pattern()

    # ---- lifecycle -------------------------------------------------------------------------
    def prepare(self, model: nn.Module) -> Sparsifier:
        """Attach an all-ones mask parametrization to every layer the recipe selects."""
        if self.model is not None:
            raise ConfigError("Sparsifier", ["already prepared; call squash_mask() first"])
        chosen, self.skipped = find_layers(model, self.recipe)
        patterns = {}
        for name in chosen:  # every layer's pattern first: a bad per-layer target changes nothing
            target = self.recipe.layer_sparsity.get(name, self.recipe.sparsity)
            try:
                patterns[name] = (self.recipe.layer_pattern(target), target)
            except ConfigError as e:
                raise ConfigError(f"layer_sparsity: {name}", e.errors) from None
        for name, m in chosen.items():
            if parametrize.is_parametrized(m, "weight"):
                raise ConfigError(name, ["weight is already parametrized (prepared twice?)"])
            pattern, target = patterns[name]
            p = MaskParametrization(pattern, tuple(m.weight.shape), getattr(m, "groups", 1), m.weight.dtype,
                                    m.weight.device)
            parametrize.register_parametrization(m, "weight", p)
            self.layers[name] = SparseLayer(name, m, pattern, target)
        self.model = model
        return self

    def _require_prepared(self) -> None:
        if self.model is None:
            raise ConfigError("Sparsifier", ["not prepared: call prepare(model) first"])

    def _stat(self, name: str, score: str, stats: Mapping[str, Tensor] | None) -> Tensor | None:
        stat = None if stats is None else stats.get(name)
        if SCORES.get(score) and stat is None:
            raise ConfigError("score", [f"score {score!r} needs gradient statistics for layer {name!r}"])
        return stat

    def scores(self, stats: Mapping[str, Tensor] | None = None, score: str | None = None) -> dict[str, Tensor]:
        """Scores of every layer's units (``stats``: gradient statistics for taylor/fisher/hessian):
        the unit grid of a grid pattern, one score per weight for N:M and hierarchies."""
        self._require_prepared()
        score = score or self.recipe.score
        out = {}
        for name, layer in self.layers.items():
            reduce = _grid_reduce(layer) if isinstance(layer.pattern, GridPattern) else _identity
            out[name] = layer.scorer(score, self._stat(name, score, stats))(reduce)
        return out

    def step(self, stats: Mapping[str, Tensor] | None = None, sparsity: float | Mapping[str, float] | None = None,
             monotone: bool = True, scores: Mapping[str, Tensor] | None = None,
             score: str | None = None) -> dict[str, Tensor]:
        """Recompute masks at ``sparsity`` (default: each layer's target; lower: a step on the way)
        and apply them. Scores: ``scores`` as ``scores()`` returns them, else the recipe's (or
        ``score``) from the weights and ``stats``. For a hierarchy given ``scores`` are summed over
        each level's units. ``monotone``: units zeroed before stay zeroed. Returns the new masks."""
        self._require_prepared()
        score = score or self.recipe.score
        targets = self._targets(sparsity)
        keep = {n: layer.mask.clone() for n, layer in self.layers.items()} if monotone else None
        masks: dict[str, Tensor] = {}
        if self.recipe.selection == "global":  # one threshold across the layers (grid patterns only)
            given = scores if scores is not None else self.scores(stats, score)
            filters = any(isinstance(la.pattern, Filter) for la in self.layers.values())  # a row is one unit
            empty_ok = self.recipe.allow_empty_rows or filters
            masks = select_masks(given, targets, "global", empty_ok, keep)
        for name, layer in self.layers.items():
            if name in masks:
                continue
            if scores is None:
                scorer = layer.scorer(score, self._stat(name, score, stats))
            else:
                scorer = _given(scores[name], isinstance(layer.pattern, GridPattern))
            masks[name] = layer.pattern.select(
                scorer, layer.shape, layer.groups, sparsity=targets[name], keep=None if keep is None else keep[name],
                mode=self.recipe.selection, allow_empty_rows=self.recipe.allow_empty_rows)
        self.set_masks(masks, check=False)  # below the target, N:M runs are not all pruned yet
        if sparsity is None:
            self._note_shortfalls()
        return masks

    def _note_shortfalls(self) -> None:
        """Say which layers the masks leave below their target (rows keeping a unit, ragged edges):
        the achieved sparsity is what the user gets, and it must not pass silently."""
        achieved = self.sparsity()
        self.shortfalls = {}
        for name, layer in self.layers.items():
            if achieved[name] < layer.target - max(1.0 / layer.units, SHORTFALL_TOLERANCE) - 1e-9:
                self.shortfalls[name] = (f"reached {achieved[name]:.3g} of its target {layer.target:g}: "
                                         f"{_shortfall_cause(layer, self.recipe)}")
        if self.shortfalls:
            shown = "; ".join(f"{n} {why}" for n, why in list(self.shortfalls.items())[:3])
            more = f" (+{len(self.shortfalls) - 3} more layers)" if len(self.shortfalls) > 3 else ""
            warnings.warn(f"sparsity below the target in {len(self.shortfalls)} layer(s): {shown}{more}",
                          SparsityShortfall, stacklevel=3)

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
    def set_masks(self, masks: Mapping[str, Tensor], check: bool = True) -> None:
        """Apply given native masks (predetermined, or another tool's); zeroes the stored weights under
        them. A mask that breaks the layer's pattern is refused, naming the layer and the rule
        (``check=False``: a step on the way to the pattern, as incremental pruning makes)."""
        self._require_prepared()
        errs = []
        for name, mask in masks.items():
            if name not in self.layers:
                errs.append(f"unknown layer {name!r}; sparsified layers: {', '.join(self.layers)}")
                continue
            layer = self.layers[name]
            want = layer.pattern.native_shape(layer.shape, layer.groups)
            if tuple(mask.shape) != tuple(want):
                kind = "block" if isinstance(layer.pattern, GridPattern) else "element"
                errs.append(f"{name}: expected a {kind} mask of shape {tuple(want)} for pattern "
                            f"{layer.pattern.spec()}, got {tuple(mask.shape)}")
            elif check and not isinstance(layer.pattern, GridPattern):
                errs += [f"{name}: {p}" for p in layer.pattern.check(mask.bool().cpu(), layer.shape, layer.groups)]
        if errs:
            raise ConfigError("masks", errs)
        for name, mask in masks.items():
            layer = self.layers[name]
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
        """Achieved sparsity per layer: zero units / all units (blocks for blocks, weights for N:M
        and hierarchies)."""
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
        no_grid = [f"{n}: pattern {la.pattern.spec()}" for n, la in self.layers.items()
                   if not isinstance(la.pattern, GridPattern)]
        if no_grid:
            raise ConfigError("gates", ["soft gates need a grid pattern (one gate per unit)"] + no_grid)
        return [layer.param.attach_gate(init) for layer in self.layers.values()]

    @property
    def gates(self) -> dict[str, nn.Parameter]:
        return {n: layer.param.gate for n, layer in self.layers.items() if layer.param.gate is not None}

    @torch.no_grad()
    def fold_gates(self) -> None:
        """W <- W * gate, then drop the gates (the forward pass is unchanged)."""
        for layer in self.layers.values():
            if layer.param.gate is not None:
                layer.raw_weight.mul_(layer.param._expand(layer.param.gate))
                layer.param.detach_gate()

    # ---- state -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe.model_dump(mode="json"),
            "patterns": {n: layer.pattern.spec() for n, layer in self.layers.items()},
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
        self.set_masks(masks, check=False)  # a run saved mid-schedule holds masks on the way
        for name, g in state.get("gates", {}).items():
            param = self.layers[name].param
            gate = param.gate if param.gate is not None else param.attach_gate()
            with torch.no_grad():
                gate.copy_(g)


BlockSparsifier = Sparsifier  # the name before patterns

SHORTFALL_TOLERANCE = 0.01  # achieved sparsity this far below the target (or one unit) is rounding


class SparsityShortfall(UserWarning):
    """A layer's masks are less sparse than its target (see ``Sparsifier.shortfalls``)."""


def _shortfall_cause(layer: SparseLayer, recipe: Recipe) -> str:
    top = layer.pattern.levels()[0]
    if isinstance(top, GridPattern) and not isinstance(top, Filter) and not recipe.allow_empty_rows:
        cols = top.grid(layer.shape, layer.groups)[0].grid[1]
        if recipe.selection == "balanced_rows":
            return (f"balanced rows keep the same number of units in every row, at least one of the {cols} "
                    "(a wider layer, or selection layer with allow_empty_rows, goes further)")
        return f"every row keeps at least one of its {cols} units (allow_empty_rows: true lets a row empty)"
    return "channel counts are not multiples of the pattern's units (ragged edges keep more)"


def _identity(x: Tensor) -> Tensor:
    return x


def _grid_reduce(layer: SparseLayer) -> Callable[[Tensor], Tensor]:
    pattern = layer.pattern
    assert isinstance(pattern, GridPattern)
    return lambda x: pattern.reduce(x, layer.shape, layer.groups)


def _given(scores: Tensor, grid: bool) -> Scorer:
    """A scorer from given scores: a grid pattern's unit scores as they are; per-weight scores
    summed over each unit a level asks about."""
    s = scores.detach().double()
    return (lambda reduce: s) if grid else (lambda reduce: reduce(s))
