"""Option parsers and small helpers shared by the extractors (no torch imports)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator


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


# ----------------------------------------------------------------------------- helpers
def slugify(*parts: Any, max_len: int = 120) -> str:
    """Filesystem/table-safe name: lowercase ``[a-z0-9._-]`` joined by ``-``.

    Names longer than ``max_len`` are truncated and suffixed with a short hash
    of the full name, so distinct settings never collide.
    """
    raw = "-".join(str(p) for p in parts if p is not None and str(p) != "")
    s = re.sub(r"[^a-z0-9.]+", "-", raw.lower()).strip("-.")
    s = re.sub(r"-{2,}", "-", s)
    if len(s) > max_len:
        h = hashlib.sha1(s.encode()).hexdigest()[:10]
        s = s[: max_len - 11].rstrip("-.") + "-" + h
    return s


def weights_dir() -> Path:
    """Directory searched for local weights: ``$BRAINSTORE_WEIGHTS_DIR`` or ``~/.cache/brainstore/weights``."""
    env = os.environ.get("BRAINSTORE_WEIGHTS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "brainstore" / "weights"


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Force Hugging Face hub offline mode so no network request is ever attempted."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY")
    old_env = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    consts = None
    try:
        import huggingface_hub.constants as consts  # light import, no torch

        old_const = consts.HF_HUB_OFFLINE
        consts.HF_HUB_OFFLINE = True
    except Exception:  # pragma: no cover - huggingface_hub always installed here
        consts = None
    try:
        yield
    finally:
        if consts is not None:
            consts.HF_HUB_OFFLINE = old_const
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_pil_image(item: Any, who: str) -> Any:
    """Return ``item`` converted to RGB, or raise ``TypeError`` if it is not a PIL image."""
    from PIL import Image

    if not isinstance(item, Image.Image):
        raise TypeError(f"{who}: expected a PIL.Image.Image, got {type(item).__name__}")
    return item if item.mode == "RGB" else item.convert("RGB")
