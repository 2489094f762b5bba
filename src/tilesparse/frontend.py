"""One call from a model (or its name) to the graph the back end and the simulator consume:
capture → lower → attach block masks → quantize."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from tilesparse.ir.capture import DEFAULT_INPUT_SHAPE, capture
from tilesparse.ir.graph import Graph
from tilesparse.passes import attach_block_masks, lower

if TYPE_CHECKING:
    from tilesparse.quant.sdq_graph import SDQConfig

__all__ = ["build_graph", "default_input_shape", "random_calibration"]


def default_input_shape(name: str | None) -> tuple[int, ...]:
    """(1, C, H, W) from ``tilesparse.models.zoo.INPUT_SHAPES`` for a zoo name, else 1×3×224×224."""
    from tilesparse.models.zoo import INPUT_SHAPES

    chw = INPUT_SHAPES.get(name or "")
    return (1, *chw) if chw else DEFAULT_INPUT_SHAPE


def random_calibration(shape: Sequence[int], n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` seeded standard-normal inputs (what a normalized image batch looks like)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(shape)).astype(np.float32) for _ in range(n)]


def build_graph(
    model: nn.Module | str,
    *,
    input_shape: Sequence[int] | None = None,
    block: tuple[int, int] = (8, 8),
    calib_inputs: Sequence[np.ndarray | torch.Tensor] | None = None,
    n_calib: int = 2,
    per_channel: bool = False,
    quantized: bool = True,
    seed: int = 0,
    sdq: SDQConfig | Sequence[SDQConfig] | None = None,
) -> Graph:
    """Capture, lower, mask and (optionally) quantize ``model``.

    Args:
        model: an ``nn.Module`` or a zoo name (``tilesparse.models.get_model(name, seed=seed)``).
        input_shape: NCHW input; defaults from ``INPUT_SHAPES`` for zoo names, else 1×3×224×224.
        block: block shape (b_o, b_i) of the masks.
        calib_inputs: calibration inputs; ``n_calib`` seeded random ones if None.
        per_channel: per-output-channel weight exponents instead of per-tensor.
        quantized: False stops after masks (a float graph).
        seed: for the zoo model's random weights and the random calibration inputs.
        sdq: layers to quantize as SDQ parts (``quant.SDQConfig``; integer reference only).

    Example:
        >>> g = build_graph("resnet18", input_shape=(1, 3, 64, 64), quantized=False)
        >>> g.node("conv1").attrs["block"]
        (8, 8)
    """
    name = model if isinstance(model, str) else None
    if isinstance(model, str):
        from tilesparse.models import get_model

        model = get_model(model, seed=seed)
    shape = tuple(input_shape) if input_shape is not None else default_input_shape(name)
    g = capture(model, shape, name=name or type(model).__name__)
    g = attach_block_masks(lower(g), block)
    if not quantized:
        return g
    from tilesparse.quant import quantize

    calib = list(calib_inputs) if calib_inputs is not None else random_calibration(shape, n_calib, seed)
    # an imported QDQ model (ir.onnx_import) fixes its power-of-two activation exponents
    return quantize(g, calib, per_channel=per_channel, sdq=sdq, exponents=getattr(model, "qdq_exponents", None))
