"""Checkpoints of a model trained to a composite pattern: TASD terms (``sparsify.tasd``) or SDQ parts
(``sparsify.sdq_train``).

    tasd_model(model, "2:4+1:4"); finetune_terms(model, loader)          # or sdq_model + finetune_sdq
    save_composite_checkpoint("runs/t/sparse.pt", model, model_name="digits_cnn")

The file is an ordinary checkpoint (``sparsify.checkpoint``, checksummed, ``sparsifier`` None) whose
``model_state`` holds the plain weights — the sum of the terms, or the parts' dequantized sum
unscaled by the folded BatchNorm — plus a ``composite`` entry::

    composite: {"pattern": "2:4+1:4", "layers": {name: {"terms": [spec, ...], "values": (k, *shape)}}}
    composite: {"pattern": "int8-2:4+int4",
                "layers": {name: {"sparse": int8, "sparse_exp": int, "dense": int8, "dense_exp": int, "mask": bool}}}

``tilesparse compile sparse.pt`` compiles a TASD checkpoint as its trained terms squashed and an SDQ
checkpoint from its parts as stored (``read_composite`` checks both first and names the file and the
field of whatever is wrong).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tilesparse.errors import CheckpointError, ConfigError
from tilesparse.patterns.composite import SDQPattern, TASDPattern, parse_composite
from tilesparse.patterns.grammar import parse_pattern
from tilesparse.quant.sdq import SDQ
from tilesparse.sparsify.checkpoint import save_checkpoint
from tilesparse.sparsify.sdq_train import parts_record, sdq_parametrizations, squash_sdq
from tilesparse.sparsify.tasd import export_terms, squash_terms, term_layers

__all__ = ["CompositeWeights", "read_composite", "save_composite_checkpoint"]


@dataclass(frozen=True)
class CompositeWeights:
    """What a composite checkpoint carries: its pattern and, for SDQ, each layer's parts (module path
    -> ``quant.sdq.SDQ``); for TASD, each layer's term patterns."""

    pattern: TASDPattern | SDQPattern
    parts: dict[str, SDQ] = field(default_factory=dict)
    terms: dict[str, tuple[str, ...]] = field(default_factory=dict)


def save_composite_checkpoint(path: str | Path, model: nn.Module, *, model_name: str | None = None,
                              extra: dict[str, Any] | None = None) -> Path:
    """Write a model holding TASD terms or SDQ parts (not both) as a composite checkpoint; the model
    itself is left as it is (a copy is squashed)."""
    m = copy.deepcopy(model)
    has_terms, has_parts = bool(term_layers(m)), bool(sdq_parametrizations(m))
    if has_terms == has_parts:
        what = "both TASD terms and SDQ parts" if has_terms else "neither TASD terms nor SDQ parts"
        raise ConfigError("save_composite_checkpoint", [f"the model holds {what}; expected exactly one"])
    if has_terms:
        terms = export_terms(m)
        lists = {tuple(t.pattern for t in ts) for ts in terms.values()}
        if len(lists) != 1:
            raise ConfigError("save_composite_checkpoint", [f"layers carry different term lists {sorted(lists)}; "
                                                            "a checkpoint carries one pattern"])
        squash_terms(m)
        spec = "+".join(next(iter(lists)))
        layers: dict[str, Any] = {n: {"terms": [t.pattern for t in ts],
                                      "values": torch.stack([t.weight for t in ts])} for n, ts in terms.items()}
    else:
        specs = {p.pattern.spec() for _, p in sdq_parametrizations(m).values()}
        if len(specs) != 1:
            raise ConfigError("save_composite_checkpoint", [f"layers carry different SDQ patterns {sorted(specs)}; "
                                                            "a checkpoint carries one pattern"])
        parts = squash_sdq(m)
        spec = specs.pop()
        layers = {n: parts_record(d) for n, d in parts.items()}
    return save_checkpoint(path, m, model_name=model_name, extra=extra,
                           composite={"pattern": spec, "layers": layers})


