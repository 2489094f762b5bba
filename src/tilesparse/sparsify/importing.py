"""Masks pruned by other tools, brought here: read from the tools' documented state-dict layouts
(none of those packages is imported), checked against a pattern, attached to a Sparsifier.

    imported = import_masks(model, torch.load("asp.pt"), fmt="auto")      # or pattern=parse_pattern("2:4")
    save_checkpoint("sparse.pt", imported.model, imported.sparsifier, model_name="resnet50")

Formats (what ``torch.save(model.state_dict())`` writes after each tool's pruning):

* ``asp`` — NVIDIA ASP (apex.contrib.sparsity) registers ``module.register_buffer("__%s_mma_mask" % name,
  mask)`` on each module it prunes, so a layer's mask is ``<layer>.__weight_mma_mask`` (with
  ``allow_recompute_mask`` also ``<layer>.__weight_mma_pruned_p``, the pruned values: dropped).
  Its default ``m4n2_1d`` is 2 kept of every 4 input channels: ``NM(2, 4)``.
* ``torch-ao`` — after ``sparsifier.prepare`` a model's state dict holds
  ``<layer>.parametrizations.weight.original`` (the weight *before* masking) but not the mask:
  torch.ao's FakeSparsity saves none. The masks are in ``sparsifier.state_dict()``:
  ``{"state": {"<layer>.weight": {"mask": tensor}}, "groups": [config, ...]}``; pass it as
  ``masks_state``. A ``<layer>.parametrizations.weight.0.mask`` key is read if a file has one. The
  groups' ``sparse_block_shape`` / ``zeros_per_block`` name the pattern (``patterns.interop``).
* ``zeros`` — any state dict whose zeros are the pruning (after torch.ao's ``squash_mask``, ASP
  training, magnitude pruning ...): the mask of every Conv2d / Linear is ``weight != 0``.

A layer whose mask keeps every weight (or, for ``zeros``, has no zero weight) stays dense; so does
every layer without a mask. The pattern is given, or the first of (the file's own, ``NM(2, 4)``,
``Block(8, 8)``, ``Unstructured()``) that every mask obeys; a grid pattern's free level takes each
layer's observed sparsity. A mask that breaks the pattern is refused, naming the layer and the rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from tilesparse.errors import ConfigError
from tilesparse.patterns.family import NM, Block, GridPattern, Pattern, Unstructured
from tilesparse.patterns.interop import from_torch_ao
from tilesparse.patterns.oneshot import first_conv_name
from tilesparse.sparsify.checkpoint import load_plain_state
from tilesparse.sparsify.recipe import Recipe
from tilesparse.sparsify.sparsifier import Sparsifier, _kind

__all__ = ["FORMATS", "ForeignMasks", "ImportedMasks", "detect_format", "read_foreign", "infer_pattern",
           "native_masks", "import_masks"]

FORMATS = ("asp", "torch-ao", "zeros")
INFERRED = (NM(2, 4), Block(8, 8), Unstructured())  # tried in order after the file's own pattern
_ASP_KEY = re.compile(r"(?:(?P<layer>.*)\.)?__(?P<param>.+)_mma_(?P<what>mask|pruned_p)")
_AO_KEY = re.compile(r"(?:(?P<layer>.*)\.)?parametrizations\.(?P<param>[^.]+)\.(?P<rest>.+)")
_WRAPPERS = ("state_dict", "model_state_dict", "model_state", "model")  # where training scripts nest a state dict
_DDP_PREFIX = "module."


@dataclass
class ForeignMasks:
    """What another tool's file says: plain weights (keys as the unpruned model's) and element masks."""

    format: str
    weights: dict[str, Tensor]
    masks: dict[str, Tensor]                                  # layer -> bool element mask (weight-shaped)
    dense: dict[str, str] = field(default_factory=dict)      # layer -> why it stays dense
    hint: Pattern | None = None                               # the pattern the file's own settings name


@dataclass
class ImportedMasks:
    """A model carrying the imported masks, ready for ``save_checkpoint``."""

    model: nn.Module
    sparsifier: Sparsifier
    pattern: Pattern
    format: str
    dense: dict[str, str]


# ---- reading ---------------------------------------------------------------------------------------

def _tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(torch.is_tensor(v) for v in obj.values())


def _is_ao_sparsifier_state(obj: Any) -> bool:
    return isinstance(obj, Mapping) and isinstance(obj.get("state"), Mapping) and "groups" in obj


def _unwrap(obj: Any, source: str) -> dict[str, Tensor]:
    """The state dict in ``obj``: itself, or under a training script's usual key; DDP's ``module.``
    prefix removed."""
    state = obj if _tensor_dict(obj) else next(
        (obj[k] for k in _WRAPPERS if isinstance(obj, Mapping) and _tensor_dict(obj.get(k))), None)
    if state is None:
        if _is_ao_sparsifier_state(obj):
            raise ConfigError(source, ["is torch.ao's sparsifier state (masks only); give the model's state dict "
                                       "as the file and this one as the masks"])
        keys = f" (keys: {', '.join(map(str, list(obj)[:6]))})" if isinstance(obj, Mapping) else ""
        raise ConfigError(source, [f"expected a state dict (names -> tensors), or one under "
                                   f"{'/'.join(_WRAPPERS)}; got a {type(obj).__name__}{keys}"])
    if all(str(k).startswith(_DDP_PREFIX) for k in state):
        return {str(k)[len(_DDP_PREFIX):]: v for k, v in state.items()}
    return {str(k): v for k, v in state.items()}


def detect_format(state: Mapping[str, Any], masks_state: Any = None) -> str:
    """``asp`` if the state dict has ASP's mask buffers, ``torch-ao`` if it has parametrized weights or
    masks come separately, else ``zeros``."""
    if any(_ASP_KEY.fullmatch(k) for k in state):
        return "asp"
    if masks_state is not None or any(_AO_KEY.fullmatch(k) for k in state):
        return "torch-ao"
    return "zeros"


def _weight_only(layer: str, param: str, where: str) -> None:
    if param != "weight":
        raise ConfigError(where, [f"{layer or '<model>'}: masks parameter {param!r}; tilesparse masks the weights "
                                  "of Conv2d and Linear layers only"])


def _read_asp(state: Mapping[str, Tensor], source: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    weights, masks = {}, {}
    for key, value in state.items():
        m = _ASP_KEY.fullmatch(key)
        if m is None:
            weights[key] = value
            continue
        _weight_only(m["layer"] or "", m["param"], source)
        if m["what"] == "mask":
            masks[m["layer"] or ""] = value
    return weights, masks


def _read_ao_model(state: Mapping[str, Tensor], source: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    weights, masks = {}, {}
    for key, value in state.items():
        m = _AO_KEY.fullmatch(key)
        if m is None:
            weights[key] = value
            continue
        layer = m["layer"] or ""
        _weight_only(layer, m["param"], source)
        if m["rest"] == "original":
            weights[f"{layer}.weight" if layer else "weight"] = value
        elif m["rest"].endswith(".mask"):
            masks[layer] = value
        else:
            raise ConfigError(source, [f"{key}: a parametrization tilesparse does not know (expected torch.ao's "
                                       "'.original' weight or a FakeSparsity '.mask')"])
    return weights, masks


def _layer_of(fqn: str, source: str) -> str:
    layer, _, param = fqn.rpartition(".")
    _weight_only(layer, param, source)
    return layer


def _read_masks_state(obj: Any, source: str) -> tuple[dict[str, Tensor], Pattern | None]:
    """torch.ao's ``sparsifier.state_dict()`` (masks by tensor name, and the groups' settings), or a
    plain mapping of ``<layer>.weight`` -> mask."""
    if _is_ao_sparsifier_state(obj):
        bad = [k for k, v in obj["state"].items() if not (isinstance(v, Mapping) and torch.is_tensor(v.get("mask")))]
        if bad:
            raise ConfigError(source, [f"state[{bad[0]!r}] holds no 'mask' tensor (torch.ao's sparsifier state "
                                       "maps each tensor name to {'mask': tensor})"])
        masks = {_layer_of(str(k), source): v["mask"] for k, v in obj["state"].items()}
        return masks, _groups_pattern(obj.get("groups") or [])
    if _tensor_dict(obj):
        return {_layer_of(str(k), source): v for k, v in obj.items()}, None
    raise ConfigError(source, ["expected torch.ao's sparsifier.state_dict() ({'state': {'<layer>.weight': "
                               "{'mask': tensor}}, 'groups': [...]}) or a mapping '<layer>.weight' -> mask"])


def _groups_pattern(groups: list[Any]) -> Pattern | None:
    """The pattern torch.ao's WeightNormSparsifier settings name, when every group agrees on one."""
    keys = ("sparse_block_shape", "zeros_per_block", "sparsity_level")
    settings = {tuple(str(g.get(k)) for k in keys) for g in groups if isinstance(g, Mapping)}
    if len(settings) != 1 or not all(isinstance(g, Mapping) and "sparse_block_shape" in g for g in groups):
        return None
    g = groups[0]
    try:
        return from_torch_ao(tuple(g["sparse_block_shape"]), g.get("zeros_per_block"), g.get("sparsity_level"))
    except (ConfigError, TypeError, ValueError):  # settings tilesparse has no pattern for: infer from the masks
        return None


