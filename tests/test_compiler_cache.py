"""The compile's one cache (compiler.cache): computed once, owners kept alive, bounded, and no
result depends on it — a compile with a fresh cache, a shared one or after other compiles gives
the same program."""

import gc
import weakref

import numpy as np
from compiler_helpers import small_graph

from tilesparse.compiler import cache as cache_mod
from tilesparse.compiler.cache import CompileCache, memo
from tilesparse.compiler.pipeline import compile_graph


class _Owner:
    pass


def test_memo_computes_once_and_keeps_the_owner_alive():
    c = CompileCache()
    owner = _Owner()
    ref = weakref.ref(owner)
    calls = []
    key = (id(owner), 3)
    assert c.memo("layout", owner, key, lambda: calls.append(1) or "v") == "v"
    assert c.memo("layout", owner, key, lambda: calls.append(1) or "w") == "v"
    assert calls == [1]
    del owner
    gc.collect()
    assert ref() is not None  # the entry holds it: its id cannot be reused while the key exists
    assert memo(None, "layout", None, key, lambda: "fresh") == "fresh"  # no cache: computed every time


def test_a_full_table_starts_over(monkeypatch):
    monkeypatch.setitem(cache_mod.LIMITS, "plans", 2)
    c = CompileCache()
    for k in range(3):
        c.put("plans", k, k * 10)
    assert c.get("plans", 0) is None and c.get("plans", 2) == 20  # two entries, then a third: cleared
    c.put("plans", 2, 7)
    assert c.get("plans", 2) == 7  # put replaces


def _float_graph():
    g = small_graph()
    params = {k: (v.astype(np.float32) * 0.01 if k.endswith(".weight") else v) for k, v in g.params.items()}
    return g.replace_nodes(list(g.nodes), params)


def _same(a, b):
    assert a.meta["estimate_s"] == b.meta["estimate_s"]
    assert np.array_equal(a.per_iter, b.per_iter) and np.array_equal(a.weights, b.weights)
    assert [(r.grid, r.sub, r.loops, r.chunks) for r in a.layers] == [(r.grid, r.sub, r.loops, r.chunks)
                                                                       for r in b.layers]


def test_no_compile_depends_on_another_or_on_a_shared_cache():
    g = _float_graph()
    alone = compile_graph(g, "2x2")
    compile_graph(small_graph(seed=1), "2x2")  # another graph in between leaves nothing behind
    _same(compile_graph(g, "2x2"), alone)
    shared = CompileCache()
    first = compile_graph(g, "2x2", cache=shared)
    assert shared.tables["int8"] and shared.tables["plans"]  # float weights converted, plans kept
    _same(first, alone)
    _same(compile_graph(g, "2x2", cache=shared), alone)  # everything from the cache: same program
    assert not first.quantized
