"""What the weight double-buffering and cross-layer prefetch tests share: the array with either
mechanism set, the TinyResNet graph they compile, and the estimates from before both mechanisms."""

from __future__ import annotations

import torch
from frontend_nets import TinyResNet

from tilesparse.build import build_graph_from
from tilesparse.hw import load_array

SHAPE = (1, 3, 32, 32)
# The estimates of these programs compiled before either mechanism existed (LOADWM always halting,
# no prefetch; the same graphs, torch seed 0; conv1's matmul padded per tap): both flags off must
# give them back exactly.
BEFORE = {(0.0, "4x4"): 2.0485e-06, (0.0, "4x2"): 3.15025e-06,
          (0.5, "4x4"): 1.9825e-06, (0.5, "4x2"): 2.8385e-06}


def flags(arr: str, double: bool, prefetch: bool):
    """The ``arr`` preset with ``core.weight_double_buffer`` and ``memtile.weight_prefetch`` set."""
    hw = load_array(arr)
    return hw.model_copy(update={"core": hw.core.model_copy(update={"weight_double_buffer": double}),
                                 "memtile": hw.memtile.model_copy(update={"weight_prefetch": prefetch})})


def tiny_graph(sparsity: float, quantized: bool):
    torch.manual_seed(0)
    return build_graph_from(TinyResNet(), sparsity=sparsity, block=(8, 8), input_shape=SHAPE,
                            quantized=quantized, seed=0)
