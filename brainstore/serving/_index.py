"""Candidates of decoding: the stimuli of a store table, searched by cosine similarity.

Up to ``max_memory_rows`` rows (100k by default) the table's L2-normalized embeddings are held in
memory and searched exactly with one matrix product; above, the search goes to LanceDB (its vector
index when the table has one, else its exact scan). The table's Lance version is checked at most
every ``refresh_s`` seconds and a new version (rows added by an extraction) is loaded again, so a
long-running service never answers from a stale table for longer than that (a check due while a request is
answered on an event loop, :meth:`CandidateIndex.ready_now`, runs in a background thread).
"""

from __future__ import annotations

import threading
import time

import numpy as np

__all__ = ["CandidateIndex"]


class CandidateIndex:
    """Cosine top-k over one feature table (see the module docstring)."""

    def __init__(self, fs, table: str, *, max_memory_rows: int = 100_000, refresh_s: float = 5.0):
        self.fs, self.table = fs, table
        self.max_memory_rows, self.refresh_s = int(max_memory_rows), float(refresh_s)
        self._lock = threading.Lock()
        self.version, self.rows, self._checked, self.loads = None, None, 0.0, 0
        self._mem = None  # (ids, unit-norm embeddings E), swapped whole: a search reads one snapshot

    @property
    def in_memory(self) -> bool:
        return self._mem is not None

    @property
    def E(self) -> np.ndarray | None:
        """The table's embeddings, each scaled to unit norm (None: searched by LanceDB)."""
        return None if self._mem is None else self._mem[1]

    def ready_now(self) -> bool:
        """Whether a search now reads no store: in memory, and its version checked within ``refresh_s``; when the
        check is due, it is started in a background thread and searches answer from memory meanwhile (as the
        model routes do), so that a request on an event loop never waits for the store. False also while a
        thread's search is checking the version (the lock is held: waiting for it could wait for the store)."""
        if self._mem is None or self.version is None:
            return False
        if time.monotonic() - self._checked < self.refresh_s:
            return True
        if not self._lock.acquire(blocking=False):
            return False
        try:
            if time.monotonic() - self._checked >= self.refresh_s:
                self._checked = time.monotonic()  # (searches meanwhile see no check due: the thread makes it)
                threading.Thread(target=self._background, name="brainstore-index", daemon=True).start()
        finally:
            self._lock.release()
        return True

    def _background(self) -> None:
        try:
            with self._lock:
                self._check()
        except Exception:  # the store out of reach: keep answering from memory; a thread's search will say why
            pass

    def _refresh(self) -> None:
        now = time.monotonic()
        if self.version is not None and now - self._checked < self.refresh_s:
            return
        with self._lock:
            if self.version is not None and now - self._checked < self.refresh_s:
                return
            self._check()

    def _check(self) -> None:
        """Read the table's version (the caller holds the lock); load it again when it changed."""
        version = self.fs.version(self.table)
        self._checked = time.monotonic()
        if version == self.version:
            return
        rows = self.fs.info(self.table).rows
        if rows <= self.max_memory_rows:
            tbl = self.fs.read(self.table, ("stimulus_id", "embedding"))  # ids and rows from one read
            col = tbl.column("embedding").combine_chunks()
            dim = tbl.schema.field("embedding").type.list_size
            ids = tbl.column("stimulus_id").to_pylist()
            E = col.values.to_numpy(zero_copy_only=False)[col.offset * dim:(col.offset + len(col)) * dim]
            E = np.asarray(E, np.float32).reshape(len(col), dim)
            E = np.ascontiguousarray(E / np.maximum(np.linalg.norm(E, axis=1, keepdims=True), 1e-12))
            self._mem = (np.asarray(ids, dtype=object), E)
        else:
            self._mem = None
        self.version, self.rows = version, rows
        self.loads += 1

    def search(self, Q: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` nearest stimuli (cosine) to each row of ``Q``: ids and similarities, best first."""
        self._refresh()
        Q = np.atleast_2d(np.asarray(Q, np.float32))
        mem = self._mem
        if mem is None:
            from ..fitting import store_top_k

            return store_top_k(self.fs, self.table, Q, k)
        ids, E = mem
        k = min(k, len(E))
        Qn = Q / np.maximum(np.linalg.norm(Q, axis=1, keepdims=True), 1e-12)
        S = Qn @ E.T
        part = np.argpartition(-S, k - 1, axis=1)[:, :k] if k < S.shape[1] else np.tile(np.arange(S.shape[1]),
                                                                                       (len(S), 1))
        order = np.take_along_axis(part, np.argsort(-np.take_along_axis(S, part, 1), axis=1, kind="stable"), 1)
        return [list(ids[o]) for o in order], np.take_along_axis(S, order, 1).astype(np.float64)
