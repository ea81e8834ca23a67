"""The registry in a local folder: the file operations :class:`~._registry.ModelRegistry` builds on.

Layout: ``<root>/<name>/@<version>/{model.safetensors, model.json}`` (one folder per version, never
rewritten) and ``<root>/<name>/@aliases.json``. A model saved by an older brainstore as
``<root>/<name>/model.json`` is read as version 1 in place. A version is written in a hidden temporary
sibling folder, fsynced, and renamed into place with a rename that refuses an existing target, so a
crash never leaves a half-written version visible and two writers never get the same number. Writes of
one name (new versions, aliases) hold the lock ``<root>/_locks/<name>.lock``. A temporary folder that a
killed writer left behind is removed by the next write into its folder once it is an hour old.

Permissions follow the umask: ``0666 & ~umask`` for files and ``0777 & ~umask`` for folders (0644 /
0755 under the usual 022), so a registry shared by a lab is readable by its members.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

from ._fileio import fsync, install_dir
from ._records import (ALIASES_FILE, META_FILE, WEIGHTS_FILE, RegistryError, folder_version, parse_aliases,
                       version_folder)

__all__ = ["LocalFiles", "STALE_TMP_S"]

#: A temporary folder older than this (seconds) was left by a killed writer: the next write into its
#: folder removes it (a model write takes seconds, so live ones are never this old).
STALE_TMP_S = 3600.0


def _umask() -> int:
    """The process umask, read without changing it where Linux exposes it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _set_modes(folder: Path, files) -> None:
    mask = _umask()
    for f in files:
        os.chmod(folder / f, 0o666 & ~mask)
    os.chmod(folder, 0o777 & ~mask)


def _remove_stale_tmp(parent: Path) -> None:
    """Remove temporary folders a killed writer left in ``parent`` (older than :data:`STALE_TMP_S`)."""
    now = time.time()
    for p in parent.glob(".*.tmp-*"):
        try:
            if p.is_dir() and now - p.stat().st_mtime > STALE_TMP_S:
                shutil.rmtree(p, ignore_errors=True)
        except FileNotFoundError:  # removed by a concurrent writer
            pass


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
    fsync(path)


