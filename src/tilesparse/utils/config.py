"""Validated configuration: YAML -> pydantic model, every problem reported at once as a
ConfigError naming the file and the field path.

The YAML is read within limits (``tilesparse.utils.limits``: file size, aliases, expanded nodes,
nesting), as UTF-8, so a "billion laughs" file or stray bytes are refused in one line before
anything grows. The field types below are the ones every config model shares: numbers are never
booleans (``rows: true`` is not 1 row) and floats are finite.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import AfterValidator, AllowInfNan, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from tilesparse.errors import ConfigError
from tilesparse.utils import limits as L

__all__ = ["Float", "Int", "NonNegativeFloat", "NonNegativeInt", "PositiveFloat", "PositiveInt", "StrictModel",
           "at_most", "clip", "is_file", "load_yaml", "load_yaml_model", "short_repr", "validate_model"]

M = TypeVar("M", bound=BaseModel)

MAX_LISTED_ERRORS = 20  # a ConfigError lists at most this many problems, then how many more


def _not_bool(v: Any) -> Any:
    if isinstance(v, bool):
        raise PydanticCustomError("bool_not_number", "expected a number, not a boolean")
    return v


_NO_BOOL = BeforeValidator(_not_bool)
_FINITE = AllowInfNan(False)
Int = Annotated[int, _NO_BOOL]
PositiveInt = Annotated[int, _NO_BOOL, Field(gt=0)]
NonNegativeInt = Annotated[int, _NO_BOOL, Field(ge=0)]
Float = Annotated[float, _NO_BOOL, _FINITE]
PositiveFloat = Annotated[float, _NO_BOOL, _FINITE, Field(gt=0)]
NonNegativeFloat = Annotated[float, _NO_BOOL, _FINITE, Field(ge=0)]


def at_most(limit: float, unit: str = "") -> AfterValidator:
    """An upper bound from ``tilesparse.utils.limits``, refused with the bound and where it is
    documented: ``Annotated[PositiveInt, at_most(MAX_ROWS)]``."""
    def check(v: Any) -> Any:
        if v > limit:
            raise PydanticCustomError("limit", "{msg}", {"msg": L.above("", _num(v), _num(limit), unit).lstrip()})
        return v

    return AfterValidator(check)


def _num(v: float) -> str:
    return f"{v:,}" if isinstance(v, int) else f"{v:g}"


class StrictModel(BaseModel):
    """Base of the config models: unknown fields refused, frozen, finite floats."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 2, 40, 40, 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4


def short_repr(value: Any, width: int = 80) -> str:
    """``repr`` bounded in time and length: a huge or deeply shared value is never formatted whole."""
    return clip(_REPR.repr(value), width)


def clip(text: str, width: int = 60) -> str:
    """``text`` cut to ``width`` characters (a name echoed in a message stays one short line)."""
    return text if len(text) <= width else text[:width - 3] + "..."


def _format(err: ValidationError) -> list[str]:
    out = []
    errors = err.errors(include_url=False, include_context=False)
    for e in errors[:MAX_LISTED_ERRORS]:
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")  # a validator's own message, as it wrote it
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        got = e.get("input")
        said = isinstance(got, dict) or L.DOC in msg or "got " in msg  # the value said already
        got_s = "" if said else f" (got {short_repr(got)})"
        out.append(f"{loc}: {msg}{got_s}" if loc else f"{msg}{got_s}")
    if len(errors) > MAX_LISTED_ERRORS:
        out.append(f"... and {len(errors) - MAX_LISTED_ERRORS} more")
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


class _Refused(Exception):
    """A YAML document over a limit (raised while composing, before it is built)."""

    def __init__(self, msg: str, mark: Any):
        super().__init__(msg)
        self.mark = mark


class _LimitedLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader that counts while composing: aliases, nesting depth and the node count
    of the document as if every alias were expanded (memoized per node, so counting is linear in
    the file; a recursive alias has no size and is refused)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._aliases, self._depth = 0, 0
        self._size: dict[int, int] = {}  # id(node) -> nodes below it, aliases expanded

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark
        alias = self.check_event(yaml.AliasEvent)
        self._depth += 1
        if self._depth > L.MAX_YAML_DEPTH:
            raise _Refused(L.above("nesting depth", self._depth, L.MAX_YAML_DEPTH), mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if alias:
            self._aliases += 1
            if self._aliases > L.MAX_YAML_ALIASES:
                raise _Refused(L.above("aliases", self._aliases, L.MAX_YAML_ALIASES), mark)
            if id(node) not in self._size:
                raise _Refused("an alias refers to the node that contains it (a recursive document)", mark)
            return node
        size = 1 + sum(self._size[id(c)] for c in _children(node))
        if size > L.MAX_YAML_NODES:
            raise _Refused(L.above("nodes with aliases expanded", f"{size:,}", f"{L.MAX_YAML_NODES:,}"), mark)
        self._size[id(node)] = size
        return node


def _children(node: Any) -> list[Any]:
    if isinstance(node, yaml.MappingNode):
        return [n for kv in node.value for n in kv]
    return list(node.value) if isinstance(node, yaml.SequenceNode) else []


def is_file(path: str | Path) -> bool:
    """``Path.is_file`` that says False for a name the OS refuses (too long, a NUL byte)."""
    try:
        return Path(path).is_file()
    except (OSError, ValueError):
        return False


def _read_text(path: Path, max_bytes: int) -> str:
    size = path.stat().st_size
    if size > max_bytes:
        raise ConfigError(path, [L.above("file size", f"{size:,}", f"{max_bytes:,}", " B")])
    raw = path.read_bytes()[:max_bytes + 1]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(path, [f"not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start}"]) from None


def load_yaml(path: str | Path, max_bytes: int = L.MAX_YAML_BYTES) -> Any:
    """The Python value of a YAML file, read within the limits (one-line ``ConfigError`` otherwise)."""
    path = Path(path)
    if not is_file(path):
        raise ConfigError(path, [f"file not found: {path}"])
    text = _read_text(path, max_bytes)
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as e:
        raise ConfigError(path, [f"refused at line {e.mark.line + 1}: {e}"]) from None
    except yaml.YAMLError as e:  # PyYAML's message spans lines (with a caret drawing): keep one
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(path, [f"not valid YAML{at}: {what}"]) from None
    except ValueError as e:  # a scalar Python cannot hold (an integer of more than 4300 digits)
        raise ConfigError(path, [f"not valid YAML: {clip(str(e).split(':')[0], 100)}"]) from None
    finally:
        loader.dispose()


def load_yaml_model(model: type[M], path: str | Path) -> M:
    """Read a YAML file (within limits) and validate it against ``model``."""
    return validate_model(model, load_yaml(path), source=path)