def _zeros_masks(weights: Mapping[str, Tensor], layers: Mapping[str, nn.Module]) -> dict[str, Tensor]:
    return {n: weights[f"{n}.weight" if n else "weight"] != 0 for n in layers
            if (f"{n}.weight" if n else "weight") in weights}


def read_foreign(model: nn.Module, obj: Any, fmt: str = "auto", masks_state: Any = None,
                 source: str = "file", masks_source: str = "masks") -> ForeignMasks:
    """Weights and element masks from another tool's saved state (see the module docstring), checked
    against ``model``'s layers: every mask names a Conv2d / Linear and broadcasts to its weight."""
    if fmt not in (*FORMATS, "auto"):
        raise ConfigError("format", [f"expected one of {', '.join(FORMATS)} or auto, got {fmt!r}"])
    state = _unwrap(obj, source)
    fmt = detect_format(state, masks_state) if fmt == "auto" else fmt
    hint: Pattern | None = NM(2, 4) if fmt == "asp" else None
    if fmt == "asp":
        weights, masks = _read_asp(state, source)
    elif fmt == "torch-ao":
        weights, masks = _read_ao_model(state, source)
    else:
        weights, masks = dict(state), {}
    if masks_state is not None:
        if fmt != "torch-ao":
            raise ConfigError(masks_source, [f"separate masks are torch.ao's; format {fmt} keeps its masks in the "
                                             "file itself"])
        more, hint = _read_masks_state(masks_state, masks_source)
        masks.update(more)
    layers = {n: m for n, m in model.named_modules() if _kind(m) is not None}
    if fmt == "zeros":
        masks = _zeros_masks(weights, layers)
    elif not masks:
        raise ConfigError(source, [_no_masks(fmt, state)])
    masks = _element_masks(model, layers, masks, source)
    dense = {n: _dense_reason(fmt, source) for n in layers if n not in masks}
    for n in [n for n, m in masks.items() if bool(m.all())]:
        dense[n] = "no zero weight" if fmt == "zeros" else "its mask keeps every weight"
        del masks[n]
    if not masks:
        raise ConfigError(source, [f"no layer has a zero in its {'weights' if fmt == 'zeros' else 'mask'}: "
                                   "nothing to import"])
    return ForeignMasks(fmt, weights, masks, {n: dense[n] for n in layers if n in dense}, hint)


