"""The verbs' options read the same everywhere: one name, one short flag, one help text for the
shared options, examples in every verb's help, and map taking an --array as compile does."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from tilesparse.cli.common import ARRAY_HELP, SOURCE_HELP
from tilesparse.cli.main import app

runner = CliRunner()
VERBS = typer.main.get_command(app).commands  # type: ignore[attr-defined]
MODEL_VERBS = ("compile", "estimate", "simulate", "sparsify", "map")


def _options(verb: str) -> dict[str, object]:
    """Long option name -> click parameter, visible options only."""
    return {p.opts[0]: p for p in VERBS[verb].params if p.opts[0].startswith("--") and not p.hidden}


def test_every_verb_is_listed_and_has_examples():
    assert set(VERBS) == {"demo", "sparsify", "report", "import-masks", "map", "compile", "estimate", "explore",
                          "pareto", "simulate", "export-onnx"}
    for verb, cmd in VERBS.items():
        assert "Example" in (cmd.help or ""), verb


def test_a_short_flag_means_one_option_in_every_verb():
    meaning: dict[str, tuple[str, str]] = {}
    for verb in VERBS:
        for long, p in _options(verb).items():
            for short in (o for o in p.opts + p.secondary_opts if len(o) == 2):
                first = meaning.setdefault(short, (long, verb))
                assert first[0] == long, f"{short} is {long} in {verb} but {first[0]} in {first[1]}"
    assert meaning["-a"][0] == "--array" and meaning["-o"][0] == "--out"


@pytest.mark.parametrize("option,verbs", [
    ("--array", ("compile", "estimate", "simulate", "demo", "map")),
    ("--out", ("compile", "estimate", "simulate", "demo", "sparsify", "explore", "export-onnx")),
    ("--json", tuple(VERBS)),
    # imported masks bring their own sparsity; a report reads a finished run
    ("--sparsity", tuple(v for v in VERBS if v not in ("import-masks", "report"))),
    ("--block", ("compile", "estimate", "simulate", "demo", "sparsify", "map", "export-onnx")),
    ("--weights", (*MODEL_VERBS, "export-onnx")),
    ("--input-shape", ("compile", "estimate", "simulate", "map", "export-onnx")),
])
def test_shared_options_exist_where_they_apply(option, verbs):
    for verb in verbs:
        assert option in _options(verb), f"{verb} has no {option}"


def test_the_shared_help_texts_are_the_shared_ones():
    for verb in ("compile", "estimate", "simulate", "demo"):
        assert _options(verb)["--array"].help.startswith(ARRAY_HELP), verb
    for verb in MODEL_VERBS:
        source = next(p for p in VERBS[verb].params if p.name in ("source", "target", "model") and not p.opts[0]
                      .startswith("-"))
        assert SOURCE_HELP in source.help, verb


def test_help_renders_for_every_verb():
    for verb in VERBS:
        r = runner.invoke(app, [verb, "--help"], env={"COLUMNS": "120"})
        assert r.exit_code == 0 and "Usage: tilesparse " + verb in r.output, verb


def test_map_takes_an_array_as_compile_does():
    """`map -a 4x4` was refused (the cost model wanted aie2:4x4): both now name the same array."""
    from tilesparse.cli.map_cmd import _architecture
    from tilesparse.costmodel import load_arch

    for spec, cost_spec in (("4x4", "aie2:4x4"), ("5x7", "aie2:5x7"), ("phoenix", "aie2:phoenix")):
        assert _architecture(spec) == load_arch(cost_spec), spec
    assert _architecture("eyeriss") == load_arch("eyeriss")


def test_version():
    from importlib.metadata import version

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.output == f"tilesparse {version('tilesparse')}\n"
