"""``drop_shifted_slices``: a concat operand keeps ``write_into`` only if it needs no shift."""

from __future__ import annotations

import torch
from torch import nn

from tilesparse.frontend import build_graph
from tilesparse.ir.graph import Op
from tilesparse.passes import drop_shifted_slices


class _Cat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 8, 3, padding=1)
        self.b = nn.Conv2d(4, 8, 1)
        self.pool = nn.MaxPool2d(3, 1, 1)

    def forward(self, x):
        return torch.cat([self.a(x), self.pool(x), self.b(x)], 1)


def test_only_shifted_operands_lose_their_slice():
    torch.manual_seed(0)
    g = build_graph(_Cat(), input_shape=(1, 4, 6, 6), quantized=False)
    cat = g.of(Op.CONCAT)[0]
    assert all("write_into" in g.node(i).attrs for i in cat.inputs)  # the reuse pass marked all three
    assert drop_shifted_slices(g) is g  # unquantized: no input_shifts, nothing to drop
    nodes = [n.with_(attrs={**n.attrs, "input_shifts": (0, 2, 0)}) if n.name == cat.name else n for n in g]
    out = drop_shifted_slices(g.replace_nodes(nodes))
    kept = {i: out.node(i).attrs.get("write_into") for i in cat.inputs}
    assert kept == {cat.inputs[0]: (cat.name, 0), cat.inputs[1]: None, cat.inputs[2]: (cat.name, 12)}
    # everything else is untouched
    assert {k: v for k, v in out.node(cat.inputs[1]).attrs.items()} == \
        {k: v for k, v in g.node(cat.inputs[1]).attrs.items() if k != "write_into"}
