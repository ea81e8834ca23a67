"""Fingerprints of the feature rows a model was fitted on, the version it pins, and reading at it.

A model's weights only make sense on the embeddings it was fitted on. The store's metadata check
(``ModelRegistry.check_features``) catches a table made by another extractor; it cannot see a table
dropped and re-extracted with the same settings but other weights or hardware, a PCA table
re-derived on more rows, or one row rewritten in place through LanceDB. So every model records, per
feature table, the Lance version it read (``table_version``), pinned in the store (the tag
``brainstore-v{N}``: cleanup and compaction keep it), and the sha256 of its fitted stimulus ids and
their embeddings at that version (``rows_sha256``), beside the table's creation time and, for derived
tables, the rows the derivation was fitted on and the sha256 of its projection.

Loading the model (:func:`check_fingerprint`) reads the pinned version and verifies the fitted rows
there; the model then reads every stimulus of that version from it (:class:`PinnedTable`), so it gives
its fit-time predictions however the table changes later. When the pinned version is gone (cleaned,
or the table dropped and re-created: version numbers restart, so a version is no proof of content),
the latest version must hold the fitted rows unchanged, else the model is refused, naming what
changed. A stimulus added after the pinned version is read from the latest version, and only while
the fitted rows there are unchanged (checked once per latest version); otherwise the error names
exactly which fitted stimuli changed, and that a refit is needed.
"""

from __future__ import annotations

import itertools
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..._provenance import sha256
from ...features import FeatureStore, FeatureStoreError, MissingStimuliError, StoreAccessError
from ._records import RegistryError

__all__ = ["table_fingerprint", "check_fingerprint", "encode_ids", "decode_ids", "PinnedTable"]

log = logging.getLogger(__name__)

#: Metadata of derived tables (``features.derive_pca``) recorded in fingerprints.
DERIVED_KEYS = ("derived_from", "n_fit", "fit_ids_sha256", "projection_sha256")
_FIX = ("Refit the model on the current table (`brainstore fit`), or point --store at the store holding the table "
        "it was fitted on")


def encode_ids(ids: Sequence[str]) -> np.ndarray:
    """Stimulus ids as a uint8 tensor (UTF-8, newline separated) for a safetensors file."""
    return np.frombuffer("\n".join(ids).encode(), dtype=np.uint8).copy()


def decode_ids(t: np.ndarray) -> list[str]:
    """Inverse of :func:`encode_ids`."""
    s = np.asarray(t, dtype=np.uint8).tobytes().decode()
    return s.split("\n") if s else []


def _shown(ids: Sequence[str], n: int = 10) -> str:
    return ", ".join(map(repr, ids[:n])) + (" ..." if len(ids) > n else "")


def _hash(ids: Sequence[str], emb: np.ndarray) -> str:
    return sha256(["\n".join(ids).encode(), np.ascontiguousarray(emb, dtype=np.float32).tobytes()])


#: Table versions in memory, {(store, table, version, version id): _Rows}, alive while a model holds them.
_SHARED: "weakref.WeakValueDictionary" = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


