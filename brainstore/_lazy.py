"""Lazy public names (PEP 562): a package's ``__init__`` lists the names whose modules are heavy (torch, Ray,
pydantic readers) and gets them imported on first access, so importing the package stays light."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_names(package: str, table: dict[str, str], namespace: dict[str, Any]) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``package`` for ``table`` ({name: module, relative to ``package`` or
    absolute}); a resolved name is cached in ``namespace`` (the package's ``globals()``)."""

    def __getattr__(name: str) -> Any:
        if name in table:
            value = getattr(importlib.import_module(table[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
