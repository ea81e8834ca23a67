"""Checks of the local folders a command reads or writes, made before any work starts.

A store, registry or run folder that is a file, sits under a file, or cannot be written (by its
permissions, or because its file system takes no new folder: ``/proc``, a read-only mount) is
refused with one message naming the path and the option to change, instead of an ``OSError``
after minutes of work. Reading verbs never create a folder: a mistyped path is an error, not an
empty listing.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["check_folder"]


def check_folder(path: str | Path, what: str, option: str, *, create: bool,
                 error: type[Exception] = ValueError, missing_hint: str = "", make: bool = True) -> Path:
    """Validate a local folder, creating it when ``create`` (writing verbs).

    Parameters
    ----------
    path : the folder.
    what : what it holds, for messages ("feature store", "model registry", "run folder").
    option : the command-line option that names it ("--store").
    create : create a missing folder (and its parents); False: a missing folder is an error.
    error : exception class raised (the caller's own error type).
    missing_hint : how to make the folder, appended when it is missing and ``create`` is False.
    make : with ``create``, make the missing folder now; False only checks that it could be made
        (a command that writes it after its work, and must leave nothing behind when that fails).

    Returns
    -------
    Path
        The folder (absolute, user-expanded).

    Raises
    ------
    error
        The path is a file, lies under a file, is missing (``create=False``), or is not writable
        (``create=True``).
    """
    p = Path(path).expanduser().absolute()
    if p.exists() and not p.is_dir():
        raise error(f"{what} {p} is a file, not a folder; pass a folder with {option}")
    if not p.exists():
        if not create:
            raise error(f"{what} {p} does not exist{'; ' + missing_hint if missing_hint else ''} "
                        f"(or pass the right {option})")
        parent = p.parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise error(f"cannot create {what} {p}: {parent} is a file; pass a folder with {option}")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise error(f"cannot create {what} {p}: {parent} is not writable; pass a folder you can write "
                        f"with {option}")
        refused = _refuses_folders(parent)  # permissions say yes, the file system may still say no (/proc, ro mounts)
        if refused:
            raise error(f"cannot create {what} {p}: {parent} does not take new folders ({refused}); pass a folder "
                        f"you can write with {option}")
        if not make:
            return p
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise error(f"cannot create {what} {p}: {e.strerror or e}; pass another folder with {option}") from e
    elif create and (not os.access(p, os.W_OK | os.X_OK) or _refuses_folders(p)):
        raise error(f"{what} {p} is not writable; pass a folder you can write with {option}")
    return p


def _refuses_folders(parent: Path) -> str:
    """Why a new folder cannot be made in ``parent`` (``""`` when it can): one is made and removed at once.

    Permission bits do not say everything: root passes every ``os.access`` check, yet ``/proc`` or a
    read-only mount refuse the ``mkdir`` that a command would only try after its work.
    """
    import tempfile

    try:
        os.rmdir(tempfile.mkdtemp(prefix=".brainstore-probe-", dir=parent))
    except OSError as e:
        return e.strerror or str(e)
    return ""
