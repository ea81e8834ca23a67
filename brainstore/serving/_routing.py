"""Which registry version each model reference serves, and switching versions without failing a request.

A request names a model by a reference: ``NAME`` (its ``champion`` alias when set, else its latest
version), ``NAME@3`` or ``NAME@staging``. :class:`Routes` maps each reference to the version it serves
now: bare names from ``reg.list()``, the others resolved on their first use (``NAME@3`` never changes).

Every ``refresh_s`` seconds at most, bare names and aliases are resolved again: a request that finds the
table older than that starts one refresh in a background thread and is answered from the current table,
so no request waits for the registry. A reference whose version changed switches only once the new
version is ready (``prepare``: the backend loads and verifies it when the old one is in use), so requests
in flight finish on the old version and later ones get the new. A version that cannot be loaded is held
back: the reference keeps its old version and :attr:`Routes.held` says why (``/readyz`` reports it).
"""

from __future__ import annotations

import logging
import math
import threading
import time

from ..fitting import ModelRecord, RegistryError, parse_ref
from ._outage import outage

__all__ = ["Routes", "DEFAULT_REFRESH_S", "check_refresh"]

#: Seconds between two resolutions of bare names and aliases (a switch takes about this long).
DEFAULT_REFRESH_S = 2.0

log = logging.getLogger("brainstore.serving")


def check_refresh(refresh_s) -> float:
    """``refresh_s`` as seconds (> 0; ``math.inf``: never re-resolve), else ValueError."""
    if isinstance(refresh_s, bool) or not isinstance(refresh_s, (int, float)) or not refresh_s > 0:
        raise ValueError(f"refresh_s must be a number of seconds > 0 (how often bare model names and aliases are "
                         f"resolved again; default {DEFAULT_REFRESH_S:g}), got {refresh_s!r}")
    return float(refresh_s)


def canonical(ref: str) -> str:
    """``ref`` spelled one way (``clip/subj01@03`` -> ``clip/subj01@3``), so a table key names one version."""
    name, sel = parse_ref(ref)
    return name if sel is None else f"{name}@{sel}"


