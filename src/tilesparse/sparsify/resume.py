"""What ``--resume`` compares: every setting that changes the result of a run.

A run's settings are its recipe (method, sparsity, pattern, selection, score, schedules...), its
training settings (epochs, lr, seed, batch size...) and what the caller adds (the model, the data).
Resuming with other settings would train the saved masks and weights under a recipe they were not
made by, so a difference is refused, naming each field with both values, unless overridden; an
override is recorded (which fields, from what to what, from which epoch). Some fields can never
change on resume: the saved masks, gates and optimizer state are made for them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tilesparse.errors import CheckpointError
from tilesparse.sparsify.recipe import Recipe, TrainingConfig

__all__ = ["Change", "FIXED", "TARGETS", "run_settings", "saved_settings", "compare", "check_targets",
           "override_record", "describe_overrides"]

# the saved masks (their layers and pattern), method state and optimizer state are made for these
FIXED = ("method", "pattern", "layer_types", "include_first_conv", "include_narrow", "exclude", "training.optimizer")
TARGETS = ("sparsity", "layer_sparsity")  # a change re-targets the masks (SparsityMethod.retarget)
_NESTED = ("incremental", "penalty")  # sub-configs compared field by field
_TRAINING = "training."  # prefix left out of the names shown (seed, epochs, lr ... as the flags say)


@dataclass(frozen=True)
class Change:
    field: str
    old: Any
    new: Any

    @property
    def fixed(self) -> bool:
        return self.field in FIXED


def run_settings(recipe: Recipe | None, training: TrainingConfig, extra: Mapping[str, Any] | None = None
                 ) -> dict[str, Any]:
    """The flat settings of a run: field name -> JSON value (``extra``: e.g. model, data)."""
    out: dict[str, Any] = {}
    if recipe is not None:
        for key, value in recipe.model_dump(mode="json").items():
            if key in _NESTED:
                out.update({f"{key}.{k}": v for k, v in value.items()})
            elif key not in ("training", "block"):  # block: the pattern's older spelling
                out[key] = value
    out.update({f"{_TRAINING}{k}": v for k, v in training.model_dump(mode="json").items()})
    out.update({k: v for k, v in (extra or {}).items() if v is not None})
    return out


def saved_settings(data: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The settings a checkpoint written by the Trainer was trained with."""
    from tilesparse.utils.config import validate_model

    extra = data.get("extra") or {}
    sp = data.get("sparsifier")
    recipe = validate_model(Recipe, sp["recipe"], f"{source} (recipe)") if sp else None
    training = validate_model(TrainingConfig, extra.get("training") or {}, f"{source} (training)")
    return run_settings(recipe, training, {"model": data.get("model_name"), **(extra.get("run") or {})})


def _same(a: Any, b: Any) -> bool:
    """Equal settings; a data file is the same by its sha256, wherever it lies."""
    if isinstance(a, Mapping) and isinstance(b, Mapping) and "sha256" in a and "sha256" in b:
        return bool(a["sha256"] == b["sha256"])
    return bool(a == b)


def _show(field: str, value: Any) -> str:
    if field == "block" and isinstance(value, list) and len(value) == 2:
        return f"{value[0]}x{value[1]}"
    if isinstance(value, Mapping) and "sha256" in value:
        return f"{value.get('name')} (sha256 {str(value['sha256'])[:12]})"
    return value if isinstance(value, str) else json.dumps(value)


def _name(field: str) -> str:
    return field[len(_TRAINING):] if field.startswith(_TRAINING) else field


def _listing(changes: list[Change], side: str) -> str:
    return ", ".join(f"{_name(c.field)} {_show(c.field, getattr(c, side))}" for c in changes)


def compare(saved: Mapping[str, Any], now: Mapping[str, Any], path: str, override: bool) -> list[Change]:
    """The changes from ``saved`` to ``now``; ``CheckpointError`` (one line, each field with both values)
    if there are any and not ``override``, or if a fixed field changed."""
    fields = list(dict.fromkeys([*now, *saved]))
    changes = [Change(f, saved.get(f), now.get(f)) for f in fields if not _same(saved.get(f), now.get(f))]
    if not changes:
        return []
    head = (f"--resume: {path} was trained with {_listing(changes, 'old')}; this command asks "
            f"{_listing(changes, 'new')}")
    fixed = [c for c in changes if c.fixed]
    if fixed:
        names = " and ".join(_name(c.field) for c in fixed)
        raise CheckpointError(f"{head}; {names} cannot change on resume (the saved masks, method state and "
                              f"optimizer state depend on {'them' if len(fixed) > 1 else 'it'}): give the same "
                              "values, or sparsify into another --out")
    if not override:
        raise CheckpointError(f"{head}; give the same values, or --override to continue with the new ones")
    return changes


def check_targets(saved: Mapping[str, Any], targets: Mapping[str, float], path: str) -> None:
    """Refuse an override that lowers a layer's target sparsity (``targets``: the new ones, by layer):
    pruned units stay pruned."""
    per_layer, default = saved.get("layer_sparsity") or {}, saved.get("sparsity", 0.0)
    lower = [(n, per_layer.get(n, default), t) for n, t in targets.items() if t < per_layer.get(n, default)]
    if lower:
        shown = ", ".join(f"{n} {a:g} -> {b:g}" for n, a, b in lower[:3]) + (" ..." * (len(lower) > 3))
        raise CheckpointError(f"--override: {path}: the new recipe lowers the target sparsity of layer {shown}, "
                              "and pruned units stay pruned; keep or raise the targets, or sparsify into another "
                              "--out")


def override_record(changes: list[Change], epoch: int) -> dict[str, Any]:
    """What the checkpoint and recipe.yaml record of an override (``epoch``: first epoch, from 0)."""
    return {"epoch": epoch, "changed": {c.field: [c.old, c.new] for c in changes}}


def describe_overrides(records: list[Mapping[str, Any]]) -> list[str]:
    """One line per override, e.g. ``resumed with --override from epoch 3: sparsity 0.5 -> 0.75``."""
    return [f"resumed with --override from epoch {int(r['epoch']) + 1}: " + ", ".join(
        f"{_name(f)} {_show(f, old)} -> {_show(f, new)}" for f, (old, new) in r["changed"].items())
        for r in records]
