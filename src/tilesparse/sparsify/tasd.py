"""TASD on a whole model: every eligible Conv2d / Linear weight becomes a sum of structured-sparse
terms (``patterns.decompose``), each its own trainable tensor under a fixed mask.

    report = tasd_model(model, ["2:4", "1:4"])     # or tasd_model(model, density=0.75)
    print(report.to_text())                        # per layer: terms, density, relative error
    finetune_terms(model, train_loader, epochs=1, lr=0.01, test_loader=test_loader)   # optional
    terms = export_terms(model)                    # layer -> [Term(pattern spec, tensor), ...]
    squash_terms(model)                            # plain weights: the sum of the terms

With no fine-tuning the forward weight is exactly the greedy decomposition's sum, so a trained dense
model runs on structured-sparse units without retraining. Fine-tuning trains the terms' values with
their masks fixed: the forward pass multiplies each term by its mask (a pruned slot is exactly zero
and gets zero gradient) and the stored values under a zero mask are zeroed after every step too.
Layers are chosen as the sparsifier chooses them (``sparsifier.find_layers``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar, cast

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from tilesparse.errors import ConfigError
from tilesparse.patterns.decompose import DEFAULT_TERMS, Decomposition, decompose, search_terms
from tilesparse.patterns.family import Pattern
from tilesparse.patterns.grammar import as_pattern
from tilesparse.sparsify.methods.base import SparsityMethod, TrainContext
from tilesparse.sparsify.recipe import Recipe, TrainingConfig
from tilesparse.sparsify.sparsifier import find_layers
from tilesparse.sparsify.trainer import FitResult, Trainer
from tilesparse.utils.config import validate_model

__all__ = ["TermsParametrization", "TASDLayer", "TASDReport", "Term", "tasd_model", "term_layers",
           "finetune_terms", "export_terms", "squash_terms"]

TermSpec = str | Pattern | dict[str, Any]


class TermsParametrization(nn.Module):
    """``terms (k, *shape) -> sum_i terms[i] * masks[i]``: the stored original is the stack of the
    terms, one trainable tensor each; the masks are fixed buffers."""

    masks: Tensor

    def __init__(self, patterns: Sequence[Pattern], masks: Sequence[Tensor], groups: int, dtype: torch.dtype):
        super().__init__()
        self.patterns, self.groups = tuple(patterns), groups
        self.register_buffer("masks", torch.stack([m.bool() for m in masks]).to(dtype))

    def forward(self, terms: Tensor) -> Tensor:
        return (terms * self.masks).sum(0)

    @torch.no_grad()
    def right_inverse(self, weight: Tensor) -> Tensor:
        """Greedy projection of a weight onto the fixed masks, term by term on the residual. At
        registration this gives exactly ``decompose``'s terms; assigning ``module.weight = w`` later
        re-projects ``w`` onto the same masks."""
        residual, out = weight.detach(), []
        for mask in self.masks.bool():
            term = torch.where(mask, residual, torch.zeros_like(residual))
            out.append(term)
            residual = residual - term
        return torch.stack(out)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.masks.shape[1:])

    def density(self) -> float:
        """Sum of the terms' kept slots / weights: the work of one unit per term, relative to dense."""
        return float(self.masks.sum()) / math.prod(self.shape)


@dataclass(frozen=True)
class TASDLayer:
    """One decomposed weight. ``density``: sum of the terms' kept slots over the weights (what the
    structured units execute; the nominal term density, ragged runs counted as they fall);
    ``support``: nonzero fraction of the summed weight; ``error``: ||W - sum|| / ||W||."""

    name: str
    shape: tuple[int, ...]
    terms: tuple[str, ...]
    density: float
    support: float
    error: float


@dataclass
class TASDReport:
    layers: dict[str, TASDLayer] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def density(self) -> float:
        """Term density over all decomposed weights (weighted by their sizes)."""
        sizes = {n: math.prod(la.shape) for n, la in self.layers.items()}
        return sum(la.density * sizes[n] for n, la in self.layers.items()) / max(sum(sizes.values()), 1)

    def to_text(self) -> str:
        rows = [f"{'layer':<24} {'shape':<18} {'terms':<18} {'density':>8} {'support':>8} {'rel.err':>8}"]
        rows += [f"{n:<24} {'x'.join(map(str, la.shape)):<18} {'+'.join(la.terms):<18} {la.density:>8.4f} "
                 f"{la.support:>8.4f} {la.error:>8.4f}" for n, la in self.layers.items()]
        rows.append(f"term density over decomposed layers: {self.density:.4f}")
        rows += [f"skipped {n}: {why}" for n, why in self.skipped.items()]
        return "\n".join(rows)


class Term(NamedTuple):
    """One exported term: its pattern's spec and its weight-shaped tensor (zero off the pattern)."""

    pattern: str
    weight: Tensor


