"""Sparsification recipe: everything that defines a run, validated (pydantic, unknown fields rejected).

Load one with ``Recipe.from_yaml(path)`` or build it in Python: ``Recipe(method="incremental",
sparsity=0.75)``, ``Recipe(pattern="2:4")``, ``Recipe(pattern="8x8@0.5/2:4")``. Bad fields raise
``ConfigError`` naming the file and every problem at once.

``pattern`` (any ``patterns.grammar`` form: ``"8x8"``, ``"2:4"``, ``"8x8@0.5/2:4"``, a dict) is the
sparsity structure; ``block`` is the older way to say ``pattern: OUTxIN`` and is kept for recipes and
checkpoints written before patterns. Left out, ``sparsity`` is the pattern's own (0.5 for 2:4, 0.75
for 8x8@0.5/2:4; 0.5 for a pattern with a free level) and ``selection`` the pattern's default
(balanced rows for blocks, as the paper).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tilesparse.errors import ConfigError
from tilesparse.patterns.block import BlockShape, parse_block_shape
from tilesparse.patterns.family import NM, Block, GridPattern, Hierarchical, Pattern, Unstructured
from tilesparse.patterns.grammar import as_pattern
from tilesparse.patterns.selection import sparsity_problem
from tilesparse.utils.config import Float, Int, StrictModel, load_yaml_model, validate_model

__all__ = ["Recipe", "TrainingConfig", "IncrementalConfig", "PenaltyConfig", "Method", "Score", "Selection"]

Method = Literal["oneshot", "incremental", "penalty"]
Score = Literal["l1", "l2", "variance", "taylor", "fisher", "hessian"]
Selection = Literal["layer", "global", "balanced_rows", "balanced_cols"]
Schedule = Literal["linear", "cubic"]
LrSchedule = Literal["constant", "step", "cosine"]
DEFAULT_SPARSITY = 0.5  # of a pattern with a free level when the recipe names none
LayerType = Literal["conv", "linear"]

# Paper defaults: the authors' incremental code gives more sensitive layers smaller steps.
PAPER_RANKED_STEPS = (0.12, 0.08, 0.05)


_Strict = StrictModel  # unknown fields refused, finite floats, no booleans for numbers


class TrainingConfig(_Strict):
    """Fine-tuning loop settings (used by ``tilesparse sparsify`` and ``Trainer``).

    ``lr_schedule`` (``sparsify.schedule``), set at the start of every epoch: ``constant``; ``step``
    (times ``lr_gamma`` every ``lr_step_epochs``); ``cosine`` (from ``lr`` to ``lr_min`` over ``epochs``).
    ``label_smoothing``: of the training loss (cross entropy), as Inception-v3 was trained."""

    epochs: Int = Field(10, ge=0)
    lr: Float = Field(0.01, gt=0)
    momentum: Float = Field(0.9, ge=0, lt=1)
    weight_decay: Float = Field(5e-4, ge=0)
    batch_size: Int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    seed: Int = 0
    amp: Literal["none", "bf16", "fp16"] = "none"  # mixed precision of the forward pass (sparsify.precision)
    accumulate: Int = Field(1, ge=1)  # micro-batches summed per optimizer step (effective batch: batch_size * this)
    lr_schedule: LrSchedule = "constant"
    lr_step_epochs: Int = Field(30, ge=1)
    lr_gamma: Float = Field(0.1, gt=0, le=1)
    lr_min: Float = Field(0.0, ge=0)
    label_smoothing: Float = Field(0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _lr_min_below_lr(self) -> TrainingConfig:
        if self.lr_min >= self.lr:
            raise ValueError(f"lr_min: {self.lr_min:g} must be below lr {self.lr:g} (the cosine schedule falls "
                             "from lr to lr_min)")
        return self


class IncrementalConfig(_Strict):
    """Gradual pruning: every ``every_epochs`` epochs each layer's sparsity rises until the target.

    ``linear``: by its step (a fraction of all its units, at least one unit) each time. ``cubic``
    (Zhu & Gupta 2017): in ceil(target / step) steps along s_j = target * (1 - (1 - j / n)^3), large
    steps first while the network has redundancy, small ones near the target."""

    every_epochs: Int = Field(1, ge=1)
    step: Float = Field(0.1, gt=0, le=1)
    schedule: Schedule = "linear"
    layer_steps: dict[str, Float] = Field(default_factory=dict)
    hessian_ranked_steps: bool = False
    ranked_steps: tuple[Float, Float, Float] = PAPER_RANKED_STEPS

    @field_validator("layer_steps")
    @classmethod
    def _steps_in_range(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [f"{k}={s}" for k, s in v.items() if not 0 < s <= 1]
        if bad:
            raise ValueError(f"steps must be in (0, 1], got {', '.join(bad)}")
        return v


class PenaltyConfig(_Strict):
    """Trainable soft mask Gamma with the paper's log-sum-exp penalty
    lambda = -(LSE_max(Gamma) - LSE_min(Gamma)) + beta * ||Gamma - T||_2 + iota * ||Gamma||_1."""

    alpha: Float = Field(100.0, gt=0)
    beta: Float = Field(1e-3, ge=0)
    iota: Float = Field(1e-3, ge=0)
    weight: Float = Field(1.0, ge=0)
    target_density: Float | None = Field(None, gt=0, le=1)
    epochs: Int | None = Field(None, ge=1)
    gate_lr: Float = Field(0.01, gt=0)


class Recipe(_Strict):
    """What to sparsify, how, and how to train it."""

    method: Method = "oneshot"
    sparsity: Float | None = None
    pattern: str | None = None
    block: tuple[Int, Int] | None = None
    score: Score = "l2"
    selection: Selection | None = None
    allow_empty_rows: bool = False
    layer_types: tuple[LayerType, ...] = ("conv",)
    include_first_conv: bool = False
    include_narrow: bool = False
    exclude: tuple[str, ...] = ()
    layer_sparsity: dict[str, Float] = Field(default_factory=dict)
    score_batches: Int = Field(8, ge=1)
    bn_recalibration_batches: Int = Field(16, ge=0)  # after each pruning step; 0 = off
    hutchinson_samples: Int = Field(4, ge=1)
    incremental: IncrementalConfig = Field(default_factory=IncrementalConfig)
    penalty: PenaltyConfig = Field(default_factory=PenaltyConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @field_validator("pattern", mode="before")
    @classmethod
    def _pattern(cls, v: Any) -> str | None:
        if v is None:
            return None
        try:
            return as_pattern(v, "pattern").spec()  # canonical text: a file's pattern travels with the recipe
        except ConfigError as e:
            raise ValueError("; ".join(e.errors)) from None

    @field_validator("block", mode="before")
    @classmethod
    def _block(cls, v: Any) -> tuple[int, int] | None:
        if v is None:
            return None
        if isinstance(v, (int, float)):
            raise ValueError(f"expected 'OUTxIN' or [out, in], got {v!r}")
        try:
            b = parse_block_shape(v)
        except ConfigError as e:  # -> pydantic error with the same text
            raise ValueError("; ".join(e.errors)) from None
        return (b.out, b.in_)

    @field_validator("sparsity")
    @classmethod
    def _target(cls, v: float | None) -> float | None:
        if v is None:
            return None  # the pattern's own (_resolve)
        problem = sparsity_problem(v)  # the one rule and wording of every verb's --sparsity
        if problem is not None:
            raise ValueError(problem)
        return v

    @field_validator("layer_sparsity")
    @classmethod
    def _layer_targets(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [f"{k}: {p}" for k, p in ((k, sparsity_problem(s)) for k, s in v.items()) if p is not None]
        if bad:
            raise ValueError("; ".join(bad))
        return v

    @model_validator(mode="after")
    def _resolve(self) -> Recipe:
        """pattern <-> block, then the pattern's own sparsity and selection where none is given.
        Filled fields stay out of ``model_fields_set``: overriding the pattern re-derives them."""
        pattern = self._given_pattern()
        if self.sparsity is None:
            object.__setattr__(self, "sparsity", pattern.nominal_sparsity() if not pattern.free_levels()
                               else DEFAULT_SPARSITY)
        try:
            pattern.with_sparsity(self.sparsity)
        except ConfigError as e:
            raise ValueError(f"sparsity: {e.source} " + "; ".join(e.errors)) from None
        object.__setattr__(self, "pattern", pattern.spec())
        object.__setattr__(self, "block", (pattern.out, pattern.in_) if isinstance(pattern, Block) else None)
        if self.selection is None:
            object.__setattr__(self, "selection", pattern.selection_default())
        problems = _method_problems(self, pattern)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def _given_pattern(self) -> Pattern:
        if self.pattern is None:
            return Block(*(self.block or (8, 8)))
        pattern = as_pattern(self.pattern)
        if "block" in self.model_fields_set and self.block is not None and (
                not isinstance(pattern, Block) or (pattern.out, pattern.in_) != tuple(self.block)):
            raise ValueError(f"block: {self.block[0]}x{self.block[1]} and pattern {pattern.spec()} disagree; "
                             "give only pattern (block is its older spelling)")
        return pattern

    @property
    def sparsity_pattern(self) -> Pattern:
        """The recipe's pattern, free level still free (``layer_pattern`` fills it)."""
        assert self.pattern is not None  # filled by _resolve
        return as_pattern(self.pattern)

    def layer_pattern(self, sparsity: float | None = None) -> Pattern:
        """The pattern at ``sparsity`` (default: the recipe's), every level fixed."""
        return self.sparsity_pattern.with_sparsity(self.sparsity if sparsity is None else sparsity)

    @property
    def block_shape(self) -> BlockShape:
        """The block shape of a block-pattern recipe (ConfigError for other patterns)."""
        if self.block is None:
            raise ConfigError("recipe", [f"pattern {self.pattern} is not a block pattern (no block shape)"])
        return BlockShape(*self.block)

    @classmethod
    def from_yaml(cls, path: str | Path) -> Recipe:
        return load_yaml_model(cls, path)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "recipe") -> Recipe:
        return validate_model(cls, data, source)

    def to_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _element_wise(pattern: Pattern) -> bool:
    """Patterns whose mask is chosen weight by weight somewhere (N:M, unstructured, hierarchies)."""
    return any(isinstance(lv, (NM, Unstructured)) for lv in pattern.levels()) or isinstance(pattern, Hierarchical)


def _method_problems(recipe: Recipe, pattern: Pattern) -> list[str]:
    """Combinations of pattern, score, selection and method that have no meaning."""
    problems = []
    if recipe.score == "variance" and _element_wise(pattern):
        problems.append(f"score: variance of a single weight is 0; pattern {pattern.spec()} "
                        "selects single weights or N:M runs (use l1, l2 or a gradient score)")
    if not isinstance(pattern, GridPattern):
        if recipe.method == "penalty":
            problems.append(f"method: penalty trains soft gates, one per unit of a grid pattern; pattern "
                            f"{pattern.spec()} has none (use oneshot or incremental)")
        if recipe.selection in ("global", "balanced_rows", "balanced_cols") and isinstance(pattern, NM):
            problems.append(f"selection: {recipe.selection} has nothing to choose under N:M, which keeps N of "
                            "every M everywhere (leave selection out)")
        if recipe.selection == "global" and isinstance(pattern, Hierarchical):
            problems.append("selection: global does not apply to a hierarchy, selected layer by layer (use layer or "
                            "balanced_rows)")
    return problems