class LocalFiles:
    """Local-folder operations of :class:`~._registry.ModelRegistry` (which sets ``root`` and ``lock_timeout``)."""

    root: Path
    lock_timeout: float

    def _name_dir(self, name: str) -> Path:
        return self.root.joinpath(*name.split("/"))

    def _local_version_dir(self, name: str, version: int) -> Path:
        d = self._name_dir(name)
        if version == 1 and (d / META_FILE).is_file():  # saved before versions existed
            return d
        return d / version_folder(version)

    def _local_versions(self, name: str) -> list[int]:
        d = self._name_dir(name)
        try:
            entries = list(os.scandir(d))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = {v for e in entries if (v := folder_version(e.name)) is not None and (Path(e.path) / META_FILE).is_file()}
        if any(e.name == META_FILE for e in entries):
            out.add(1)
        return sorted(out)

    def _local_read(self, name: str, version: int, fname: str) -> bytes | None:
        try:
            return (self._local_version_dir(name, version) / fname).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    @contextlib.contextmanager
    def _local_lock(self, name: str) -> Iterator[None]:
        from filelock import FileLock, Timeout

        path = self.root / "_locks" / f"{name}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path, timeout=self.lock_timeout)
        try:
            lock.acquire()
        except Timeout:
            raise RegistryError(f"model {name!r} in registry {self.root}: another writer has held its lock {path} for "
                                f"more than {self.lock_timeout:g} s; wait for it to finish (or end it) and retry") from None
        try:
            yield
        finally:
            lock.release()

    def _local_put_version(self, name: str, version: int, weights: bytes, meta: bytes) -> Path:
        """Write version ``version`` of ``name`` atomically; FileExistsError when it is taken."""
        parent = self._name_dir(name)
        created = [p for p in reversed([parent, *parent.parents]) if self.root in p.parents and not p.exists()]
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_tmp(parent)
        final = parent / version_folder(version)
        tmp = parent / f".{final.name}.tmp-{uuid.uuid4().hex[:12]}"
        tmp.mkdir()  # (not tempfile.mkdtemp: its 0700 mode would hide the model from other users)
        try:
            _write_file(tmp / WEIGHTS_FILE, weights)
            _write_file(tmp / META_FILE, meta)
            _set_modes(tmp, (WEIGHTS_FILE, META_FILE))
            fsync(tmp)
            install_dir(tmp, final, overwrite=False)
            fsync(parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            for d in reversed(created):  # deepest first; only the empty ones we made
                try:
                    d.rmdir()
                except OSError:
                    pass
            raise
        return final

    def _local_aliases(self, name: str) -> dict:
        try:
            raw = (self._name_dir(name) / ALIASES_FILE).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return {}
        return parse_aliases(name, self._name_dir(name) / ALIASES_FILE, raw)

    def _local_put_aliases(self, name: str, aliases: dict) -> None:
        """Replace ``@aliases.json`` in one rename (the caller holds the name's lock)."""
        d = self._name_dir(name)
        tmp = d / f".{ALIASES_FILE}.tmp-{uuid.uuid4().hex[:12]}"
        _write_file(tmp, json.dumps(aliases, sort_keys=True, indent=1).encode())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, d / ALIASES_FILE)
        fsync(d)

    def _local_remove_version(self, name: str, version: int) -> None:
        """Remove one version: its folder leaves the registry in one rename (model.json first for an old layout)."""
        d = self._local_version_dir(name, version)
        if d == self._name_dir(name):  # version 1 of the old layout: files directly in the name's folder
            os.unlink(d / META_FILE)
            os.unlink(d / WEIGHTS_FILE)
            return
        trash = d.with_name(f".{d.name}.del-{uuid.uuid4().hex[:8]}")
        os.rename(d, trash)
        shutil.rmtree(trash, ignore_errors=True)

    def _local_remove_name(self, name: str) -> None:
        """Remove a name's folder (every version, its aliases) in one rename, then empty group folders."""
        d = self._name_dir(name)
        trash = d.with_name(f".{d.name}.del-{uuid.uuid4().hex[:8]}")
        os.rename(d, trash)
        shutil.rmtree(trash, ignore_errors=True)
        for p in d.parents:
            if p == self.root or self.root not in p.parents:
                break
            try:
                p.rmdir()
            except OSError:
                break

    def _local_models(self, prefix: str) -> dict[str, list[int]]:
        """``{name: versions}`` of every model under the root whose name starts with ``prefix``."""
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            p = Path(dirpath)
            versions = [folder_version(d) for d in dirnames]
            has = sorted({v for v, d in zip(versions, dirnames) if v is not None and (p / d / META_FILE).is_file()}
                         | ({1} if META_FILE in filenames else set()))
            dirnames[:] = [d for d in dirnames if not d.startswith((".", "_", "@"))]  # temporaries, runs, versions
            if not has or p == self.root:
                continue
            dirnames[:] = []  # models are not nested
            name = p.relative_to(self.root).as_posix()
            if name.startswith(prefix):
                out[name] = has
        return out

    def _local_stamp(self, name: str, version: int) -> tuple:
        d = self._local_version_dir(name, version)
        return tuple((st.st_mtime_ns, st.st_size, st.st_ino) for st in (
            (d / f).stat() for f in (WEIGHTS_FILE, META_FILE)))

    def _local_check_placement(self, name: str) -> None:
        """Refuse names nested inside another model, or naming a folder that holds models."""
        final = self._name_dir(name)
        for p in final.parents:
            if p == self.root or self.root not in p.parents:
                break
            if self._local_versions(p.relative_to(self.root).as_posix()):
                raise RegistryError(f"cannot save model {name!r}: {p.relative_to(self.root).as_posix()!r} is already a "
                                    "model and models cannot be nested inside models; choose another name")
        if final.is_dir() and not self._local_versions(name) and any(
                not c.name.startswith((".", "@")) for c in final.iterdir()):
            raise RegistryError(f"cannot save model {name!r}: {final} is a folder of other models; choose another name")

