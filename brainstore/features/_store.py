"""The LanceDB feature store: one table per feature version, self-describing, idempotent writes.

Table contract (ARCHITECTURE.md): ``stimulus_id`` (string, unique), ``embedding``
(``fixed_size_list<float32|float16>[dim]``), ``dataset``, ``split``; the Arrow schema metadata
key ``brainstore`` holds a JSON object saying exactly how the features were made (extractor,
architecture, pretrained tag or checkpoint sha256 or ``none``, layer, pooling, preprocessing,
package versions, created time).

Writes go through ``merge_insert`` on ``stimulus_id`` (insert when not matched), so reruns and
concurrent writers never duplicate a row, and every committed chunk survives a killed job.
Every commit is a version of the table; ``load``, ``ids`` and ``read`` read any kept version
(``version=``), and models pin the versions they were fitted on (:mod:`._versions`).
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa

from ._store_errors import FeatureStoreError, MissingStimuliError, StoreAccessError, _io
from ._versions import TableVersions

__all__ = ["FeatureStore", "FeatureStoreError", "StoreAccessError", "MissingStimuliError", "FeatureTableInfo",
           "IDENTITY_KEYS"]

META_KEY = b"brainstore"
BAD_TABLE = "_bad_stimuli"
# Metadata fields that define a feature version: appending rows made differently is refused.
# ``layer_detail`` says what a layer index means (e.g. which hidden state), so a change of
# numbering convention is refused too.
IDENTITY_KEYS = ("extractor", "architecture", "pretrained", "weights_sha256", "seed", "layer", "layer_detail",
                 "pooling", "preprocessing", "dim", "storage_dtype", "dtype", "derived_from", "transform")
# Seconds a writer waits for another writer's lock on a table before giving up with an error.
LOCK_TIMEOUT_S = 600.0
# Lance's v1 ("legacy") file format reads fixed-size-list embeddings ~4x faster than v2.x on
# this workload (10,000 x 1,024 float32: 11 ms vs 45-50 ms, measured with pylance 4.0.2).
_STORAGE_VERSION = "legacy"


@dataclass(frozen=True)
class FeatureTableInfo:
    name: str
    rows: int
    dim: int
    metadata: dict


#: Embedding dtypes on disk.
STORAGE_DTYPES = ("float32", "float16")


def _schema(dim: int, storage_dtype: str, metadata: dict) -> pa.Schema:
    value = {"float32": pa.float32(), "float16": pa.float16()}[storage_dtype]
    return pa.schema(
        [
            pa.field("stimulus_id", pa.string(), nullable=False),
            pa.field("embedding", pa.list_(value, dim)),
            pa.field("dataset", pa.string()),
            pa.field("split", pa.string()),
        ],
        metadata={META_KEY: json.dumps(metadata, sort_keys=True).encode()},
    )


def _append_fix(old: dict, new: dict) -> str:
    """How to resolve an identity mismatch (a compute dtype mismatch has its own fix)."""
    fix = "write to a new feature version (--version NAME) or drop the old table."
    if old.get("dtype") and str(old.get("dtype")) != str(new.get("dtype")):
        return (f"To append to it, pass --dtype {old['dtype']} (extract(dtype={old['dtype']!r})): the compute dtype "
                f"is part of a feature version, whatever the device. Otherwise {fix}")
    return fix[0].upper() + fix[1:]


def embeddings_to_arrow(emb: np.ndarray, storage_dtype: str = "float32") -> pa.FixedSizeListArray:
    """(n, dim) array -> fixed_size_list array (zero-copy when the dtype already matches)."""
    emb = np.ascontiguousarray(emb, dtype=np.float16 if storage_dtype == "float16" else np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), emb.shape[1])


class FeatureStore(TableVersions):
    """A LanceDB-backed feature store chosen by URI (a local folder, ``s3://...``, ``memory://``).

    Parameters
    ----------
    uri : str or path
    storage_options : dict, optional
        Object-store options (credentials, endpoint, ``allow_http``) over those of
        ``$BRAINSTORE_STORAGE_OPTIONS`` (``brainstore._storage``); unknown keys are an error.
    lock_timeout : float
        Seconds a write waits for another writer's lock on the same table (local stores) before
        it fails with :class:`FeatureStoreError`.
    create : bool
        Create a missing local folder (writers). False (readers): a missing folder is a
        :class:`FeatureStoreError`, so a mistyped path never becomes a new, empty store. A path
        that is a file, or (with ``create``) cannot be written, is refused either way.
    """

    def __init__(self, uri: str | Path, storage_options: dict | None = None, *, lock_timeout: float = LOCK_TIMEOUT_S,
                 create: bool = True):
        import lancedb

        from .._paths import check_folder

        from .._storage import uri_of

        self.uri = uri_of(uri)  # a local folder made absolute: Ray tasks of another working directory reopen it
        self.lock_timeout = lock_timeout
        if "://" not in self.uri:
            check_folder(self.uri, "feature store", "--store", create=create, error=FeatureStoreError,
                         missing_hint="extract features into it first (`brainstore extract --store ...`)")
        from .._storage import StorageOptionsError
        from .._storage import storage_options as resolve

        try:  # object stores: $BRAINSTORE_STORAGE_OPTIONS, then the given options, unknown keys refused
            storage_options = resolve(self.uri, storage_options)
        except StorageOptionsError as e:
            raise FeatureStoreError(f"feature store {self.uri}: {e}") from None
        self._storage_options = storage_options
        # New tables use the format chosen above; user-given options win.
        opts = {"new_table_data_storage_version": _STORAGE_VERSION, **(storage_options or {})}
        self._db = _io(lambda self: lancedb.connect(self.uri, storage_options=opts))(self)

    def __repr__(self) -> str:
        return f"FeatureStore({self.uri!r})"

    @property
    def options(self) -> dict | None:
        """The resolved object-store options (None for a local store): what a task needs to open it the same way."""
        return dict(self._storage_options) if self._storage_options else None

    # ------------------------------------------------------------------ tables
    @_io
    def names(self) -> list[str]:
        """Feature versions (table names) in the store, excluding internal tables."""
        return sorted(n for n in self._all_names() if not n.startswith("_"))

    @_io
    def exists(self, feature: str) -> bool:
        return feature in self.names()

    @_io
    def _open(self, feature: str):
        if not self.exists(feature):
            known = ", ".join(self.names()) or "none yet"
            raise FeatureStoreError(f"no feature table {feature!r} in store {self.uri} (tables: {known}); "
                                    "create it with `brainstore extract`")
        return self._db.open_table(feature)

    @_io
    def metadata(self, feature: str) -> dict:
        """How a feature table was made (its schema metadata)."""
        raw = (self._open(feature).schema.metadata or {}).get(META_KEY)
        return json.loads(raw) if raw else {}

    @_io
    def version(self, feature: str) -> int:
        """The table's current version (Lance increments it on every commit)."""
        return int(self._open(feature).version)

    @_io
    def info(self, feature: str) -> FeatureTableInfo:
        t = self._open(feature)
        return FeatureTableInfo(feature, t.count_rows(), t.schema.field("embedding").type.list_size, self.metadata(feature))

    @_io
    def tables(self) -> list[FeatureTableInfo]:
        return [self.info(n) for n in self.names()]

    @_io
    def ensure_table(self, feature: str, dim: int, metadata: dict, *, storage_dtype: str = "float32"):
        """Create a feature table, or check that an existing one was made the same way.

        Raises
        ------
        FeatureStoreError
            When the existing table differs in dimension, storage dtype or any identity field
            (extractor, architecture, pretrained weights, layer, pooling, preprocessing, dtype).
        """
        if storage_dtype not in STORAGE_DTYPES:
            raise FeatureStoreError(f"storage dtype {storage_dtype!r} of feature table {feature!r} is not one of "
                                    f"{', '.join(STORAGE_DTYPES)}")
        meta = {**metadata, "feature_version": feature, "dim": int(dim), "storage_dtype": storage_dtype}
        if self.exists(feature):
            old = self.metadata(feature)
            diffs = [f"{k}: table has {old.get(k)!r}, new rows {meta.get(k)!r}"
                     for k in IDENTITY_KEYS if str(old.get(k)) != str(meta.get(k))]
            if diffs:
                raise FeatureStoreError(
                    f"refusing to append to feature table {feature!r} in {self.uri}: it was made differently ("
                    + "; ".join(diffs) + "). " + _append_fix(old, meta)
                )
            return self._db.open_table(feature)
        meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        try:
            return self._db.create_table(feature, schema=_schema(dim, storage_dtype, meta))
        except (ValueError, OSError) as e:
            if "already exists" in str(e):  # a concurrent writer created it first: check it instead
                return self.ensure_table(feature, dim, metadata, storage_dtype=storage_dtype)
            raise

    @_io
    def write(self, feature: str, stimulus_ids: Sequence[str], embeddings: np.ndarray,
              *, dataset: Sequence[str] | str = "", split: Sequence[str] | str = "") -> int:
        """Insert rows whose stimulus id is not yet in the table; returns the number inserted.

        The table must exist (:meth:`ensure_table`). One commit per call: a chunk is either fully
        written or not at all.
        """
        t = self._open(feature)
        schema = t.schema
        dim = schema.field("embedding").type.list_size
        emb = np.asarray(embeddings)
        n = len(stimulus_ids)
        if emb.shape != (n, dim):
            raise FeatureStoreError(f"embeddings for {feature!r} have shape {emb.shape}; expected ({n}, {dim})")
        if not np.isfinite(emb).all():
            bad = [stimulus_ids[i] for i in np.flatnonzero(~np.isfinite(emb).all(1))[:5]]
            raise FeatureStoreError(f"non-finite embeddings for stimulus ids {bad} in {feature!r}; nothing written")
        storage = "float16" if schema.field("embedding").type.value_type == pa.float16() else "float32"
        as_list = lambda v: [v] * n if isinstance(v, str) else list(v)  # noqa: E731
        tbl = pa.table({"stimulus_id": pa.array(list(stimulus_ids), pa.string()),
                        "embedding": embeddings_to_arrow(emb, storage),
                        "dataset": as_list(dataset), "split": as_list(split)}, schema=schema)
        if n == 0:
            return 0
        # Lance's merge_insert does not detect two concurrent inserts of the same new key, so
        # writers to one table take an exclusive lock around the check-and-insert commit.
        with self._lock(feature):
            t.checkout_latest()  # see rows other writers committed while we waited for the lock
            res = t.merge_insert("stimulus_id").when_not_matched_insert_all().execute(tbl)
        return int(getattr(res, "num_inserted_rows", n))

    @contextlib.contextmanager
    def _lock(self, feature: str) -> Iterator[None]:
        """Exclusive inter-process lock for writes to one table (local stores: ``filelock`` on a lock file).

        On object storage the lock is the object ``_brainstore_locks/<feature>.lock`` under the store,
        created with a conditional PUT (:class:`brainstore._storage.ObjectLock`), so writers on any
        machine exclude each other the same way.

        Raises
        ------
        FeatureStoreError
            When another writer holds the lock for more than ``lock_timeout`` seconds.
        """
        if "://" in self.uri and not self.uri.startswith("file://"):
            from .._storage import ObjectLock, object_store

            if getattr(self, "_objects", None) is None:  # one object-store client per FeatureStore, not per commit
                self._objects = object_store(self.uri, self._storage_options)
            key = f"_brainstore_locks/{feature}.lock"
            with ObjectLock(self._objects, key, timeout=self.lock_timeout,
                            what=f"feature table {feature!r} in {self.uri}", error=FeatureStoreError,
                            where=f"{self.uri.rstrip('/')}/{key}"):
                yield
            return
        from filelock import FileLock, Timeout

        path = Path(self.uri.removeprefix("file://")) / f".{feature}.lock"
        lock = FileLock(path, timeout=self.lock_timeout)
        try:
            lock.acquire()
        except Timeout:
            raise FeatureStoreError(
                f"feature table {feature!r} in {self.uri}: another writer has held its lock {path} for more than "
                f"{self.lock_timeout:g} s; wait for it to finish (or end it) and retry") from None
        try:
            yield
        finally:
            lock.release()

    @_io
    def ids(self, feature: str, *, version: int | None = None) -> list[str]:
        """Stimulus ids stored in a feature table (at ``version``: see :meth:`load`)."""
        if not self.exists(feature):
            return []
        return self._dataset(feature, version).to_table(columns=["stimulus_id"]).column("stimulus_id").to_pylist()

    @_io
    def read(self, feature: str, columns: Sequence[str] = ("stimulus_id", "embedding", "dataset", "split"), *,
             version: int | None = None) -> pa.Table:
        """The table's ``columns`` (at ``version``: see :meth:`load`)."""
        return self._dataset(feature, version).to_table(columns=list(columns))

    @_io
    def load(self, feature: str, stimulus_ids: Iterable[str] | None = None, *, dtype=np.float32,
             version: int | None = None) -> np.ndarray:
        """Embeddings for ``stimulus_ids`` in the order asked, shape (n_ids, dim).

        Parameters
        ----------
        feature : feature version (table name).
        stimulus_ids : iterable of str, optional
            Default: every row, in table order (see :meth:`ids`).
        version : int, optional
            Read the table as it was at this version (:meth:`versions`; a model's pinned version); default the
            latest.

        Raises
        ------
        MissingStimuliError
            Naming every id that is not stored.
        FeatureStoreError
            When ``version`` is not (or no longer) a version of the table.
        """
        import pyarrow.compute as pc

        tbl = self.read(feature, ("stimulus_id", "embedding"), version=version)
        chunks = tbl.column("embedding").chunks
        dim = tbl.schema.field("embedding").type.list_size
        # Zero-copy numpy views of each Arrow chunk (no concatenation of the whole column).
        views = [c.values.to_numpy(zero_copy_only=False)[c.offset * dim:(c.offset + len(c)) * dim].reshape(-1, dim)
                 for c in chunks]
        if stimulus_ids is None:
            return np.concatenate(views).astype(dtype, copy=False) if views else np.zeros((0, dim), dtype)
        want = pa.array(list(stimulus_ids), pa.string())
        pos = pc.index_in(want, value_set=tbl.column("stimulus_id"))
        if pos.null_count:
            missing = want.filter(pc.is_null(pos)).to_pylist()
            raise MissingStimuliError(feature, missing, version)
        pos = pos.to_numpy(zero_copy_only=False)
        if len(views) == 1:
            return views[0][pos].astype(dtype, copy=False)
        out = np.empty((len(pos), dim), dtype=views[0].dtype if views else dtype)
        start = 0
        for v in views:  # gather chunk by chunk into one output (no concatenated copy of the table)
            sel = np.flatnonzero((pos >= start) & (pos < start + len(v)))
            out[sel] = v[pos[sel] - start]
            start += len(v)
        return out.astype(dtype, copy=False)

    @_io
    def drop(self, feature: str) -> None:
        self._open(feature)
        self._db.drop_table(feature)

    # ------------------------------------------------------------------ bad stimuli
    @_io
    def record_bad(self, feature: str, rows: Sequence[dict]) -> None:
        """Record stimuli that failed (id, path, error) for a feature version, replacing old records."""
        schema = pa.schema([pa.field("feature_version", pa.string()), pa.field("stimulus_id", pa.string()),
                            pa.field("path", pa.string()), pa.field("error", pa.string()),
                            pa.field("time", pa.string())])
        if BAD_TABLE not in self._all_names():
            self._db.create_table(BAD_TABLE, schema=schema, exist_ok=True)
        t = self._db.open_table(BAD_TABLE)
        if not rows:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        tbl = pa.table({"feature_version": [feature] * len(rows), "stimulus_id": [r["stimulus_id"] for r in rows],
                        "path": [r.get("path") or "" for r in rows], "error": [r["error"] for r in rows],
                        "time": [now] * len(rows)}, schema=schema)
        (t.merge_insert(["feature_version", "stimulus_id"]).when_matched_update_all()
         .when_not_matched_insert_all().execute(tbl))

    @_io
    def clear_bad(self, feature: str, stimulus_ids: Sequence[str]) -> None:
        """Forget failure records of stimuli that have since been stored."""
        if not stimulus_ids or BAD_TABLE not in self._all_names():
            return
        ids = ", ".join("'" + s.replace("'", "''") + "'" for s in stimulus_ids)
        self._db.open_table(BAD_TABLE).delete(f"feature_version = '{feature}' AND stimulus_id IN ({ids})")

    @_io
    def bad_stimuli(self, feature: str | None = None) -> list[dict]:
        if BAD_TABLE not in self._all_names():
            return []
        rows = self._db.open_table(BAD_TABLE).to_arrow().to_pylist()
        return [r for r in rows if feature is None or r["feature_version"] == feature]

    @_io
    def _all_names(self) -> list[str]:
        """Every table name, internal ones included, across all pages of the listing."""
        res = self._db.list_tables()
        names = list(getattr(res, "tables", res))
        while getattr(res, "page_token", None):
            res = self._db.list_tables(page_token=res.page_token)
            names += list(res.tables)
        return names

    # ------------------------------------------------------------------ index
    @_io
    def build_index(self, feature: str, *, kind: str = "ivf_pq", metric: str = "cosine", **params) -> dict:
        """Build a vector index for retrieval (``ivf_pq`` or ``hnsw``: IVF partitions + HNSW, SQ)."""
        from lancedb.index import HnswSq, IvfPq

        t = self._open(feature)
        n = t.count_rows()
        dim = t.schema.field("embedding").type.list_size
        if kind == "ivf_pq":
            parts = params.pop("num_partitions", max(1, min(256, int(np.sqrt(n)) // 4 or 1)))
            sub = params.pop("num_sub_vectors", next(d for d in (16, 8, 4, 2, 1) if dim % d == 0))
            cfg = IvfPq(distance_type=metric, num_partitions=parts, num_sub_vectors=sub, **params)
        elif kind == "hnsw":
            cfg = HnswSq(distance_type=metric, num_partitions=params.pop("num_partitions", 1), **params)
        else:
            raise FeatureStoreError(f"index kind must be 'ivf_pq' or 'hnsw', not {kind!r}")
        if n < 256:
            raise FeatureStoreError(f"table {feature!r} has {n} rows; a vector index needs at least 256 (search is exact below that)")
        t.create_index("embedding", config=cfg, replace=True)
        return {"feature": feature, "kind": kind, "metric": metric, "rows": n}

    @_io
    def search(self, feature: str, query: np.ndarray, k: int = 10, *, metric: str = "cosine") -> list[list[tuple[str, float]]]:
        """Nearest stored stimuli for each query vector: [(stimulus_id, distance), ...] per query."""
        t = self._open(feature)
        q = np.atleast_2d(np.asarray(query, dtype=np.float32))
        out = []
        for v in q:
            res = t.search(v, vector_column_name="embedding").distance_type(metric).limit(k).to_arrow()
            out.append(list(zip(res.column("stimulus_id").to_pylist(), res.column("_distance").to_pylist())))
        return out