def _as_terms(terms: TermSpec | Sequence[TermSpec], where: str) -> tuple[Pattern, ...]:
    """Term patterns from patterns, specs, dicts, or one string joined by '+' ("2:4+1:4")."""
    if isinstance(terms, str):
        items: list[Any] = terms.split("+")
    elif isinstance(terms, (Pattern, dict)):
        items = [terms]
    else:
        items = list(terms)
    if not items:
        raise ConfigError(where, ["expected at least one term pattern, e.g. ['2:4', '1:4']"])
    out, errs = [], []
    for i, t in enumerate(items, 1):
        try:
            p = as_pattern(t, f"term {i}")
        except ConfigError as e:
            errs.append(f"term {i}: {e}")
            continue
        if p.free_levels():
            errs.append(f"term {i} ({p.spec()}) has a free sparsity; give every level '@s' (e.g. 8x8@0.5)")
        out.append(p)
    if errs:
        raise ConfigError(where, errs)
    return tuple(out)


def _check_density(density: Any) -> float:
    ok = isinstance(density, (int, float)) and not isinstance(density, bool) and math.isfinite(density)
    if not ok or density <= 0:
        raise ConfigError("tasd: density", [f"expected a term density > 0 (sum of the terms' densities, "
                                            f"e.g. 0.75 for 2:4 + 1:4), got {density!r}"])
    return float(density)


def _decompose_layer(m: nn.Module, patterns: tuple[Pattern, ...] | None, density: float | None,
                     candidates: tuple[Pattern, ...], max_terms: int) -> Decomposition | str:
    """The layer's decomposition, or why it takes none."""
    w, groups = _weight(m), getattr(m, "groups", 1)
    shape = tuple(w.shape)
    if patterns is not None:
        why = next((f"term {p.spec()}: {r}" for p in patterns if (r := p.eligible(shape, groups)) is not None), None)
        return why if why is not None else decompose(w, patterns, groups)
    fitting = [p for p in candidates if p.eligible(shape, groups) is None]
    if not fitting:
        return f"no candidate term fits ({', '.join(p.spec() for p in candidates)})"
    assert density is not None
    try:
        return search_terms(w, density, fitting, max_terms, groups)
    except ConfigError as e:
        return "; ".join(e.errors)


def _choose_layers(model: nn.Module, first: Pattern, layer_types: Sequence[str], include_first_conv: bool,
                   exclude: Sequence[str]) -> tuple[dict[str, nn.Module], dict[str, str]]:
    """Conv2d / Linear layers by the sparsifier's rules; per-term fit is checked per layer after."""
    recipe = Recipe.from_dict({"pattern": first.spec(), "layer_types": list(layer_types),
                               "include_first_conv": include_first_conv, "exclude": list(exclude),
                               "include_narrow": True}, "tasd")
    chosen, skipped = find_layers(model, recipe)
    twice = [f"{n}: weight is already parametrized (decomposed or masked; squash it first)"
             for n, m in chosen.items() if parametrize.is_parametrized(m, "weight")]
    if twice:
        raise ConfigError("tasd", twice)
    return chosen, skipped


def tasd_model(model: nn.Module, terms: TermSpec | Sequence[TermSpec] | None = None, *,
               density: float | None = None, candidates: Sequence[TermSpec] = DEFAULT_TERMS, max_terms: int = 3,
               layer_types: Sequence[str] = ("conv",), include_first_conv: bool = False,
               exclude: Sequence[str] = ()) -> TASDReport:
    """Replace every eligible weight by the sum of its TASD terms (in place); returns the report.

    ``terms``: one list for every layer (``["2:4", "1:4"]``, ``"2:4+1:4"`` or patterns); or
    ``density``: per layer, ``search_terms`` picks the list of up to ``max_terms`` ``candidates`` with
    the lowest relative error whose term density is at most ``density``. Layers are chosen as the
    sparsifier chooses them; a layer some term does not fit (or, by density, no list fits) is skipped
    with the reason. Every decomposition is computed before the model is touched: an error leaves it as it was."""
    if (terms is None) == (density is None):
        raise ConfigError("tasd", ["give exactly one of terms (e.g. ['2:4', '1:4']) or density (e.g. 0.75)"])
    patterns = _as_terms(terms, "tasd: terms") if terms is not None else None
    cands = _as_terms(candidates, "tasd: candidates") if patterns is None else ()
    target = _check_density(density) if density is not None else None
    if not isinstance(max_terms, int) or max_terms < 1:
        raise ConfigError("tasd: max_terms", [f"expected an integer >= 1, got {max_terms!r}"])
    chosen, skipped = _choose_layers(model, (patterns or cands)[0], layer_types, include_first_conv, exclude)
    plans: dict[str, Decomposition] = {}
    for name, m in chosen.items():
        plan = _decompose_layer(m, patterns, target, cands, max_terms)
        if isinstance(plan, str):
            skipped[name] = plan
        else:
            plans[name] = plan
    if not plans:
        why = [f"{n}: {r}" for n, r in skipped.items()] or ["the model has no Conv2d / Linear layer"]
        raise ConfigError("tasd", ["no layer takes the terms"] + why)
    report = TASDReport(skipped=skipped)
    for name, d in plans.items():
        m = chosen[name]
        w = _weight(m)
        p = TermsParametrization(d.patterns, d.masks, getattr(m, "groups", 1), w.dtype)
        parametrize.register_parametrization(m, "weight", p)
        report.layers[name] = TASDLayer(name, tuple(w.shape), tuple(q.spec() for q in d.patterns), p.density(),
                                        d.support_density, d.relative_error(w))
    return report


