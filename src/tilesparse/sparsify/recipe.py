"""Sparsification recipe: everything that defines a run, validated (pydantic, unknown fields rejected).

Load one with ``Recipe.from_yaml(path)`` or build it in Python: ``Recipe(method="incremental",
sparsity=0.75)``. Bad fields raise ``ConfigError`` naming the file and every problem at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from tilesparse.errors import ConfigError
from tilesparse.patterns.block import BlockShape, parse_block_shape
from tilesparse.patterns.selection import sparsity_problem
from tilesparse.utils.config import Float, Int, StrictModel, load_yaml_model, validate_model

__all__ = ["Recipe", "TrainingConfig", "IncrementalConfig", "PenaltyConfig", "Method", "Score", "Selection"]

Method = Literal["oneshot", "incremental", "penalty"]
Score = Literal["l1", "l2", "variance", "taylor", "fisher", "hessian"]
Selection = Literal["layer", "global", "balanced_rows", "balanced_cols"]
LayerType = Literal["conv", "linear"]

# Paper defaults: the authors' incremental code gives more sensitive layers smaller steps.
PAPER_RANKED_STEPS = (0.12, 0.08, 0.05)


_Strict = StrictModel  # unknown fields refused, finite floats, no booleans for numbers


class TrainingConfig(_Strict):
    """Fine-tuning loop settings (used by ``tilesparse sparsify`` and ``Trainer``)."""

    epochs: Int = Field(10, ge=0)
    lr: Float = Field(0.01, gt=0)
    momentum: Float = Field(0.9, ge=0, lt=1)
    weight_decay: Float = Field(5e-4, ge=0)
    batch_size: Int = Field(64, ge=1)
    optimizer: Literal["sgd", "adam"] = "sgd"
    seed: Int = 0


class IncrementalConfig(_Strict):
    """Gradual pruning: every ``every_epochs`` epochs each layer's sparsity rises by its step
    (a fraction of all its blocks, at least one block) until the target."""

    every_epochs: Int = Field(1, ge=1)
    step: Float = Field(0.1, gt=0, le=1)
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
    sparsity: Float = 0.5
    block: tuple[Int, Int] = (8, 8)
    score: Score = "l2"
    selection: Selection = "balanced_rows"
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

    @field_validator("block", mode="before")
    @classmethod
    def _block(cls, v: Any) -> tuple[int, int]:
        if isinstance(v, (int, float)) or v is None:
            raise ValueError(f"expected 'OUTxIN' or [out, in], got {v!r}")
        try:
            b = parse_block_shape(v)
        except ConfigError as e:  # -> pydantic error with the same text
            raise ValueError("; ".join(e.errors)) from None
        return (b.out, b.in_)

    @field_validator("sparsity")
    @classmethod
    def _target(cls, v: float) -> float:
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

    @property
    def block_shape(self) -> BlockShape:
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
