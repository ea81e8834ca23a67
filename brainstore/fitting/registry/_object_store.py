"""The registry on object storage (``s3://``, ``gs://``, ``az://``; options as for the feature store, see
``brainstore._storage``): the same layout as a local registry (``<name>/@<version>/...``,
``<name>/@aliases.json``), so a local registry copied there is a registry. Object stores have no folder
rename, so a write goes: take the name's lock (``_locks/<name>.lock``, created with a conditional PUT:
concurrent writers of one name wait for each other), put the weights, then put ``model.json``, the commit
marker, both as conditional creates, so no object of a version is ever replaced. Aliases are replaced
under the same lock: a compare-and-swap. A version being deleted loses ``model.json`` first. Failures of
the store are one :class:`RegistryError` line naming the registry, the cause and the fix.

:class:`ObjectStoreBackend` holds these operations; :class:`~._registry.ModelRegistry` inherits them and
calls them when its URI is remote.
"""

from __future__ import annotations

import contextlib

import json

from ._records import (ALIASES_FILE, META_FILE, WEIGHTS_FILE, ModelRecord, RegistryError, folder_version,
                       parse_aliases, version_folder)

__all__ = ["ObjectStoreBackend"]


class ObjectStoreBackend:
    """The object-storage operations of :class:`~._registry.ModelRegistry` (which sets ``root``, ``remote``,
    ``storage_options``, ``lock_timeout`` and provides ``path``, ``_file`` and ``_missing``)."""

    def _init_remote(self, uri: str, storage_options: dict | None, create: bool) -> None:
        """Open the store under ``uri``; a reader (``create`` False) refuses a prefix holding no model."""
        from ..._storage import StorageOptionsError, object_store
        from ..._storage import storage_options as resolve

        self.root = uri.rstrip("/")
        try:
            self.storage_options = resolve(uri, storage_options)
            self._obj = object_store(uri, self.storage_options)
        except StorageOptionsError as e:
            raise RegistryError(f"model registry {uri}: {e}") from None
        if not create and not self._remote_keys(limit=1):
            raise RegistryError(f"model registry {uri} holds no model (nothing under that prefix, or the object "
                                "store is unreachable with these options); fit models into it first "
                                "(`brainstore fit --registry ...`)")

    def _remote_key(self, name: str, version: int, fname: str) -> str:
        if version == 1 and self._get(f"{name}/{META_FILE}") is not None:  # saved before versions existed
            return f"{name}/{fname}"
        return f"{name}/{version_folder(version)}/{fname}"

    def _stamp_remote(self, rec: ModelRecord) -> tuple:
        """The objects' ETags, sizes and modification times (see :meth:`~._registry.ModelRegistry.stamp`)."""
        import obstore
        from obstore.exceptions import NotFoundError

        out = []
        for f in (WEIGHTS_FILE, META_FILE):
            try:
                with self._reaching():
                    info = obstore.head(self._obj, self._remote_key(rec.name, rec.version, f))
            except (NotFoundError, FileNotFoundError):
                raise FileNotFoundError(2, "missing", self._file(rec.path, f)) from None
            out.append((info.get("e_tag"), info["size"], str(info["last_modified"])))
        return tuple(out)

    def _remote_keys(self, prefix: str = "", limit: int | None = None) -> list[str]:
        import obstore

        keys: list[str] = []
        with self._reaching():
            for batch in obstore.list(self._obj, prefix=prefix or None):
                keys += [o["path"] for o in batch]
                if limit is not None and len(keys) >= limit:
                    break
        return keys

    @contextlib.contextmanager
    def _reaching(self):
        """Failures of the object store (unreachable, missing bucket, refused credentials) as one
        :class:`RegistryError` line of ours naming the registry and the fix; the library's error is chained
        (``__cause__``) for ``--verbose`` and for the service, which answers them 503."""
        from ..._storage import store_failure

        from obstore.exceptions import NotFoundError

        try:
            yield
        except (RegistryError, NotFoundError, FileNotFoundError):  # absent objects: the caller's business
            raise
        except Exception as e:
            line = store_failure(e, what="model registry", uri=self.root, option="--registry",
                                 options=self.storage_options)
            if line is None:
                raise
            raise RegistryError(line) from e

    def _get(self, key: str) -> bytes | None:
        import obstore
        from obstore.exceptions import NotFoundError

        try:
            with self._reaching():
                return bytes(obstore.get(self._obj, key).bytes())
        except (NotFoundError, FileNotFoundError):
            return None

    def _remote_lock(self, name: str):
        from ..._storage import ObjectLock

        key = f"_locks/{name}.lock"
        return ObjectLock(self._obj, key, what=f"model {name!r} in registry {self.root}", timeout=self.lock_timeout,
                          error=RegistryError, where=f"{self.root}/{key}")

    def _remote_versions(self, name: str) -> list[int]:
        return self._remote_models(name, exact=True).get(name, [])

    def _remote_read(self, name: str, version: int, fname: str) -> bytes | None:
        return self._get(self._remote_key(name, version, fname))

    def _remote_put_version(self, name: str, version: int, weights: bytes, meta: bytes) -> str:
        """Put a version's objects as conditional creates (the caller holds the name's lock); FileExistsError
        when its model.json exists. Weights a killed writer left without their model.json are replaced."""
        import obstore
        from obstore.exceptions import AlreadyExistsError

        base = f"{name}/{version_folder(version)}"
        if self._get(f"{base}/{META_FILE}") is not None:
            raise FileExistsError(17, "exists", f"{self.root}/{base}")
        with self._reaching():
            obstore.delete(self._obj, f"{base}/{WEIGHTS_FILE}")  # a crashed writer's orphan, if any
            try:
                obstore.put(self._obj, f"{base}/{WEIGHTS_FILE}", weights, mode="create")
                obstore.put(self._obj, f"{base}/{META_FILE}", meta, mode="create")  # the commit marker, last
            except (AlreadyExistsError, FileExistsError):
                raise FileExistsError(17, "exists", f"{self.root}/{base}") from None
        return f"{self.root}/{base}"

    def _remote_aliases(self, name: str) -> dict:
        raw = self._get(f"{name}/{ALIASES_FILE}")
        return {} if raw is None else parse_aliases(name, f"{self.root}/{name}/{ALIASES_FILE}", raw)

    def _remote_put_aliases(self, name: str, aliases: dict) -> None:
        import obstore

        with self._reaching():
            obstore.put(self._obj, f"{name}/{ALIASES_FILE}", json.dumps(aliases, sort_keys=True, indent=1).encode())

    def _remote_remove_version(self, name: str, version: int) -> None:
        import obstore

        meta, weights = (self._remote_key(name, version, f) for f in (META_FILE, WEIGHTS_FILE))
        with self._reaching():
            obstore.delete(self._obj, meta)  # model.json first: the version is gone for readers at once
            obstore.delete(self._obj, weights)

    def _remote_remove_name(self, name: str) -> None:
        import obstore

        keys = self._remote_keys(f"{name}/")
        keys.sort(key=lambda k: not k.endswith(META_FILE))  # every model.json first
        with self._reaching():
            for k in keys:
                obstore.delete(self._obj, k)

    def _remote_models(self, prefix: str, exact: bool = False) -> dict[str, list[int]]:
        """``{name: versions}`` of every model whose name starts with ``prefix`` (``exact``: is ``prefix``)."""
        out: dict[str, set] = {}
        for key in self._remote_keys(f"{prefix}/" if exact else ""):
            parts = key.split("/")
            if parts[-1] != META_FILE or len(parts) < 2:
                continue
            v = folder_version(parts[-2])
            name_parts = parts[:-2] if v is not None else parts[:-1]
            if not name_parts or any(p.startswith((".", "_", "@")) for p in name_parts):
                continue
            name = "/".join(name_parts)
            if (name == prefix) if exact else name.startswith(prefix):
                out.setdefault(name, set()).add(1 if v is None else v)
        return {n: sorted(v) for n, v in out.items()}

    def _remote_check_placement(self, name: str) -> None:
        parts = name.split("/")
        for i in range(1, len(parts)):
            if self._remote_versions("/".join(parts[:i])):
                raise RegistryError(f"cannot save model {name!r}: {'/'.join(parts[:i])!r} is already a model and "
                                    "models cannot be nested inside models; choose another name")
        inside = [n for n in self._remote_models(f"{name}/") if n != name]
        if inside:
            raise RegistryError(f"cannot save model {name!r}: {self.path(name)} holds other models; choose another name")
