"""Shared set-up of the simulator tests: zoo graphs at reduced resolutions (built once per worker),
compiled programs, and the differential checks against the integer reference and, where the
module is at hand, against PyTorch in float."""

from __future__ import annotations

import functools

import numpy as np
from torch import nn

from tilesparse.build import Built, build_graph_from
from tilesparse.compiler.pipeline import compile_graph
from tilesparse.ir.graph import Graph
from tilesparse.models import get_model
from tilesparse.sim import verify

# Smallest inputs the three networks compile at: ResNet50 at 32 px (1x1 before the pool),
# Inception v3 at 75 px (torchvision's minimum), VGG16 at 32 px with the 7x7 adaptive pool
# replaced by a 1x1 one (a 1x1 map cannot pool to 7x7 in equal windows) so its classifier reads
# 512 features instead of 25088 — the other classifier layers are VGG16's own.
RESOLUTION = {"resnet50": 32, "inception_v3": 75, "vgg16": 32}
SPARSITY = 0.5
BLOCK = (8, 8)


def _model(name: str) -> nn.Module:
    m = get_model(name, seed=0)
    if name == "vgg16":
        m.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        m.classifier[0] = nn.Linear(512, 4096)
    return m


@functools.cache
def zoo_build(name: str, sparse: bool) -> Built:
    """A zoo network dense or 50 % 8x8 block-sparse, random weights, through the front door (its
    one-shot pruning before quantization, on a copy of the model): the quantized graph and the
    float module it was captured from."""
    px = RESOLUTION[name]
    return build_graph_from(_model(name), sparsity=SPARSITY if sparse else None, block=BLOCK,
                            input_shape=(1, 3, px, px))


@functools.cache
def zoo_program(name: str, sparse: bool, array: str):
    g = zoo_build(name, sparse).graph
    return g, compile_graph(g, array)


def check_bit_exact(graph: Graph, program, seed: int = 1, module: nn.Module | None = None):
    """Verify on a seeded input; every layer must be bit-exact and, given the ``module`` the graph
    was captured from, within tolerance of it in float (tilesparse.sim.torch_oracle). Returns the
    report."""
    x = np.random.default_rng(seed).standard_normal(graph.inputs[0].out.shape).astype(np.float32)
    rep = verify(program, graph, x, module=module, progress=False)
    assert rep.ok, rep.summary()
    return rep
