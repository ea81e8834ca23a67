"""The registry on object storage (``s3://``, ``gs://``, ``az://``; options as for the feature store, see
``brainstore._storage``): the same layout as a local registry, so a local registry copied there is a
registry. Object stores have no folder rename, so a write goes: take the model's lock
(``_locks/<name>.lock``, created with a conditional PUT: concurrent writers of one model wait for each
other), put the weights, then put ``model.json``, the commit marker. A reader that meets new weights
under an old ``model.json`` sees the sha256 disagree, re-reads ``model.json`` and retries; a model being
deleted loses ``model.json`` first. Failures of the store are one :class:`RegistryError` line naming the
registry, the cause and the fix.

:class:`ObjectStoreBackend` holds these operations; :class:`~._registry.ModelRegistry` inherits them and
calls them when its URI is remote.
"""

from __future__ import annotations

import contextlib
import warnings

from ..._provenance import sha256
from ._fileio import json_bytes
from ._records import META_FILE, WEIGHTS_FILE, ModelRecord, RegistryError, check_name, parse_meta

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

    def _stamp_remote(self, rec: ModelRecord) -> tuple:
        """The objects' ETags, sizes and modification times (see :meth:`~._registry.ModelRegistry.stamp`)."""
        import obstore
        from obstore.exceptions import NotFoundError

        out = []
        for f in (WEIGHTS_FILE, META_FILE):
            try:
                with self._reaching():
                    info = obstore.head(self._obj, f"{rec.name}/{f}")
            except (NotFoundError, FileNotFoundError):
                raise FileNotFoundError(2, "missing", self._file(rec.path, f)) from None
            out.append((info.get("e_tag"), info["size"], str(info["last_modified"])))
        return (rec.name, *out)

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

    def _lock(self, name: str):
        from ..._storage import ObjectLock

        key = f"_locks/{name}.lock"
        return ObjectLock(self._obj, key, what=f"model {name!r} in registry {self.root}", timeout=self.lock_timeout,
                          error=RegistryError, where=f"{self.root}/{key}")

    def _save_remote(self, name: str, arrays: dict, doc: dict, overwrite: bool) -> ModelRecord:
        import obstore
        import safetensors.numpy

        data = safetensors.numpy.save(arrays, metadata={"brainstore_model": name})
        parts = name.split("/")
        with self._reaching(), self._lock(name):
            for i in range(1, len(parts)):
                if self._get(f"{'/'.join(parts[:i])}/{META_FILE}") is not None:
                    raise RegistryError(f"cannot save model {name!r}: {'/'.join(parts[:i])!r} is already a model and "
                                        "models cannot be nested inside models; choose another name")
            inside = [k for k in self._remote_keys(f"{name}/") if k.endswith(f"/{META_FILE}") and k != f"{name}/{META_FILE}"]
            if inside:
                raise RegistryError(f"cannot save model {name!r}: {self.path(name)} holds other models; choose another name")
            if not overwrite and self._get(f"{name}/{META_FILE}") is not None:
                raise RegistryError(f"model {name!r} already exists in {self.root}; pass overwrite=True to replace "
                                    "it or choose another name")
            doc = {**doc, "safetensors_sha256": sha256(bytes(data))}
            body = json_bytes(doc)
            with self._reaching():
                obstore.put(self._obj, f"{name}/{WEIGHTS_FILE}", bytes(data))
                obstore.put(self._obj, f"{name}/{META_FILE}", body)  # the commit marker, last
        return ModelRecord(name, self.path(name), doc)

    def _load_remote(self, name: str) -> tuple[bytes, dict]:
        import time as _time

        final = self.path(name)
        raw = self._get(f"{name}/{META_FILE}")
        for attempt in range(8):  # a writer between its two puts, or an overwrite racing this read
            if raw is None:
                raise self._missing(name)
            data = self._get(f"{name}/{WEIGHTS_FILE}")
            meta = parse_meta(name, self._file(final, META_FILE), raw)
            if data is not None and meta.get("safetensors_sha256") == sha256(data):
                return data, meta
            _time.sleep(0.05 * 2 ** min(attempt, 4))
            again = self._get(f"{name}/{META_FILE}")
            if again != raw:
                raw = again
                continue
            if data is None and attempt >= 2:
                raise RegistryError(f"model {name!r}: {self._file(final, WEIGHTS_FILE)} is missing; the model is "
                                    f"incomplete (re-save it, or delete it with ModelRegistry.delete({name!r}))")
        got = sha256(data) if data is not None else "missing"
        raise RegistryError(
            f"model {name!r}: {self._file(final, WEIGHTS_FILE)} changed since it was saved (sha256 {got[:12]}..., "
            f"model.json records {str(meta.get('safetensors_sha256'))[:12]}...); the weights cannot be trusted: "
            "re-save or refit the model")

    def _delete_remote(self, name: str) -> None:
        """Remove a model under its lock, ``model.json`` first."""
        import obstore

        with self._reaching(), self._lock(name):
            if self._get(f"{name}/{META_FILE}") is None:
                raise self._missing(name)
            with self._reaching():
                obstore.delete(self._obj, f"{name}/{META_FILE}")
                obstore.delete(self._obj, f"{name}/{WEIGHTS_FILE}")

    def _exists_remote(self, name: str) -> bool:
        return self._get(f"{check_name(name)}/{META_FILE}") is not None

    def _record_remote(self, name: str) -> ModelRecord:
        final = self.path(name)
        raw = self._get(f"{name}/{META_FILE}")
        if raw is None:
            raise self._missing(name)
        return ModelRecord(name, final, parse_meta(name, self._file(final, META_FILE), raw))

    def _list_remote(self, prefix: str) -> list[ModelRecord]:
        """Every model under the prefix whose name starts with ``prefix`` (unreadable ones skipped with a warning)."""
        out = []
        for key in self._remote_keys():
            parts = key.split("/")
            if parts[-1] != META_FILE or len(parts) < 2 or any(p.startswith((".", "_")) for p in parts[:-1]):
                continue
            name = "/".join(parts[:-1])
            if not name.startswith(prefix):
                continue
            raw = self._get(key)
            if raw is None:  # deleted meanwhile
                continue
            try:
                out.append(ModelRecord(name, self.path(name), parse_meta(name, f"{self.root}/{key}", raw)))
            except RegistryError as e:
                warnings.warn(f"skipping model {name!r}: {e}", stacklevel=3)
        return out
