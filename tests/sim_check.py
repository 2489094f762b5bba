"""One end-to-end check of a built graph on an array, shared by the op tests: compile, simulate,
verify bit for bit against the integer reference and in float against the module, the simulator's
bytes / operations / cycles equal to the time model's, and the clocked replay equal to the estimate."""

from __future__ import annotations

import numpy as np
import pytest

from tilesparse.compiler.pipeline import compile_graph
from tilesparse.estimate.timemodel import estimate_program
from tilesparse.sim import verify
from tilesparse.sim.replay import replay


def check_program(built, array, shape, seed=1):
    prog = compile_graph(built.graph, array)
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    rep = verify(prog, built.graph, x, module=built.module, progress=False)
    assert rep.ok and rep.float_check.ok, rep.summary()
    for acc in rep.sim.accounts:  # the simulator's bytes, operations and cycles are the time model's
        assert acc.sim_bytes == acc.model_bytes, (acc.name, acc.notes)
        assert acc.sim_macs == acc.model_macs, (acc.name, acc.notes)
        assert acc.sim_cycles == acc.model_cycles, (acc.name, acc.notes)
        assert acc.totals_ok, (acc.name, acc.sim_total, acc.listed_total)
    # the clocked replay of the program agrees with the time model (docs/replay.md)
    assert replay(prog).total_s == pytest.approx(estimate_program(prog).total_s, rel=1e-9)
    return prog
