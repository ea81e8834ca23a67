"""The folder a synthetic generator writes: built in a temporary sibling and renamed into place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["build_folder"]


def build_folder(root: str | Path, overwrite: bool, fill) -> Path:
    """Make the folder ``root`` with ``fill(tmp)`` writing into a temporary sibling that is renamed into
    place at the end, so an interrupted build leaves nothing half written under ``root``.

    Raises
    ------
    FileExistsError
        ``root`` exists and is not an empty folder, and not ``overwrite``.
    """
    root = Path(root).expanduser().resolve()
    if root.exists() and (not root.is_dir() or any(root.iterdir())) and not overwrite:
        raise FileExistsError(f"{root} exists and is not empty; choose another folder or pass overwrite=True (--overwrite)")
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        if root.exists():
            shutil.rmtree(root) if root.is_dir() else root.unlink()
        tmp.rename(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
