"""The three networks, dense and 50 % 8x8 block-sparse, on a square, a prime and a rectangular
array: every layer bit-exact against the integer reference, the output and every layer within the
derived tolerance of the float module (the second oracle), and the bytes and MACs the simulator
counted equal to what the time model charged, layer by layer (per iteration and in the listing).

The rectangular-array cases, VGG16 dense and Inception v3 sparse on 4x2, are cells of the pattern
grid's suite subset (tests/test_pattern_grid.py: the same builds, programs and input, with these
checks and more), so they are not run twice."""

from __future__ import annotations

import pytest
from sim_helpers import check_bit_exact, zoo_build, zoo_program

CASES = [  # (network, sparse, array): each network dense and sparse, across the two files
    ("resnet50", False, "5x5"), ("resnet50", True, "4x4"),
    ("vgg16", True, "5x5"),  # dense on 4x2: tests/test_pattern_grid.py
    ("inception_v3", False, "5x5"),  # sparse on 4x2: tests/test_pattern_grid.py
]


@pytest.mark.parametrize(("name", "sparse", "array"), CASES,
                         ids=[f"{n}-{'sparse' if s else 'dense'}-{a}" for n, s, a in CASES])
def test_bit_exact_and_accounting(name, sparse, array):
    """Bit-exact, within tolerance of the float module, and accounting (per iteration and listing
    totals) equal to the time model's."""
    graph, prog = zoo_program(name, sparse, array)
    rep = check_bit_exact(graph, prog, module=zoo_build(name, sparse).module)
    assert rep.float_check.ok and not rep.float_check.not_compared, rep.float_check.summary()
    for acc in rep.sim.accounts:  # what the time model charged, per layer and instruction type
        assert acc.sim_bytes == acc.model_bytes, (name, array, acc.name, acc.notes)
        assert acc.sim_macs == acc.model_macs, (name, array, acc.name, acc.notes)
        assert acc.sim_cycles == acc.model_cycles, (name, array, acc.name, acc.notes)
        assert acc.totals_ok, (name, array, acc.name, acc.sim_total, acc.listed_total)
    if sparse:  # only the kept blocks were executed: fewer MACs than the dense network has
        assert sum(a.sim_macs for a in rep.sim.accounts) < sum(r.macs for r in prog.layers)
