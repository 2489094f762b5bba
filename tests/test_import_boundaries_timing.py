"""Layering of the time model: the rules (``tilesparse.timing``) sit below the compiler, and the
compiler never imports the estimator (which imports the compiler's Program): no package cycle.
Every ``import`` statement of the modules is read from the source (ast), wherever it sits (also
inside functions), and a violation is reported as file:line."""

import ast
from pathlib import Path

import tilesparse

SRC = Path(tilesparse.__file__).parent
TIMING_MAY_IMPORT = ("tilesparse.hw", "tilesparse.errors", "tilesparse.utils", "tilesparse.timing")


def _imports(path: Path, pkg: str) -> list[tuple[int, str]]:
    """(line, absolute name) of everything ``path`` (a module of package ``pkg``) imports: a module,
    or ``module.name`` for ``from module import name`` (relative imports resolved)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = pkg.rsplit(".", node.level - 1)[0]
                base = f"{parent}.{base}" if base else parent
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def _violations(pkg: str, bad) -> list[str]:
    out = []
    for p in sorted((SRC / pkg).rglob("*.py")):
        mod_pkg = ".".join(p.relative_to(SRC.parent).parts[:-1])
        out += [f"{p.relative_to(SRC.parent)}:{line}: imports {m}" for line, m in _imports(p, mod_pkg) if bad(m)]
    return out


def _under(mod: str, prefix: str) -> bool:
    return mod == prefix or mod.startswith(prefix + ".")


def test_compiler_does_not_import_the_estimator():
    assert _violations("compiler", lambda m: _under(m, "tilesparse.estimate")) == []


def test_timing_imports_nothing_from_tilesparse_but_hw_errors_utils():
    assert (SRC / "timing" / "__init__.py").is_file()
    assert _violations("timing", lambda m: _under(m, "tilesparse")
                       and not any(_under(m, ok) for ok in TIMING_MAY_IMPORT)) == []


def test_the_reader_sees_every_kind_of_import(tmp_path):
    """The import reader itself, on a hand-written module of package ``tilesparse.timing``."""
    f = tmp_path / "probe.py"
    f.write_text("import numpy\nfrom tilesparse.hw import ArrayConfig\nfrom . import rules\n"
                 "from .. import estimate\n\n\ndef f():\n    from tilesparse.compiler import stages\n"
                 "    return stages\n")
    got = _imports(f, "tilesparse.timing")
    assert got == [(1, "numpy"), (2, "tilesparse.hw.ArrayConfig"), (3, "tilesparse.timing.rules"),
                   (4, "tilesparse.estimate"), (8, "tilesparse.compiler.stages")]
