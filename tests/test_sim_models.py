"""The three networks, dense and 50 % 8x8 block-sparse, on a square, a prime and a rectangular
array: every layer bit-exact against the integer reference, the output and every layer within the
derived tolerance of the float module (the second oracle), and the bytes and MACs the simulator
counted equal to what the time model charged, layer by layer (per iteration and in the listing).
One test per network, so that a test worker builds each network's graphs once."""

from __future__ import annotations

import pytest
from sim_helpers import check_bit_exact, zoo_builds, zoo_program

ARRAYS = {  # network -> (array for the dense graph, array for the sparse one): square, prime, rectangular
    "resnet50": ("5x5", "4x4"),
    "vgg16": ("4x2", "5x5"),
    "inception_v3": ("5x5", "4x2"),
}


def _check(name: str, sparse: bool, array: str) -> None:
    """Bit-exact, within tolerance of the float module, and accounting (per iteration and listing
    totals) equal to the time model's."""
    graph, prog = zoo_program(name, sparse, array)
    rep = check_bit_exact(graph, prog, module=zoo_builds(name)[int(sparse)].module)
    assert rep.float_check.ok and not rep.float_check.not_compared, rep.float_check.summary()
    for acc in rep.sim.accounts:  # what the time model charged, per layer and instruction type
        assert acc.sim_bytes == acc.model_bytes, (name, array, acc.name, acc.notes)
        assert acc.sim_macs == acc.model_macs, (name, array, acc.name, acc.notes)
        assert acc.sim_cycles == acc.model_cycles, (name, array, acc.name, acc.notes)
        assert acc.totals_ok, (name, array, acc.name, acc.sim_total, acc.listed_total)
    if sparse:  # only the kept blocks were executed: fewer MACs than the dense network has
        assert sum(a.sim_macs for a in rep.sim.accounts) < sum(r.macs for r in prog.layers)


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_bit_exact_and_accounting(name):
    dense, sparse = ARRAYS[name]
    _check(name, False, dense)
    _check(name, True, sparse)
