"""The feature store's errors, and the one translation of storage-layer failures into them.

Every :class:`~._store.FeatureStore` method (and the version methods of :mod:`._versions`) is wrapped
by :func:`_io`: an error of LanceDB, Lance or obstore becomes a :class:`StoreAccessError`, one line
naming the store, the cause and the fix (:func:`brainstore._storage.store_failure`).
"""

from __future__ import annotations

import functools
from typing import Sequence

__all__ = ["FeatureStoreError", "StoreAccessError", "MissingStimuliError"]


class FeatureStoreError(ValueError):
    """A store operation was refused (the message names the table, the field and the fix)."""


class StoreAccessError(FeatureStoreError):
    """The store could not be read or written: its object store unreachable, its bucket missing, its
    credentials refused, or another failure of the storage layer. The message is one line naming the
    store, the cause and the fix (:func:`brainstore._storage.store_failure`); the library's own error,
    with its Rust debug dump, is only the ``__cause__``."""


def _io(method):
    """Turn the storage layer's errors raised by ``method`` (LanceDB, Lance, obstore) into :class:`StoreAccessError`."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except (FeatureStoreError, MissingStimuliError):
            raise
        except Exception as e:
            from .._storage import store_failure

            msg = store_failure(e, what="feature store", uri=self.uri, option="--store",
                                options=getattr(self, "_storage_options", None))
            if msg is None:
                raise
            raise StoreAccessError(msg) from e

    return wrapper


class MissingStimuliError(KeyError):
    """Some requested stimulus ids are not in a feature table (or not in the version of it that was read)."""

    def __init__(self, feature: str, missing: Sequence[str], version: int | None = None):
        self.feature = feature
        self.missing = list(missing)
        self.version = version
        shown = ", ".join(self.missing[:10]) + (" ..." if len(self.missing) > 10 else "")
        if version is None:
            where, fix = f"feature table {feature!r}", "run `brainstore extract` for them (or check the id spelling)"
        else:
            where, fix = (f"version {version} of feature table {feature!r}",
                          "read the latest version for stimuli added later (or check the id spelling)")
        super().__init__(f"{len(self.missing)} stimulus id(s) missing from {where}: {shown}; {fix}")

    def __str__(self) -> str:
        return str(self.args[0])

    def __reduce__(self):  # rebuilt from its fields after pickling (Ray returns task errors pickled)
        return type(self), (self.feature, self.missing, self.version)