def _no_masks(fmt: str, state: Mapping[str, Tensor]) -> str:
    if fmt == "asp":
        return "holds no ASP mask buffers ('<layer>.__weight_mma_mask'); use --format zeros for pruned weights"
    if any(_AO_KEY.fullmatch(k) for k in state):
        return ("holds torch.ao's parametrized weights but no masks (FakeSparsity saves none): pass "
                "sparsifier.state_dict() as the masks, or squash_mask() before saving and use format zeros")
    return "holds no torch.ao parametrizations and no masks were given; for a squashed model use format zeros"


def _dense_reason(fmt: str, source: str) -> str:
    return "no zero weight" if fmt == "zeros" else f"no mask in {source}"


def _element_masks(model: nn.Module, layers: Mapping[str, nn.Module], masks: Mapping[str, Tensor],
                   source: str) -> dict[str, Tensor]:
    """Each mask as a bool tensor of its layer's weight shape; every problem at once."""
    out, errs = {}, []
    for name, mask in masks.items():
        if name not in layers:
            errs.append(_not_a_layer(model, name, layers))
            continue
        shape = _geometry(layers[name])[0]
        try:
            out[name] = (mask != 0).expand(shape).contiguous()
        except RuntimeError:
            errs.append(f"{name or '<model>'}: mask of shape {tuple(mask.shape)} does not fit its weight {shape}")
    if errs:
        raise ConfigError(source, errs)
    return out


def _not_a_layer(model: nn.Module, name: str, layers: Mapping[str, nn.Module]) -> str:
    modules = dict(model.named_modules())
    if name in modules:
        return (f"{name}: a {type(modules[name]).__name__}; tilesparse sparsifies Conv2d and Linear layers "
                "(remove its mask to keep it dense)")
    return (f"{name}: no such layer in the model (its Conv2d / Linear layers: {', '.join(list(layers)[:8])}"
            f"{' ...' if len(layers) > 8 else ''})")


# ---- patterns --------------------------------------------------------------------------------------

Geometry = Mapping[str, tuple[tuple[int, ...], int]]  # layer -> (weight shape, groups)


def _violations(pattern: Pattern, masks: Mapping[str, Tensor], geometry: Geometry) -> list[str]:
    return [f"{name}: {p}" for name, m in masks.items() for p in pattern.check(m, *geometry[name])]


