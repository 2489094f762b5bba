"""Import boundaries: every package imports only packages below it (``LAYERS``, the one direction
of docs/architecture.md); the simulator and the estimator read programs through
``tilesparse.program`` alone, never the compiler's internals; the compiler times plans with
``tilesparse.timing``, never the estimator; the program package and the timing rules depend on
none of the layers built on them. Checked on the source (every ``import`` / ``from`` statement, at
module level or inside a function), so a lazy import cannot slip through."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "tilesparse"

# The one direction of imports (docs/architecture.md), bottom to top. A package may import the
# packages of lower layers only: never one above it, never another package of its own layer (so the
# compiler, the simulator and the estimator are independent readers/writers of the Program).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors",),
    ("utils",),
    ("hw", "ir", "patterns", "models", "data"),
    ("timing", "program", "passes", "costmodel"),
    ("quant",),
    ("sparsify",),  # SDQ's parts are trained through the quantizer's rounding (sparsify.sdq_train)
    ("frontend", "source"),
    ("compiler", "sim", "estimate"),
    ("build",),
    ("mapper",),
    ("reports", "demo"),  # the Pareto report prices its points with the mapper
    ("cli",),
    ("__main__",),  # python -m tilesparse: the command's entry point
)
LAYER_OF = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}
PROGRAM_MAY_NOT_IMPORT = ("tilesparse.compiler", "tilesparse.sim", "tilesparse.estimate", "tilesparse.cli",
                          "tilesparse.frontend", "tilesparse.sparsify", "torch")
TIMING_MAY_IMPORT = ("tilesparse.hw", "tilesparse.errors", "tilesparse.utils", "tilesparse.timing")


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


def layer_violations(source: str, own: str, where: str, package: str = "tilesparse") -> list[str]:
    """``where:line`` for every import of a tilesparse package at or above ``own``'s layer."""
    bad = []
    for line, mod in imported_modules(source, package):
        parts = mod.split(".")
        if parts[0] != "tilesparse" or len(parts) < 2 or parts[1] == own or parts[1] not in LAYER_OF:
            continue
        if LAYER_OF[parts[1]] >= LAYER_OF[own]:
            bad.append(f"{where}:{line} imports {mod} ({parts[1]} is not below {own})")
    return bad


def _modules(*dirs: str):
    for d in dirs:
        for path in sorted((SRC / d).rglob("*.py")) if (SRC / d).is_dir() else [SRC / f"{d}.py"]:
            rel = path.relative_to(SRC).as_posix()
            yield rel, path.read_text()


def _scan(dirs: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return [v for rel, src in _modules(*dirs)
            for v in violations(src, forbidden, f"src/tilesparse/{rel}", _package(rel))]


def test_every_package_is_in_a_layer():
    pkgs = {p.stem for p in SRC.iterdir() if (p.suffix == ".py" and p.stem != "__init__")
            or (p.is_dir() and (p / "__init__.py").is_file())}
    assert pkgs - set(LAYER_OF) == set(), "add the new package to LAYERS (and docs/architecture.md)"
    assert set(LAYER_OF) - pkgs == set(), "LAYERS names a package that no longer exists"


def test_imports_point_down_the_layers():
    bad = [v for pkg in LAYER_OF for rel, src in _modules(pkg)
           for v in layer_violations(src, pkg, f"src/tilesparse/{rel}", _package(rel))]
    assert not bad, "imports against the layering (docs/architecture.md):\n" + "\n".join(bad)


def test_sim_and_estimate_do_not_import_the_compiler():
    bad = _scan(("sim", "estimate"), ("tilesparse.compiler",))
    assert not bad, "read programs through tilesparse.program:\n" + "\n".join(bad)


def test_compiler_does_not_import_the_estimator():
    bad = _scan(("compiler",), ("tilesparse.estimate", "tilesparse.sim"))
    assert not bad, "the compiler times plans with tilesparse.timing:\n" + "\n".join(bad)


def test_program_package_imports_only_what_it_builds_on():
    bad = _scan(("program",), PROGRAM_MAY_NOT_IMPORT)
    assert not bad, "tilesparse.program may depend only on hw, errors, utils:\n" + "\n".join(bad)


def test_timing_imports_nothing_from_tilesparse_but_hw_errors_utils():
    bad = [f"src/tilesparse/{rel}:{line} imports {m}" for rel, src in _modules("timing")
           for line, m in imported_modules(src, _package(rel))
           if m.startswith("tilesparse") and not any(m == ok or m.startswith(ok + ".") for ok in TIMING_MAY_IMPORT)]
    assert not bad, "\n".join(bad)


def test_the_scanned_packages_exist():
    """The checks above pass vacuously on an empty directory: make sure they read real modules."""
    for d, must in (("sim", "executor.py"), ("estimate", "timemodel.py"), ("program", "layout.py"),
                    ("timing", "rules.py"), ("compiler", "pipeline.py")):
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


def test_layer_checker_flags_upward_and_sideways_imports():
    src = "from tilesparse.compiler import pack\nfrom tilesparse.program import Program\n" \
          "import tilesparse.cli.main\nfrom ..hw import load_array\nfrom . import layout\n"
    got = layer_violations(src, "sim", "x.py", package="tilesparse.sim")
    assert got == ["x.py:1 imports tilesparse.compiler.pack (compiler is not below sim)",
                   "x.py:3 imports tilesparse.cli.main (cli is not below sim)"]


REPLAY = "tilesparse.sim.replay"
TIME_MODEL = ("tilesparse.timing", "tilesparse.estimate")


def _source_of(mod: str) -> tuple[str, Path] | None:
    """(module, file) of a tilesparse module, or of its longest prefix that is one (``from a import
    name`` names ``a.name``)."""
    parts = mod.split(".")
    while len(parts) > 1:
        base = SRC.joinpath(*parts[1:])
        for path in (base.with_suffix(".py"), base / "__init__.py"):
            if path.is_file():
                return ".".join(parts), path
        parts.pop()
    return None


def _loaded_with(mod: str) -> dict[str, list[str]]:
    """Every tilesparse module importing ``mod`` loads (its packages' ``__init__`` files and what
    they import, transitively), each with the chain that reached it."""
    chains: dict[str, list[str]] = {}
    todo = [(mod, [mod])]
    while todo:
        name, chain = todo.pop()
        found = _source_of(name)
        if found is None or found[0] in chains:
            continue
        name, path = found
        chains[name] = chain
        parents = [".".join(name.split(".")[:k]) for k in range(2, len(name.split(".")))]
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = [m for _, m in imported_modules(path.read_text(), pkg) if m.startswith("tilesparse.")]
        todo += [(m, [*chain, m]) for m in parents + deps]
    return chains


def test_replay_imports_nothing_of_the_time_model():
    """The clocked replay is the time model's independent check: neither the replay module nor
    anything loaded with it (directly, lazily or through a package ``__init__``) is the time model."""
    rel = "sim/replay.py"
    direct = violations((SRC / rel).read_text(), TIME_MODEL, f"src/tilesparse/{rel}", _package(rel))
    assert not direct, "\n".join(direct)
    chains = _loaded_with(REPLAY)
    assert "tilesparse.sim.memory" in chains and "tilesparse.program.artifact" in chains  # the walk reads real imports
    bad = [" -> ".join(c) for m, c in chains.items() if any(m == f or m.startswith(f + ".") for f in TIME_MODEL)]
    assert not bad, "the replay must not load the time model:\n" + "\n".join(bad)


def test_the_import_walk_finds_a_time_model_import():
    chains = _loaded_with("tilesparse.estimate.report")
    assert any(m.startswith("tilesparse.timing") for m in chains)
