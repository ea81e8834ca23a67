"""Atomic, pickle-free file helpers for the model registry (JSON conversion, fsync, folder swaps)."""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ..._provenance import package_versions as _versions

PACKAGES = ("brainstore", "numpy", "torch", "scikit-learn", "safetensors", "lancedb")


def jsonable(obj: Any, key: str = "", error: type[Exception] = ValueError) -> Any:
    """A JSON-ready copy of ``obj`` (numpy scalars/arrays -> Python lists/numbers).

    Anything else (sets, objects, NaN/inf) raises ``error`` naming ``meta[key]`` and the fix.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, np.generic):
        if isinstance(obj, float) and not np.isfinite(obj):
            raise error(f"meta[{key}] is {obj!r}, which JSON cannot hold; store None or a string instead")
        return obj
    if isinstance(obj, np.generic):
        if not isinstance(obj, (np.number, np.bool_, np.str_)):
            raise error(f"meta[{key}] is a numpy {obj.dtype} scalar; convert it to a number or string")
        return jsonable(obj.item(), key, error)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biufU":
            raise error(f"meta[{key}] is a numpy array of dtype {obj.dtype}; only numeric, bool or "
                        "string arrays can be stored in model.json (put large arrays in the tensors)")
        return jsonable(obj.tolist(), key, error)
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str):
                raise error(f"meta[{key}] has a non-string key {k!r} ({type(k).__name__}); "
                            "JSON keys must be strings: convert it with str()")
            out[k] = jsonable(v, f"{key}.{k}" if key else k, error)
        return out
    if isinstance(obj, (list, tuple)):
        return [jsonable(v, f"{key}[{i}]", error) for i, v in enumerate(obj)]
    raise error(f"meta[{key}] has type {type(obj).__name__}, which is not JSON-serializable; "
                "convert it to str, a number, a list or a dict before saving")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages a saved model depends on (None when absent)."""
    return _versions(*PACKAGES)


def fsync(path: Path) -> None:
    """Flush a file or a folder to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some file systems refuse fsync on folders
        if e.errno not in (errno.EINVAL, errno.EBADF, errno.EACCES):
            raise
    finally:
        os.close(fd)


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], header: dict[str, str]) -> None:
    """Write arrays with ``safetensors.numpy.save_file`` (looked up at call time)."""
    import safetensors.numpy

    safetensors.numpy.save_file(tensors, str(path), metadata=header)


def json_bytes(meta: dict) -> bytes:
    """Strict JSON (no NaN), keys sorted, indented, newline-terminated: the bytes of a model.json."""
    return (json.dumps(meta, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def write_json(path: Path, meta: dict) -> None:
    """Write :func:`json_bytes` of ``meta``."""
    with open(path, "wb") as f:
        f.write(json_bytes(meta))


def exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux ``renameat2(RENAME_EXCHANGE)``; False if unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def install_dir(tmp: Path, final: Path, overwrite: bool = True) -> None:
    """Move the finished folder ``tmp`` to ``final`` atomically (replacing ``final`` if ``overwrite``).

    Raises ``FileExistsError`` when ``final`` holds files and ``overwrite`` is false.
    """
    try:
        os.rename(tmp, final)  # atomic when ``final`` does not exist (or is an empty folder)
        return
    except OSError as e:
        if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR):
            raise
        if not overwrite:
            raise FileExistsError(errno.EEXIST, "exists", str(final)) from None
    if exchange(tmp, final):  # tmp now holds the old folder
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
    os.rename(final, old)  # fallback: a microseconds-long window without ``final``
    try:
        os.rename(tmp, final)
    except BaseException:
        os.rename(old, final)
        raise
    shutil.rmtree(old, ignore_errors=True)