def infer_pattern(masks: Mapping[str, Tensor], geometry: Geometry, hint: Pattern | None = None) -> Pattern:
    """The first of (``hint``, 2:4, 8x8 blocks, unstructured) that every mask obeys."""
    for candidate in dict.fromkeys(((hint,) if hint is not None else ()) + INFERRED):
        if not _violations(candidate, masks, geometry):
            return candidate
    raise AssertionError("unstructured holds for any mask")  # pragma: no cover


def native_masks(pattern: Pattern, masks: Mapping[str, Tensor], geometry: Geometry,
                 source: str = "masks") -> dict[str, Tensor]:
    """Element masks -> the masks the sparsifier stores for ``pattern``: the unit grid of a grid pattern
    (each unit kept or zeroed whole), the element mask otherwise. ConfigError naming every layer
    whose mask breaks the pattern, and the rule."""
    errs = _violations(pattern, masks, geometry)
    if errs:
        raise ConfigError(f"{source} (pattern {pattern.spec()})", errs)
    if not isinstance(pattern, GridPattern):
        return {n: m.clone() for n, m in masks.items()}
    return {n: pattern.reduce(m.float(), *geometry[n]) > 0 for n, m in masks.items()}


def _observed(native: Mapping[str, Tensor], source: str) -> tuple[float, dict[str, float]]:
    """Zero units over all layers, and per layer; a layer masked whole is refused (a sparsity is < 1)."""
    full = [n for n, m in native.items() if not bool(m.any())]
    if full:
        raise ConfigError(source, [f"{n}: every weight is masked; tilesparse keeps part of every sparsified layer "
                                   "(leave the layer out, or remove it from the model)" for n in full])
    kept = sum(int(m.sum()) for m in native.values())
    total = sum(m.numel() for m in native.values())
    return 1.0 - kept / total, {n: 1.0 - float(m.float().mean()) for n, m in native.items()}


# ---- the sparsifier --------------------------------------------------------------------------------

def _geometry(layer: nn.Module) -> tuple[tuple[int, ...], int]:
    weight = layer.weight
    assert isinstance(weight, Tensor)  # a Conv2d / Linear
    return tuple(weight.shape), int(getattr(layer, "groups", 1))


def _literal(name: str) -> str:
    """``name`` as an fnmatch pattern matching itself alone (the recipe's ``exclude`` is glob patterns)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _recipe(model: nn.Module, pattern: Pattern, native: Mapping[str, Tensor], geometry: Geometry,
            source: str) -> Recipe:
    """A recipe that sparsifies exactly the masked layers with ``pattern``; a free level at the masks'
    observed sparsity (per layer, and overall)."""
    layers = {n: m for n, m in model.named_modules() if _kind(m) is not None}
    data: dict[str, Any] = {
        "pattern": pattern.spec(),
        "layer_types": sorted({_kind(layers[n]) for n in native}),  # "conv" < "linear"
        "exclude": [_literal(n) for n in layers if n not in native],
        "include_first_conv": first_conv_name(model) in native,
        "include_narrow": any(pattern.eligible(*geometry[n]) is not None for n in native),
    }
    if pattern.free_levels():
        data["sparsity"], data["layer_sparsity"] = _observed(native, source)
    return Recipe.from_dict(data, f"{source} (imported recipe)")


def import_masks(model: nn.Module, obj: Any, fmt: str = "auto", pattern: Pattern | None = None,
                 masks_state: Any = None, source: str = "file", masks_source: str = "masks") -> ImportedMasks:
    """Load another tool's weights into ``model`` (un-prepared) and attach its masks as ``pattern``'s
    (given, or inferred: see the module docstring). Layers without a mask stay dense."""
    foreign = read_foreign(model, obj, fmt, masks_state, source, masks_source)
    geometry = {n: _geometry(m) for n, m in model.named_modules() if n in foreign.masks}
    chosen = pattern if pattern is not None else infer_pattern(foreign.masks, geometry, foreign.hint)
    native = native_masks(chosen, foreign.masks, geometry, source)
    recipe = _recipe(model, chosen, native, geometry, source)
    load_plain_state(model, foreign.weights, source)
    sparsifier = Sparsifier(recipe).prepare(model)
    assert set(sparsifier.layers) == set(native), (set(sparsifier.layers), set(native))  # the recipe names them
    sparsifier.set_masks(native)
    for name, why in foreign.dense.items():
        sparsifier.skipped[name] = why
    return ImportedMasks(model, sparsifier, sparsifier.pattern if chosen.free_levels() else chosen,
                         foreign.format, foreign.dense)