def _weight(m: nn.Module) -> Tensor:
    w = m.weight
    assert isinstance(w, Tensor)
    return w.detach()


def _plist(m: nn.Module) -> parametrize.ParametrizationList:
    """The weight's parametrization list, which torch's parametrize adds to the module."""
    return cast(parametrize.ParametrizationList, cast(nn.ModuleDict, m.parametrizations)["weight"])


def _raw(m: nn.Module) -> Tensor:
    """The stacked term values of a decomposed module (the parametrization's original)."""
    return _plist(m).original


P = TypeVar("P", bound=nn.Module)


def parametrized_layers(model: nn.Module, kind: type[P]) -> dict[str, tuple[nn.Module, P]]:
    """The model's layers whose weight's first parametrization is a ``kind``: name -> (module, it)."""
    out = {}
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m, "weight"):
            p = _plist(m)[0]
            if isinstance(p, kind):
                out[name] = (m, p)
    return out


def term_layers(model: nn.Module) -> dict[str, tuple[nn.Module, TermsParametrization]]:
    """The model's decomposed layers: name -> (module, its terms parametrization)."""
    return parametrized_layers(model, TermsParametrization)


def _require_terms(model: nn.Module, where: str) -> dict[str, tuple[nn.Module, TermsParametrization]]:
    layers = term_layers(model)
    if not layers:
        raise ConfigError(where, ["the model has no TASD terms; call tasd_model(model, terms) first"])
    return layers


@torch.no_grad()
def _zero_off_masks(layers: dict[str, tuple[nn.Module, TermsParametrization]]) -> None:
    for m, p in layers.values():
        _raw(m).mul_(p.masks)


class _KeepTermsMasked(SparsityMethod):
    """The Trainer hook that keeps stored term values zero off their masks after every step."""

    name = "tasd_terms"

    def __init__(self, layers: dict[str, tuple[nn.Module, TermsParametrization]]):
        self.layers = layers

    def after_optimizer_step(self, ctx: TrainContext) -> None:
        _zero_off_masks(self.layers)


def finetune_terms(model: nn.Module, train_loader: Iterable, epochs: int = 1, lr: float = 0.01, *,
                   test_loader: Iterable | None = None, train_others: bool = False,
                   training: TrainingConfig | None = None, device: torch.device | str = "cpu",
                   loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
                   progress: bool = False) -> FitResult:
    """Train the terms' values, masks fixed, with the ``Trainer`` (SGD with momentum by default;
    ``training`` replaces epochs, lr and the rest). Other parameters stay frozen unless
    ``train_others``; BatchNorm running statistics follow the data either way (train mode). Returns
    the per-epoch history (test accuracy when ``test_loader`` is given)."""
    layers = _require_terms(model, "finetune_terms")
    cfg = training if training is not None else validate_model(TrainingConfig, {"epochs": epochs, "lr": lr},
                                                                "finetune_terms")
    originals = {id(_raw(m)) for m, _ in layers.values()}
    frozen = [] if train_others else [p for p in model.parameters() if p.requires_grad and id(p) not in originals]
    _zero_off_masks(layers)
    for p in frozen:
        p.requires_grad_(False)
    try:
        trainer = Trainer(model, None, _KeepTermsMasked(layers), train_loader, test_loader, cfg, device=device,
                          loss_fn=loss_fn, progress=progress)
        return trainer.fit()
    finally:
        for p in frozen:
            p.requires_grad_(True)


@torch.no_grad()
def export_terms(model: nn.Module) -> dict[str, list[Term]]:
    """Each decomposed layer's terms, in order: (pattern spec, tensor zero off the pattern's mask)."""
    return {name: [Term(q.spec(), (t * mk).detach().clone())
                   for q, t, mk in zip(p.patterns, _raw(m), p.masks, strict=True)]
            for name, (m, p) in _require_terms(model, "export_terms").items()}


def squash_terms(model: nn.Module) -> nn.Module:
    """Bake the sum of the terms into each weight and remove the parametrizations (in place);
    returns the plain model. Export the terms first if you need them apart."""
    for m, _ in _require_terms(model, "squash_terms").values():
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
    return model
