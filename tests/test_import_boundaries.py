"""Import boundaries: the simulator and the estimator read programs through ``tilesparse.program``
alone, never the compiler's internals; the program package depends on none of the layers built on
it. Checked on the source (every ``import`` / ``from`` statement, at module level or inside a
function), so a lazy import cannot slip through."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tilesparse"
# leaving the estimate package (the exploration report and the paper's table move to a report module)
NOT_CHECKED = {"estimate/explore.py", "estimate/paper.py"}
PROGRAM_MAY_NOT_IMPORT = ("tilesparse.compiler", "tilesparse.sim", "tilesparse.estimate", "tilesparse.cli",
                          "tilesparse.frontend", "tilesparse.sparsify", "torch")


def _package(rel: str) -> str:
    """Dotted package of a module at ``rel`` (path under src/tilesparse), for relative imports."""
    return ".".join(["tilesparse", *Path(rel).parent.parts])


def imported_modules(source: str, package: str = "tilesparse") -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``source``, relative ones resolved
    against ``package``; ``from a import b`` yields ``a.b`` (b may be a module)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parent = parts[:len(parts) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}" if base else a.name) for a in node.names]
    return out


def violations(source: str, forbidden: tuple[str, ...], where: str, package: str = "tilesparse") -> list[str]:
    """``where:line imports module`` for every import of a ``forbidden`` module or its submodules."""
    return [f"{where}:{line} imports {mod}" for line, mod in imported_modules(source, package)
            if any(mod == f or mod.startswith(f + ".") for f in forbidden)]


def _scan(dirs: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    bad = []
    for d in dirs:
        for path in sorted((SRC / d).rglob("*.py")):
            rel = path.relative_to(SRC).as_posix()
            if rel not in NOT_CHECKED:
                bad += violations(path.read_text(), forbidden, f"src/tilesparse/{rel}", _package(rel))
    return bad


def test_sim_and_estimate_do_not_import_the_compiler():
    bad = _scan(("sim", "estimate"), ("tilesparse.compiler",))
    assert not bad, "read programs through tilesparse.program:\n" + "\n".join(bad)


def test_program_package_imports_only_what_it_builds_on():
    bad = _scan(("program",), PROGRAM_MAY_NOT_IMPORT)
    assert not bad, "tilesparse.program may depend only on hw, errors, utils:\n" + "\n".join(bad)


def test_the_scanned_packages_exist():
    """The checks above pass vacuously on an empty directory: make sure they read real modules."""
    for d, must in (("sim", "executor.py"), ("estimate", "timemodel.py"), ("program", "layout.py")):
        assert (SRC / d / must).is_file()


SNIPPET = '''
import numpy as np
import tilesparse.compiler.partition
from tilesparse.compiler import stages
from tilesparse.program import Program
from ..compiler.pack import piece_bounds
from . import memory


def lazy():
    from tilesparse.compiler.layers import LayerSpec
    import torch.nn
    return LayerSpec
'''


@pytest.mark.parametrize("forbidden,want", [
    (("tilesparse.compiler",), ["x.py:3 imports tilesparse.compiler.partition",
                                "x.py:4 imports tilesparse.compiler.stages",
                                "x.py:6 imports tilesparse.compiler.pack.piece_bounds",
                                "x.py:11 imports tilesparse.compiler.layers.LayerSpec"]),
    (("torch",), ["x.py:12 imports torch.nn"]),
    (("tilesparse.sim",), ["x.py:7 imports tilesparse.sim.memory"]),
    (("tilesparse.prog",), []),  # a prefix of a module name is not that module
])
def test_checker_finds_absolute_relative_and_lazy_imports(forbidden, want):
    got = violations(SNIPPET, forbidden, "x.py", package="tilesparse.sim")
    assert sorted(got, key=lambda s: int(s.split(":")[1].split()[0])) == want
