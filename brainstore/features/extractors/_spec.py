"""What an extractor spec is made of: the string grammar, the option schema and its value parsers.

Grammar::

    spec  := name | name ":" pairs
    pairs := key "=" value ("," key "=" value)*
    value := text without top-level "," | "[" anything with balanced brackets "]"

Brackets let a value hold commas, colons or a whole nested spec, e.g.
``video:image=[clip:arch=ViT-B-32,layer=6],frames=8``. Which names and keys are valid is the
registry's business (:func:`~._registry.parse_spec`); nothing here knows an extractor class.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


# ----------------------------------------------------------------------------- options
@dataclass(frozen=True)
class Option:
    """One ``key=value`` setting of an extractor spec.

    Parameters
    ----------
    default
        Value used when the key is absent (already parsed, may be ``None``).
    parse
        Converts the string form to the typed value; raises ``ValueError``.
    doc
        One line for :func:`list_extractors` and error messages.
    in_version
        Whether a non-default value changes the output (the extractor's
        ``_version_parts`` decides the actual naming; this is documentation).
    """

    default: Any
    parse: Callable[[str], Any]
    doc: str
    in_version: bool = True


def choice(*values: str) -> Callable[[str], str]:
    """Parser accepting one of ``values`` (case-insensitive)."""

    def _parse(s: str) -> str:
        v = s.strip().lower()
        if v not in values:
            raise ValueError(f"must be one of {list(values)}, got {s!r}")
        return v

    _parse.choices = values  # type: ignore[attr-defined]
    return _parse


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """Parser for an integer in ``[lo, hi]``."""

    def _parse(s: str) -> int:
        try:
            v = int(str(s).strip())
        except ValueError:
            raise ValueError(f"must be an integer, got {s!r}") from None
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise ValueError(f"must be in [{lo}, {hi}], got {v}")
        return v

    return _parse


def boolean(s: str) -> bool:
    """Parser for ``true|false`` (also 1/0/yes/no)."""
    v = str(s).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"must be true or false, got {s!r}")


def text(s: str) -> str | None:
    """Parser for a free string; ``''`` becomes ``None``."""
    v = str(s).strip()
    return v or None


def layer_or(*words: str) -> Callable[[str], int | str]:
    """Parser for an integer layer index or one of ``words`` (e.g. ``final``)."""

    def _parse(s: str) -> int | str:
        v = str(s).strip().lower()
        if v in words:
            return v
        try:
            return int(v)
        except ValueError:
            raise ValueError(f"must be an integer index or one of {list(words)}, got {s!r}") from None

    return _parse


# ----------------------------------------------------------------------------- grammar
def split_top_level(s: str, sep: str) -> list[str]:
    """Split ``s`` on ``sep`` outside brackets; raise on unbalanced brackets."""
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in spec {s!r}")
        if ch == sep and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise ValueError(f"unbalanced '[' in spec {s!r}")
    parts.append("".join(cur))
    return parts


def unbracket(v: str) -> str:
    """Remove one pair of enclosing brackets when the first '[' closes at the end."""
    v = v.strip()
    if not (v.startswith("[") and v.endswith("]")):
        return v
    depth = 0
    for i, ch in enumerate(v):
        depth += ch == "["
        depth -= ch == "]"
        if depth == 0 and i < len(v) - 1:
            return v  # e.g. "[a]x[b]": the first pair does not enclose everything
    return v[1:-1].strip()


def format_value(v: Any) -> str:
    """String form of an option value for a spec (bracketed when it needs it); an extractor gives its spec."""
    if v is None:
        return ""
    if isinstance(v, bool):
        s = "true" if v else "false"
    elif isinstance(getattr(v, "spec", None), str):  # an extractor (a nested spec)
        s = v.spec
    else:
        s = str(v)
    return f"[{s}]" if any(c in s for c in ",[]=") else s