class Routes:
    """References -> the :class:`~brainstore.fitting.ModelRecord` each serves now.

    Parameters
    ----------
    reg : the model registry.
    refresh_s : seconds between two resolutions (:func:`check_refresh`).
    prepare : ``prepare(old, new, verify)`` makes version ``new`` ready to replace ``old`` (raises when it
        cannot be served); ``verify`` asks for the deep check even when ``old`` is not in use.
    """

    def __init__(self, reg, refresh_s: float, prepare):
        self.reg, self.refresh_s, self._prepare = reg, check_refresh(refresh_s), prepare
        self._lock = threading.Lock()  # the table
        self._refreshing = threading.Lock()  # one refresh at a time
        self._pending = False  # a background refresh is started
        self._routes: dict[str, ModelRecord] = {}
        self._bare: set[str] = set()  # the references that are bare names (the registry's listing)
        self.held: dict[str, dict] = {}  # reference -> {"serving", "wanted", "error"} of a version held back
        self._failed: dict[str, tuple] = {}  # reference -> (wanted ref, its files' stamp) when it failed
        self.generation = 0  # changes whenever a bare name serves another version (or appears or leaves)
        self.at: float | None = None  # time.monotonic() of the last refresh tried
        self.resolved = False  # a refresh succeeded once (until then every request resolves in its own thread)
        self.switches = 0
        self.error: str | None = None  # why the last background refresh failed (None: it did not)

    # ------------------------------------------------------------------------------------------ reading
    def listing(self) -> list[ModelRecord]:
        """What every bare name serves now, by name (resolving the registry first when never done)."""
        if not self.resolved:
            self.refresh()
        with self._lock:
            return [self._routes[n] for n in sorted(self._bare)]

    def get(self, ref: str, *, cached: bool = False) -> ModelRecord | None:
        """The version ``ref`` serves now; None for a bare name the registry does not list. ``NAME@3`` and
        ``NAME@alias`` are resolved on first use (RegistryError when the registry has no such version);
        ``cached``: only what the table holds (None for one never resolved; the registry is not read)."""
        key = canonical(ref)
        with self._lock:
            rec = self._routes.get(key)
        if rec is not None or cached or parse_ref(key)[1] is None:
            return rec
        rec = self.reg.record(key)
        with self._lock:
            return self._routes.setdefault(key, rec)

    def stale(self) -> bool:
        return self.at is None or time.monotonic() - self.at >= self.refresh_s

    def held_back(self) -> list[dict]:
        """The references kept on an older version because their new one cannot be served, by reference."""
        with self._lock:
            return [dict(self.held[k]) for k in sorted(self.held)]

    def maybe_refresh(self) -> None:
        """Resolve again when the table is older than ``refresh_s``: the first time in this thread, later in
        a background thread (this request is answered from the current table)."""
        if not self.resolved:
            self.refresh()
            return
        if not self.stale() or math.isinf(self.refresh_s):
            return
        with self._lock:
            if self._pending:
                return
            self._pending = True
        threading.Thread(target=self._background, name="brainstore-routes", daemon=True).start()

    def _background(self) -> None:
        try:
            self.refresh()
            self.error = None
        except Exception as e:  # the registry out of reach: keep serving what the table holds
            self.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            log.warning("brainstore: resolving model versions failed (%s); serving the versions resolved before",
                        self.error)
        finally:
            with self._lock:
                self._pending = False

    # ------------------------------------------------------------------------------------------ refresh
    def refresh(self, *, force: bool = False, verify: bool = False) -> None:
        """Resolve bare names and aliases again (when stale, or ``force``) and switch the references whose
        version changed, each once its new version is ready (``verify``: check every new version, loaded or
        not). Raises when the registry cannot be listed (the table stays as it was)."""
        with self._refreshing:
            if self.resolved and not (force or verify or self.stale()):
                return  # another thread refreshed meanwhile
            try:
                self._refresh(verify)
            finally:
                self.at = time.monotonic()
            self.resolved = True

    def _refresh(self, verify: bool) -> None:
        listing = {r.name: r for r in self.reg.list()}
        with self._lock:
            table, bare = dict(self._routes), set(self._bare)
        wanted, gone = dict(listing), self._gone(bare - set(listing))
        kept = bare - set(listing) - gone  # (still in the registry, but its record could not be read now)
        for key in table:
            sel = parse_ref(key)[1]
            if key in bare or sel is None or isinstance(sel, int):
                continue  # bare names come from the listing; NAME@3 never changes
            try:
                wanted[key] = self.reg.record(key)
            except RegistryError as e:
                if outage(e) is not None:
                    raise  # the registry out of reach: nothing switches
                gone.add(key)  # the alias was removed: the next request gets the 404 that says so
        new = {k: self._switch(k, table.get(k), rec, verify) for k, rec in wanted.items()}
        with self._lock:
            before = {n: self._routes[n].ref for n in self._bare if n in self._routes}
            for k in gone:
                self._routes.pop(k, None)
                self.held.pop(k, None)
            self._routes.update(new)
            self._bare = set(listing) | kept
            if before != {n: self._routes[n].ref for n in self._bare}:
                self.generation += 1

    def _gone(self, missing: set[str]) -> set[str]:
        """The names of ``missing`` (served before, absent from the listing now) that the registry no longer
        holds. ``reg.list()`` skips a model whose record cannot be read (a store failing under it); such a
        name keeps its version, and a registry out of reach fails the refresh (nothing switches)."""
        out = set()
        for name in missing:
            try:
                self.reg.resolve(name)
            except RegistryError as e:
                if outage(e) is not None:
                    raise
                out.add(name)
        return out

    def _switch(self, key: str, old: ModelRecord | None, rec: ModelRecord, verify: bool) -> ModelRecord:
        """What ``key`` serves after this refresh: ``rec`` once ready, else ``old`` (held back)."""
        if old is None:
            return rec
        if (old.name, old.version) == (rec.name, rec.version):  # the same version (its aliases refreshed), or
            self._settle(key)  # back to the one it kept serving
            return rec
        try:
            stamp = self.reg.stamp(rec)
        except FileNotFoundError:
            stamp = None
        if self._failed.get(key) == (rec.ref, stamp):
            return old  # failed before, and its files have not changed since
        try:
            self._prepare(old, rec, verify)
        except Exception as e:
            msg = getattr(e, "message", None) or str(e) or type(e).__name__
            with self._lock:
                self.held[key] = {"model": key, "serving": old.ref, "wanted": rec.ref, "error": msg}
                if outage(e) is None:  # (a store out of reach is tried again at the next refresh)
                    self._failed[key] = (rec.ref, stamp)
            log.warning("brainstore: %s stays on %s: %s cannot be served (%s)", key, old.ref, rec.ref, msg)
            return old
        self._settle(key)
        self.switches += 1
        return rec

    def _settle(self, key: str) -> None:
        with self._lock:
            self.held.pop(key, None)
            self._failed.pop(key, None)
