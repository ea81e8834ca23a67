"""YAML read with the line of every key, for errors that name the file, the line and the field.

Used by the dataset description files (``datasets.described._description``) and the pipeline files
(``cluster.pipeline._load``): the document is composed as well as loaded, so each mapping key and list
item has its line; a key given twice in one mapping (which ``yaml.safe_load`` silently resolves to
the last one) is reported. :func:`known_keys` walks a pydantic model to the model at a location,
for "did you mean" hints on unknown keys.
"""

from __future__ import annotations

import types
import typing
from typing import Any

__all__ = ["Duplicate", "read_text", "read_yaml_text", "dotted", "line_of", "type_options", "known_keys",
           "unknown_key_message"]

#: A key given twice: its location, its line and the line where it was first given.
Duplicate = tuple[tuple, int, int]


def read_text(path, what: str, error: type[Exception]) -> str:
    """The text of ``path``, or ``error`` naming ``what`` and the path when it is missing or unreadable."""
    from pathlib import Path

    try:
        return Path(path).read_text()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_yaml_text(text: str) -> tuple[Any, dict, list[Duplicate]]:
    """The document, ``{loc: line}`` (1-based; a key's line for mapping entries; integer-like keys are
    also recorded as ints, since pydantic reports ``{1: OFA}`` mappings under the int) and the
    duplicated keys. Raises ``yaml.YAMLError`` for text that is not YAML."""
    import yaml

    node = yaml.compose(text, Loader=yaml.SafeLoader)
    raw = yaml.safe_load(text)
    lines: dict = {}
    dups: list[Duplicate] = []
    if node is not None:
        _walk(node, (), lines, dups)
    return raw, lines, dups


def _walk(node, loc: tuple, lines: dict, dups: list) -> None:
    import yaml

    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for k, v in node.value:
            key, line = k.value, k.start_mark.line + 1
            if key in seen:
                dups.append((loc + (key,), line, seen[key]))
            seen[key] = line
            lines[loc + (key,)] = line
            as_int = _int_or_none(key)
            if as_int is not None:
                lines.setdefault(loc + (as_int,), line)
            _walk(v, loc + (key,), lines, dups)
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            lines[loc + (i,)] = v.start_mark.line + 1
            _walk(v, loc + (i,), lines, dups)


def _int_or_none(key: Any) -> int | None:
    try:
        return int(key)
    except (TypeError, ValueError):
        return None


def dotted(loc: tuple) -> str:
    """``fit.models[0].name`` for ``("fit", "models", 0, "name")``."""
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) and out else (f".{p}" if out else str(p))
    return out or "(top level)"


def line_of(lines: dict, loc: tuple) -> int | None:
    """The line of ``loc``, or of its nearest enclosing entry that is in the file."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in lines:
            return lines[loc[:n]]
    return None


def type_options(tp) -> list:
    """The alternatives of a (possibly Optional / Union / Annotated) annotation."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return type_options(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [o for a in typing.get_args(tp) for o in type_options(a)]
    return [tp]


def known_keys(model, loc: tuple) -> list[str]:
    """The field names of the pydantic model found at ``loc`` under ``model`` (empty when none is);
    dict keys (subject or family names) and list indices are stepped through."""
    from pydantic import BaseModel

    tps: list = [model]
    for part in loc:
        nxt = []
        for tp in (o for t in tps for o in type_options(t)):
            origin = typing.get_origin(tp)
            if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str) and part in tp.model_fields:
                nxt.append(tp.model_fields[part].annotation)
            elif origin is dict:
                nxt.append(typing.get_args(tp)[1])
            elif origin is list and isinstance(part, int):
                nxt.append(typing.get_args(tp)[0])
        tps = nxt
    for tp in (o for t in tps for o in type_options(t)):
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            return list(tp.model_fields)
    return []


def unknown_key_message(model, loc: tuple) -> str:
    """``unknown key 'x'; did you mean 'y'? (known keys here: ...)`` for the key at ``loc`` under ``model``."""
    import difflib

    known = known_keys(model, loc[:-1])
    close = difflib.get_close_matches(str(loc[-1]), known, n=3, cutoff=0.5)
    return (f"unknown key {loc[-1]!r}" + (f"; did you mean {' or '.join(map(repr, close))}?" if close else "")
            + (f" (known keys here: {', '.join(known)})" if known else ""))
