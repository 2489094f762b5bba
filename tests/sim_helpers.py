"""Shared set-up of the simulator tests: zoo graphs at reduced resolutions (built once per worker),
compiled programs, and the differential check against the integer reference."""

from __future__ import annotations

import functools

import numpy as np
from torch import nn

from tilesparse.compiler.pipeline import compile_graph
from tilesparse.frontend import build_graph
from tilesparse.ir.graph import Graph, Op
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


def block_sparse(graph: Graph, sparsity: float = SPARSITY) -> Graph:
    """The same int8 network with the ``sparsity`` fraction of lowest-L2 8x8 blocks of every conv
    but the first zeroed and masked (the paper's setting), without a second capture and
    calibration: the integer reference and the program both run exactly these int8 weights."""
    params = dict(graph.params)
    for n in graph.of(Op.CONV2D)[1:]:
        w = params[f"{n.name}.weight"]
        o, i = w.shape[:2]
        bo, bi = n.attrs.get("block", BLOCK)
        rows, cols = -(-o // bo), -(-i // bi)
        sq = np.zeros((rows * bo, cols * bi))
        sq[:o, :i] = (w.astype(np.float64) ** 2).sum(axis=(2, 3))
        score = sq.reshape(rows, bo, cols, bi).sum(axis=(1, 3))
        keep = np.zeros(score.size, bool)
        keep[np.argsort(score, axis=None, kind="stable")[round(sparsity * score.size):]] = True
        keep = keep.reshape(rows, cols)
        full = np.repeat(np.repeat(keep, bo, 0), bi, 1)[:o, :i]
        params[f"{n.name}.weight"] = (w * full[:, :, None, None]).astype(np.int8)
        params[f"{n.name}.mask"] = keep
    return Graph(graph.nodes, params, graph.name)


@functools.cache
def zoo_graphs(name: str) -> tuple[Graph, Graph]:
    """(dense, 50 % 8x8 block-sparse) quantized graphs of a zoo network, random weights."""
    px = RESOLUTION[name]
    dense = build_graph(_model(name), input_shape=(1, 3, px, px), block=BLOCK)
    return dense, block_sparse(dense)


@functools.cache
def zoo_program(name: str, sparse: bool, array: str):
    g = zoo_graphs(name)[int(sparse)]
    return g, compile_graph(g, array)


def check_bit_exact(graph: Graph, program, seed: int = 1):
    """Verify on a seeded input; every layer must be bit-exact. Returns the report."""
    x = np.random.default_rng(seed).standard_normal(graph.inputs[0].out.shape).astype(np.float32)
    rep = verify(program, graph, x, progress=False)
    assert rep.ok, rep.summary()
    return rep
