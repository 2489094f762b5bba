"""Validated configuration: YAML -> pydantic model, every problem reported at once as a
ConfigError naming the file and the field path."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from tilesparse.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def _format(err: ValidationError) -> list[str]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "<root>"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        out.append(f"{loc}: {msg}{got_s}")
    return out


def validate_model(model: type[M], data: Any, source: str | Path | None = None) -> M:
    """Validate ``data`` against ``model``; raise ConfigError listing every problem."""
    if data is None:
        raise ConfigError(source, ["the configuration is empty"])
    if not isinstance(data, dict):
        raise ConfigError(source, [f"expected a mapping at the top level, got {type(data).__name__}"])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(source, _format(e)) from None


def load_yaml_model(model: type[M], path: str | Path) -> M:
    """Read a YAML file and validate it against ``model``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(path, [f"file not found: {path}"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:  # PyYAML's message spans lines (with a caret drawing): keep one
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(path, [f"not valid YAML{at}: {what}"]) from None
    return validate_model(model, data, source=path)