def read_composite(entry: Any, path: Path, model: nn.Module) -> CompositeWeights:
    """Check a checkpoint's ``composite`` entry against the loaded ``model`` and return it; a
    ``CheckpointError`` names the file and the field of the first problem in each layer."""
    where = f"{path}: field composite"
    if not isinstance(entry, dict) or not isinstance(entry.get("layers"), dict) or not entry["layers"]:
        raise CheckpointError(f"{where}: expected {{'pattern': ..., 'layers': {{name: ...}}}} with layers")
    try:
        pattern = parse_composite(entry.get("pattern"), f"{where}.pattern")
    except ConfigError as e:
        raise CheckpointError(str(e)) from None
    if pattern is None:
        raise CheckpointError(f"{where}.pattern: {entry.get('pattern')!r} is not a TASD or SDQ pattern")
    mods = dict(model.named_modules())
    errs, parts, terms = [], {}, {}
    for name, rec in entry["layers"].items():
        m = mods.get(name)
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            errs.append(f"{where}.layers.{name}: the model has no conv or linear layer {name!r}")
            continue
        w, groups = m.weight.detach(), getattr(m, "groups", 1)
        if isinstance(pattern, TASDPattern):
            why = _tasd_problem(rec, pattern, w, groups)
            terms[name] = tuple(rec.get("terms", ()))
        else:
            d, why = _sdq_parts(rec, pattern, w, groups)
            if d is not None:
                parts[name] = d
        if why:
            errs.append(f"{where}.layers.{name}.{why}")
    if errs:
        raise CheckpointError("; ".join(errs))
    return CompositeWeights(pattern, parts, terms)


def _tasd_problem(rec: Any, pattern: TASDPattern, w: torch.Tensor, groups: int) -> str | None:
    """What is wrong with one layer's terms: a term list other than the pattern's, a term breaking
    its pattern, or terms whose sum is not the layer's weight."""
    if not isinstance(rec, dict) or not isinstance(rec.get("values"), torch.Tensor):
        return "values: missing"
    want = [t.spec() for t in pattern.terms]
    if list(rec.get("terms", ())) != want:
        return f"terms: {rec.get('terms')!r}, the pattern's are {want}"
    values = rec["values"]
    if tuple(values.shape) != (len(want), *w.shape):
        return f"values: shape {tuple(values.shape)}, expected {(len(want), *w.shape)}"
    for spec, v in zip(want, values, strict=True):
        broken = parse_pattern(spec).check(v != 0, tuple(w.shape), groups)
        if broken:
            return f"values: term {spec} breaks its pattern: {broken[0]}"
    if not torch.allclose(values.sum(0).to(w.dtype), w, rtol=1e-6, atol=1e-7):
        return "values: the terms do not sum to the layer's weight in model_state"
    return None


def _sdq_parts(rec: Any, pattern: SDQPattern, w: torch.Tensor, groups: int) -> tuple[SDQ | None, str | None]:
    """One layer's parts as a ``quant.sdq.SDQ``, or what is wrong with them."""
    if not isinstance(rec, dict):
        return None, "parts: missing"
    for key in ("sparse", "dense", "mask"):
        t = rec.get(key)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(w.shape):
            return None, f"{key}: expected a tensor of the weight's shape {tuple(w.shape)}"
    for key in ("sparse_exp", "dense_exp"):
        if not isinstance(rec.get(key), int) or isinstance(rec.get(key), bool):
            return None, f"{key}: expected an integer exponent, got {rec.get(key)!r}"
    sparse, dense = rec["sparse"].numpy().astype(np.int64), rec["dense"].numpy().astype(np.int64)
    mask = rec["mask"].numpy().astype(bool)
    for key, q, bits in (("sparse", sparse, pattern.sparse_bits), ("dense", dense, pattern.dense_bits)):
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
        if q.size and not lo <= q.min() <= q.max() <= hi:
            return None, f"{key}: codes {q.min()}..{q.max()} outside int{bits} [{lo}, {hi}]"
    if (sparse[~mask] != 0).any():
        return None, "sparse: non-zero codes off the mask"
    broken = pattern.sparse.check(torch.from_numpy(mask), tuple(w.shape), groups)
    if broken:
        return None, f"mask: breaks {pattern.sparse.spec()}: {broken[0]}"
    return SDQ(pattern.sparse, sparse, rec["sparse_exp"], dense, rec["dense_exp"], pattern.sparse_bits,
               pattern.dense_bits, mask), None
