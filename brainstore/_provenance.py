"""Provenance helpers shared by every room: the one sha256 and the one ``package_versions``.

Feature tables record the digest of the weights they were made with and the versions of the
packages that made them; saved models record the digest of their tensors and the same kind of
versions. Both come from here, so a digest or a version string means the same thing everywhere.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

__all__ = ["sha256", "sha256_file", "sha256_files", "package_versions"]

_BLOCK = 1 << 22  # 4 MiB reads
_FILE_CACHE: dict[tuple[str, int, int], str] = {}


def sha256(data: bytes | bytearray | memoryview | Iterable[bytes] | str | os.PathLike) -> str:
    """Hex sha256 of bytes, of byte chunks hashed in order (a list, a generator), or of a file's content.

    A ``str`` or path is a file name (see :func:`sha256_file` for a cached digest of weight files).
    """
    h = hashlib.sha256()
    if isinstance(data, (bytes, bytearray, memoryview)):
        h.update(data)
    elif isinstance(data, (str, os.PathLike)):
        with open(data, "rb") as f:
            for block in iter(lambda: f.read(_BLOCK), b""):
                h.update(block)
    else:
        for chunk in data:
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """:func:`sha256` of a file, cached per real path, size and modification time (weights are hashed once)."""
    p = os.path.realpath(path)
    st = os.stat(p)
    key = (p, st.st_size, st.st_mtime_ns)
    if key not in _FILE_CACHE:
        _FILE_CACHE[key] = sha256(Path(p))
    return _FILE_CACHE[key]


def sha256_files(paths: Sequence[str | os.PathLike]) -> str:
    """One digest for several files: the file's own digest when there is one, else the sha256 of
    the sorted ``basename:digest`` lines."""
    names = sorted(str(p) for p in paths)
    if len(names) == 1:
        return sha256_file(names[0])
    return sha256(f"{os.path.basename(p)}:{sha256_file(p)}\n".encode() for p in names)


def package_versions(*dists: str) -> dict[str, str | None]:
    """Installed versions of the distributions ``dists`` (None when one is not installed), without importing them."""
    out: dict[str, str | None] = {}
    for d in dists:
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            out[d] = None
    return out
