"""The mapper's sub-volumes are accepted by the compiler (they fit its buffers)."""

from __future__ import annotations

import pytest

pytest.importorskip("tilesparse.compiler.pipeline")


def test_mapper_chooser_drives_the_compiler():
    from tilesparse.compiler.partition import SubVolume
    from tilesparse.compiler.pipeline import compile_graph
    from tilesparse.frontend import build_graph
    from tilesparse.mapper.compiler_hook import mapper_chooser

    g = build_graph("resnet18", input_shape=(1, 3, 64, 64))
    ch = mapper_chooser(g, "2x2", budget=150)
    assert ch.subvolumes and all(isinstance(s, SubVolume) for s in ch.subvolumes.values())
    prog = compile_graph(g, "2x2", chooser=ch)  # raises CapacityError / ConfigError if a tile is illegal
    assert prog is not None
    for name, sub in ch.subvolumes.items():
        node = g.node(name)
        assert sub.h <= node.out.shape[2] and sub.w <= node.out.shape[3]
