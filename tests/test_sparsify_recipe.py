"""Recipes: YAML validation with named errors; the shipped examples validate."""

from pathlib import Path

import pytest

import tilesparse
from tilesparse.errors import ConfigError
from tilesparse.sparsify import Recipe

RECIPES = sorted((Path(tilesparse.__file__).parent / "recipes").glob("*.yaml"))


def test_shipped_recipes_validate():
    assert len(RECIPES) >= 4
    for path in RECIPES:
        Recipe.from_yaml(path)


def test_yaml_round_trip(tmp_path):
    r = Recipe(method="incremental", sparsity=0.75, block=(16, 4), selection="balanced_cols")
    (tmp_path / "r.yaml").write_text(r.to_yaml())
    assert Recipe.from_yaml(tmp_path / "r.yaml") == r


@pytest.mark.parametrize("text,field", [
    ("sparsity: 1.0\n", "sparsity"),
    ("sparsity: -0.1\n", "sparsity"),
    ("block: 0x8\n", "block"),
    ("block: [8, -4]\n", "block"),
    ("sparsty: 0.5\n", "sparsty: unknown field"),
    ("method: magic\n", "method"),
    ("training:\n  epocs: 3\n", "training.epocs: unknown field"),
    ("incremental:\n  step: 0\n", "incremental.step"),
])
def test_bad_fields_are_named(tmp_path, text, field):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        Recipe.from_yaml(path)
    assert "bad.yaml" in str(e.value) and field in str(e.value)


def test_every_problem_reported_at_once(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("sparsity: 2\nblock: 0x0\ncolour: red\n")
    with pytest.raises(ConfigError) as e:
        Recipe.from_yaml(path)
    assert len(e.value.errors) == 3


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Recipe.from_yaml(tmp_path / "none.yaml")
    (tmp_path / "x.yaml").write_text("a: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Recipe.from_yaml(tmp_path / "x.yaml")
