"""The two bits of markup every part of the HTML report writes: escaped text and an inline PNG."""

from __future__ import annotations

import base64
import html
from typing import Any

__all__ = ["esc", "img"]


def esc(value: Any) -> str:
    """HTML-escape any value for text and attribute positions (``& < > " '``)."""
    return html.escape("" if value is None else str(value), quote=True)


def img(png: bytes, alt: str, cls: str | None = None) -> str:
    """An ``<img>`` holding ``png`` as a base64 data URI (the report stays one file)."""
    css = f' class="{esc(cls)}"' if cls else ""
    return f'<img{css} alt="{esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'