@dataclass(eq=False)
class _Rows:
    """One version of a table in memory: its ids' rows and embeddings (storage dtype)."""

    table: str
    version: int
    row: dict
    E: np.ndarray

    @classmethod
    def read(cls, fs: FeatureStore, table: str, version: int) -> "_Rows":
        """``version`` of ``table``, read once per process while a model holds it (models of many subjects, or
        served side by side, share one copy). The key holds the version's content id (``fs.version_id``): a
        re-created table, whose numbers restart, is read again."""
        key = (fs.uri, table, int(version), fs.version_id(table, version))
        with _SHARED_LOCK:
            rows = _SHARED.get(key)
        if rows is None:
            rows = cls._read(fs, table, version)
            with _SHARED_LOCK:
                rows = _SHARED.setdefault(key, rows)
        return rows

    @classmethod
    def _read(cls, fs: FeatureStore, table: str, version: int) -> "_Rows":
        tbl = fs.read(table, ("stimulus_id", "embedding"), version=version)
        col = tbl.column("embedding").combine_chunks()
        dim = tbl.schema.field("embedding").type.list_size
        E = col.values.to_numpy(zero_copy_only=False)[col.offset * dim:(col.offset + len(col)) * dim]
        ids = tbl.column("stimulus_id").to_pylist()
        return cls(table, int(version), {s: i for i, s in enumerate(ids)}, np.asarray(E).reshape(len(ids), dim))

    def take(self, ids: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 embeddings of ``ids``; :class:`MissingStimuliError` naming the ids this version lacks."""
        pos = [self.row.get(i) for i in ids]
        if None in pos:
            raise MissingStimuliError(self.table, [i for i, p in zip(ids, pos) if p is None])
        return self.E[np.asarray(pos, dtype=np.int64)].astype(np.float32, copy=False)

    def changed(self, ids: Sequence[str], other: "_Rows") -> list[str]:
        """The ``ids`` whose embedding differs in ``other`` (or that ``other`` lacks), in order."""
        have = [i for i in ids if i in other.row]
        a = self.E[np.asarray([self.row[i] for i in have], dtype=np.int64)]
        b = other.E[np.asarray([other.row[i] for i in have], dtype=np.int64)]
        diff = {i for i, d in zip(have, (a != b).any(1) if len(have) else []) if d}
        return [i for i in ids if i not in other.row or i in diff]


def table_fingerprint(fs: FeatureStore, table: str, ids: Sequence[str], *, pin: bool = True) -> dict:
    """What identifies the rows ``ids`` of ``table`` now: its latest version, read at that version and pinned
    in the store (see the module docstring). A store that refuses the pin (read-only) is logged, not fatal:
    the model then reads the version while it exists."""
    meta = fs.metadata(table)
    version = fs.version(table)
    rows = _hash(ids, fs.load(table, ids, version=version))
    fp = {"table": table, "table_version": version, "created": meta.get("created"), "n_rows": len(ids),
          "rows_sha256": rows}
    fp.update({k: meta[k] for k in DERIVED_KEYS if k in meta})
    if pin:
        try:
            fs.pin(table, version)
            fp["pinned"] = True
        except FeatureStoreError as e:
            log.warning("could not pin version %s of feature table %r in %s: %s", version, table, fs.uri, e)
            fp["pinned"] = False
    return fp


def check_fingerprint(model: str, recorded: dict, fs: FeatureStore, ids: Sequence[str]) -> "PinnedTable":
    """The rows of ``recorded["table"]`` the model was fitted on, verified: its pinned version when it still
    holds them, else the latest when the fitted rows are unchanged there; else :class:`RegistryError`.

    Parameters
    ----------
    model : the model's name (for the message).
    recorded : the fingerprint saved at fit time (:func:`table_fingerprint`).
    fs : the store predictions will read from.
    ids : the stimulus ids the model was fitted on.

    Returns
    -------
    PinnedTable
        What the model reads its embeddings through.
    """
    table, want = recorded["table"], recorded["rows_sha256"]
    pinned = recorded.get("table_version")
    rows = None
    if pinned is not None:
        try:
            rows = _Rows.read(fs, table, int(pinned))
            if _hash(ids, rows.take(ids)) != want:
                rows = None  # that number now names other content (the table was re-created)
        except StoreAccessError:
            raise
        except (FeatureStoreError, MissingStimuliError):
            rows = None  # the version is gone (cleaned up, or a re-created table that has not reached it)
    if rows is None:
        rows = _latest_unchanged(model, recorded, fs, ids)
    return PinnedTable(model, fs, ids, rows, recorded)


def _latest_unchanged(model: str, recorded: dict, fs: FeatureStore, ids: Sequence[str]) -> _Rows:
    """The latest version of the table in memory, when it holds the fitted rows unchanged; else the refusal."""
    table = recorded["table"]
    version = fs.version(table)
    rows = _Rows.read(fs, table, version)
    try:
        got = _hash(ids, rows.take(ids))
    except MissingStimuliError as e:
        raise RegistryError(f"model {model!r} cannot use feature table {table!r} in store {fs.uri}: "
                            f"{len(e.missing)} of the {len(ids)} stimuli it was fitted on are no longer in it "
                            f"(e.g. {e.missing[:3]}); the table was rebuilt. {_FIX}") from None
    if got != recorded["rows_sha256"]:
        raise RegistryError(_drift(model, recorded, fs, ids, got, version))
    return rows


def _drift(model: str, recorded: dict, fs: FeatureStore, ids: Sequence[str], rows: str, version: int) -> str:
    table = recorded["table"]
    meta = fs.metadata(table)
    what = [f"the embeddings of the {len(ids)} stimuli it was fitted on differ (sha256 "
            f"{recorded['rows_sha256'][:12]}... at fit time, {rows[:12]}... now)"]
    if meta.get("created") != recorded.get("created"):
        what.append(f"the table was re-created ({recorded.get('created')} at fit time, {meta.get('created')} now)")
    if str(meta.get("n_fit")) != str(recorded.get("n_fit")) and ("n_fit" in meta or "n_fit" in recorded):
        what.append(f"its derivation ({meta.get('transform', 'derived table')} of {meta.get('derived_from')!r}) was "
                    f"re-fitted on {meta.get('n_fit')} rows ({recorded.get('n_fit')} at fit time)")
    elif meta.get("fit_ids_sha256") != recorded.get("fit_ids_sha256"):
        what.append("its derivation was re-fitted on other rows")
    if meta.get("projection_sha256") != recorded.get("projection_sha256") and "projection_sha256" in recorded:
        what.append("its projection changed")
    pinned = recorded.get("table_version")
    if version != pinned:
        what.append(f"table version {pinned} at fit time (no longer holding those rows), {version} now")
    return (f"model {model!r} was fitted on other features than feature table {table!r} in store {fs.uri} now holds: "
            + "; ".join(what) + f". Its predictions would be silently wrong. {_FIX}")


class PinnedTable:
    """The embeddings of one feature table as a model reads them (see the module docstring).

    Stimuli of the verified version (the pinned one, or the latest when that was gone at load) come from
    it, held in memory; others from the latest version, while the fitted rows are unchanged there (checked
    once per latest version). Thread-safe.

    Attributes
    ----------
    table, version : the table and the verified version read from memory.
    pinned : whether ``version`` is the version recorded at fit time.
    serial : a number unique to this object in the process (a cache key of design matrices).
    """

    _serials = itertools.count()

    def __init__(self, model: str, fs: FeatureStore, fit_ids: Sequence[str], rows: _Rows, recorded: dict):
        self.model, self.fs, self.table = model, fs, rows.table
        self.fit_ids, self.rows_sha256 = list(fit_ids), recorded["rows_sha256"]
        self._rows, self.version = rows, rows.version
        self.pinned = recorded.get("table_version") == rows.version
        self.serial = next(self._serials)
        self._latest: tuple[_Rows, list[str]] | None = None  # the latest version read, and its changed fitted ids
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"PinnedTable({self.table!r}, version={self.version}, pinned={self.pinned})"

    @property
    def dim(self) -> int:
        return int(self._rows.E.shape[1])

    def holds(self, stimulus_ids: Sequence[str]) -> bool:
        """Whether every one of ``stimulus_ids`` is in the verified version held in memory (so :meth:`load`
        reads no store)."""
        row = self._rows.row
        return all(i in row for i in stimulus_ids)

    def load(self, stimulus_ids: Sequence[str]) -> np.ndarray:
        """(n, dim) float32 embeddings of ``stimulus_ids`` in the order asked.

        Raises
        ------
        MissingStimuliError
            Ids in neither the verified nor the latest version.
        RegistryError
            Ids added after the verified version while the latest version changed fitted rows (named).
        """
        ids = list(stimulus_ids)
        pos = np.asarray([self._rows.row.get(i, -1) for i in ids], dtype=np.int64)
        new = pos < 0
        if not new.any():
            return self._rows.E[pos].astype(np.float32, copy=False)
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        out[~new] = self._rows.E[pos[~new]]
        added = [ids[k] for k in np.flatnonzero(new)]
        latest, changed = self._latest_rows()
        X = latest.take(added)  # MissingStimuliError: not in the latest version either
        if changed:
            raise RegistryError(
                f"model {self.model!r} cannot read {len(added)} stimulus id(s) ({_shown(added, 5)}) from feature table "
                f"{self.table!r} in store {self.fs.uri}: they were added after version {self.version} it was fitted on, "
                f"and the latest version {latest.version} changed {len(changed)} of the {len(self.fit_ids)} stimuli it "
                f"was fitted on ({_shown(changed)}), so its weights no longer match the table's features. Refit it on "
                f"the current table (`brainstore fit`); stimuli of version {self.version} still predict as at fit time")
        out[new] = X
        return out

    def _latest_rows(self) -> tuple[_Rows, list[str]]:
        """The latest version in memory and the fitted ids it changed (read and hashed once per version)."""
        version = self.fs.version(self.table)
        with self._lock:
            if self._latest is not None and self._latest[0].version == version:
                return self._latest
            if version == self._rows.version:
                return self._rows, []
            rows = _Rows.read(self.fs, self.table, version)
            try:
                same = _hash(self.fit_ids, rows.take(self.fit_ids)) == self.rows_sha256
            except MissingStimuliError:
                same = False
            self._latest = (rows, [] if same else self._rows.changed(self.fit_ids, rows))
            return self._latest
