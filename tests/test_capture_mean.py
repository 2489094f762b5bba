"""A mean over H×W (``x.mean([2, 3])``, as in mnasnet) is captured as the global average pool (+
flatten without keepdim): the same graph and Program as ``nn.AdaptiveAvgPool2d(1)`` + flatten, compiled
and simulated bit-exact; any other reduction is a one-line error naming its dims."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from tilesparse.build import build_graph_from, compile_source
from tilesparse.errors import UnsupportedOpError
from tilesparse.ir.capture import capture
from tilesparse.sim import verify

SHAPE = (1, 3, 12, 12)


class Net(nn.Module):
    """Stem, a 16-channel conv and a linear head; ``head`` picks how H×W is averaged away."""

    def __init__(self, head: str):
        super().__init__()
        self.head = head
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.a(torch.relu(self.stem(x))))
        if self.head == "pool":
            x = torch.flatten(self.pool(x), 1)
        elif self.head == "mean":
            x = x.mean([2, 3])
        elif self.head == "mean_keepdim":
            x = torch.flatten(torch.mean(x, dim=(2, 3), keepdim=True), 1)
        elif self.head == "mean_neg":
            x = x.mean(dim=(-1, -2))
        else:
            return x.mean(1)  # channels: not in the IR
        return self.fc(x)


def _net(head: str) -> Net:
    torch.manual_seed(0)
    return Net(head).eval()


def _ops(head: str) -> list[tuple[str, tuple[int, ...], tuple]]:
    g = capture(_net(head), SHAPE, "net")
    return [(n.op.name, n.out.shape, tuple(sorted(n.attrs.items()))) for n in g.nodes]


@pytest.mark.parametrize("head", ["mean", "mean_keepdim", "mean_neg"])
def test_mean_captures_as_the_global_average_pool(head):
    assert _ops(head) == _ops("pool")
    names = [n.op.name for n in capture(_net(head), SHAPE, "net").nodes]
    assert "ADAPTIVE_AVGPOOL" in names and "FLATTEN" in names


def _renamed(listing: str) -> str:
    """The listing with the mean's node (``mean_pool`` or ``mean``) named as the pooled net's ``pool``."""
    return re.sub(r"\bmean(_pool)?\b", "pool", listing)


@pytest.mark.parametrize("head", ["mean", "mean_keepdim"])
def test_mean_compiles_to_the_same_program_bit_exact(head):
    ref = compile_source(_net("pool"), "2x2", sparsity=0.5, input_shape=SHAPE)
    prog = compile_source(_net(head), "2x2", sparsity=0.5, input_shape=SHAPE)
    assert _renamed(prog.listing()) == ref.listing()
    graph = build_graph_from(_net(head), sparsity=0.5, input_shape=SHAPE).graph
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    rep = verify(prog, graph, x, progress=False)
    assert rep.ok, rep.summary()
    ref_graph = build_graph_from(_net("pool"), sparsity=0.5, input_shape=SHAPE).graph
    ref_rep = verify(ref, ref_graph, x, progress=False)
    assert [v.tolist() for v in rep.sim.final.values()] == [v.tolist() for v in ref_rep.sim.final.values()]


def test_mean_over_channels_is_a_one_line_error():
    with pytest.raises(UnsupportedOpError) as info:
        capture(_net("channels"), SHAPE, "net")
    msg = str(info.value)
    assert "\n" not in msg and "dim=1" in msg and "H×W" in msg


def test_mnasnet_compiles_and_simulates_bit_exact():
    """torchvision's mnasnet0_5 ends in ``x.mean([2, 3])``: 64x64, 50 % 8x8 on 4x4, every layer
    bit-exact and the output within the quantization tolerance of PyTorch in float."""
    shape = (1, 3, 64, 64)
    built = build_graph_from("mnasnet0_5", sparsity=0.5, input_shape=shape)
    prog = compile_source("mnasnet0_5", "4x4", sparsity=0.5, input_shape=shape)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    rep = verify(prog, built.graph, x, module=built.module, progress=False)
    assert rep.ok and rep.float_check is not None and rep.float_check.ok, rep.summary()
