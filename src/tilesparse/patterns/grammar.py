"""Patterns from text and back: the ``--pattern`` grammar, the YAML / checkpoint dicts, files.

Grammar (one level, or levels joined by ``/``, outermost first)::

    8x8          b_o x b_i blocks (the whole kernel rides along)   8x8@0.5  with its own sparsity
    2:4          N kept of every M input channels (the reduction axis); 2:4:out along output channels
    channel      whole input channels                              channel@0.5
    filter       whole output channels (filters)                   filter@0.25
    unstructured single weights (the baseline)                     unstructured@0.9
    8x8@0.5/2:4  hierarchy: 8x8 blocks, half kept, 2:4 inside every kept block (75 % sparse)

A level without ``@s`` is free: ``--sparsity`` fills it (at most one free level per hierarchy). N:M
levels fix their own sparsity, 1 - N/M. A path to a YAML file holding a pattern dict (or a mapping
with a ``pattern`` key) is read as that pattern.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tilesparse.errors import ConfigError
from tilesparse.patterns.family import NM, Block, Channel, Filter, Hierarchical, Pattern, Unstructured
from tilesparse.utils.config import short_repr

__all__ = ["GRAMMAR", "parse_pattern", "pattern_from_dict", "as_pattern"]

GRAMMAR = ("8x8 | 8x8@0.5 | 2:4 | 2:4:out | channel[@s] | filter[@s] | unstructured[@s] | "
           "levels joined by '/', e.g. 8x8@0.5/2:4 | a YAML file")

_SPARSITY = r"(?:@(?P<s>[0-9]*\.?[0-9]+(?:e-?[0-9]+)?))?"
_BLOCK = re.compile(r"(?P<o>[0-9]{1,4})x(?P<i>[0-9]{1,4})" + _SPARSITY)
_NM = re.compile(r"(?P<n>[0-9]{1,3}):(?P<m>[0-9]{1,3})(?::(?P<axis>in|out))?")
_NAMED = re.compile(r"(?P<name>channel|filter|unstructured)" + _SPARSITY)
_NAMED_KINDS: dict[str, type[Pattern]] = {"channel": Channel, "filter": Filter, "unstructured": Unstructured}
_YAML_SUFFIXES = (".yaml", ".yml")


def _level(text: str, where: str) -> Pattern:
    t = text.strip().lower()
    if (m := _BLOCK.fullmatch(t)) is not None:
        return Block(int(m["o"]), int(m["i"]), None if m["s"] is None else float(m["s"]))
    if (m := _NM.fullmatch(t)) is not None:
        return NM(int(m["n"]), int(m["m"]), m["axis"] or "in")  # type: ignore[arg-type]  # regex: in|out
    if (m := _NAMED.fullmatch(t)) is not None:
        return _NAMED_KINDS[m["name"]](None if m["s"] is None else float(m["s"]))  # type: ignore[call-arg]
    raise ConfigError(where, [f"cannot read {short_repr(text, 40)} as a pattern; expected {GRAMMAR}"])


def parse_pattern(spec: str, where: str = "--pattern") -> Pattern:
    """A pattern from its command-line form, or from a YAML file when ``spec`` names one.

    >>> parse_pattern("8x8@0.5/2:4").nominal_sparsity()
    0.75
    >>> parse_pattern("2:4:out")
    NM(n=2, m=4, axis='out')
    >>> parse_pattern("3:2")
    Traceback (most recent call last):
    tilesparse.errors.ConfigError: pattern 3:2: expected integers 0 < N < M (N kept of every M)
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(where, [f"expected a pattern ({GRAMMAR}), got {short_repr(spec, 40)}"])
    text = spec.strip()
    if text.lower().endswith(_YAML_SUFFIXES):
        return _from_file(Path(text))
    levels = [_level(part, where) for part in text.split("/")]
    return levels[0] if len(levels) == 1 else Hierarchical(tuple(levels))


def _from_file(path: Path) -> Pattern:
    from tilesparse.utils.config import load_yaml  # yaml only when a file is named

    data = load_yaml(path)
    if isinstance(data, dict) and "pattern" in data and "kind" not in data:
        data = data["pattern"]
    return as_pattern(data, str(path))


# kind -> (required fields, optional fields, what the required fields mean)
_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "block": (("out", "in"), ("sparsity",), "block size in channels"),
    "nm": (("n", "m"), ("axis",), "n kept of every m"),
    "channel": ((), ("sparsity",), ""),
    "filter": ((), ("sparsity",), ""),
    "unstructured": ((), ("sparsity",), ""),
    "hierarchical": (("levels",), (), "a list of patterns, outermost first"),
}


def pattern_from_dict(data: Any, where: str = "pattern") -> Pattern:
    """The inverse of ``Pattern.to_dict`` (YAML recipes and checkpoints)."""
    if not isinstance(data, dict):
        raise ConfigError(where, [f"expected a mapping with 'kind', got {short_repr(data, 60)}"])
    kind = data.get("kind")
    if kind not in _FIELDS:
        raise ConfigError(where, [f"unknown pattern kind {short_repr(kind, 30)}; expected one of {', '.join(_FIELDS)}"])
    required, optional, meaning = _FIELDS[kind]
    f = {k: v for k, v in data.items() if k != "kind"}
    extra = sorted(set(f) - set(required) - set(optional))
    if extra:
        raise ConfigError(where, [f"unknown field(s) {', '.join(map(str, extra))} for kind {kind!r}; "
                                  f"expected {', '.join(required + optional)}"])
    if any(k not in f for k in required):
        raise ConfigError(where, [f"kind {kind!r} needs {' and '.join(map(repr, required))} ({meaning})"])
    if kind == "block":
        return Block(f["out"], f["in"], f.get("sparsity"))
    if kind == "nm":
        return NM(f["n"], f["m"], f.get("axis", "in"))
    if kind == "hierarchical":
        levels = f["levels"]
        if not isinstance(levels, list):
            raise ConfigError(where, [f"'levels': expected a list of patterns, got {short_repr(levels, 40)}"])
        return Hierarchical(tuple(as_pattern(lv, f"{where}.levels[{i}]") for i, lv in enumerate(levels)))
    return _NAMED_KINDS[kind](f.get("sparsity"))  # type: ignore[call-arg]


def as_pattern(value: Any, where: str = "pattern") -> Pattern:
    """A Pattern, a spec string or a dict -> Pattern."""
    if isinstance(value, Pattern):
        return value
    if isinstance(value, str):
        return parse_pattern(value, where)
    return pattern_from_dict(value, where)
