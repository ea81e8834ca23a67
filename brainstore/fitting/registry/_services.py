"""Services announce, in the registry they serve from, which model versions they serve: lineage says whether a
version is served, and by whom.

A running service calls :meth:`ServiceAnnouncements.announce` every few seconds (``brainstore.serving``'s heartbeat
does), which writes ``<registry>/_services/<service id>.json``: what the caller gives (``url``, ``models``: the
``NAME@V`` references it serves, ...) plus the heartbeat time; :meth:`~ServiceAnnouncements.withdraw` removes it
when the service stops. :meth:`~ServiceAnnouncements.services` reads the announcements whose heartbeat is fresh
(a service that died without withdrawing goes stale and is no longer listed). Folders starting with ``_`` are
never models, so announcements do not disturb listing; on object storage the same keys hold them.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path

from ._fileio import json_bytes, jsonable
from ._records import RegistryError

__all__ = ["ServiceAnnouncements", "SERVICES_DIR", "DEFAULT_MAX_AGE_S"]

#: The folder (prefix) of the announcements under the registry's root.
SERVICES_DIR = "_services"
#: An announcement older than this (seconds since its heartbeat) is stale: its service is gone.
DEFAULT_MAX_AGE_S = 30.0
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_id(service_id: str) -> str:
    if not isinstance(service_id, str) or not _ID.match(service_id):
        raise RegistryError(f"invalid service id {service_id!r}: it starts with a letter or digit and uses only "
                            "A-Z a-z 0-9 . _ - (at most 128 characters), e.g. 'serve-myhost-8000'")
    return service_id


class ServiceAnnouncements:
    """The announcements of :class:`~._registry.ModelRegistry` (which sets ``root``, ``remote`` and, on object
    storage, provides ``_obj``, ``_get``, ``_remote_keys`` and ``_reaching``)."""

    def _service_key(self, service_id: str) -> str:
        return f"{SERVICES_DIR}/{_check_id(service_id)}.json"

    def announce(self, service_id: str, info: dict) -> dict:
        """Write (or refresh) service ``service_id``'s announcement: ``info`` (``url``, ``models``: the
        ``NAME@V`` references served now, anything else JSON can hold) plus ``id`` and ``heartbeat`` (seconds
        since the epoch, and ``heartbeat_utc``); returns what was written."""
        if not isinstance(info, dict):
            raise RegistryError(f"service {service_id!r}: info must be a dict, got {type(info).__name__}")
        models = info.get("models", [])
        if not isinstance(models, (list, tuple)) or not all(isinstance(m, str) for m in models):
            raise RegistryError(f"service {service_id!r}: info['models'] must be a list of model references "
                                f"(NAME@VERSION), got {models!r}")
        now = time.time()
        doc = {**jsonable(info, "", RegistryError), "id": _check_id(service_id), "models": list(models),
               "heartbeat": now, "heartbeat_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))}
        data, key = json_bytes(doc), self._service_key(service_id)
        if self.remote:
            import obstore

            with self._reaching():
                obstore.put(self._obj, key, data)
            return doc
        path = Path(self.root) / key
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers see the old announcement or the new one, never half of one
        return doc

    def withdraw(self, service_id: str) -> bool:
        """Remove service ``service_id``'s announcement (it stopped); False when there was none."""
        key = self._service_key(service_id)
        if self.remote:
            import obstore

            if self._get(key) is None:
                return False
            with self._reaching():
                obstore.delete(self._obj, key)
            return True
        try:
            os.unlink(Path(self.root) / key)
        except FileNotFoundError:
            return False
        return True

    def services(self, max_age_s: float | None = DEFAULT_MAX_AGE_S, *, now: float | None = None) -> list[dict]:
        """The announcements whose heartbeat is at most ``max_age_s`` seconds old (None: every one), by id, each
        with ``age_s``. Unreadable announcements (a service of another version writing something else) are
        skipped."""
        now = time.time() if now is None else now
        out = []
        for raw in self._announcements():
            try:
                doc = json.loads(raw)
                age = now - float(doc["heartbeat"])
            except (ValueError, TypeError, KeyError):
                continue
            if isinstance(doc, dict) and (max_age_s is None or age <= max_age_s):
                out.append({**doc, "age_s": max(age, 0.0)})
        return sorted(out, key=lambda d: str(d.get("id")))

    def _announcements(self) -> list[bytes]:
        if self.remote:
            keys = [k for k in self._remote_keys(f"{SERVICES_DIR}/") if k.endswith(".json")
                    and not k.rpartition("/")[2].startswith(".")]
            return [raw for raw in (self._get(k) for k in keys) if raw is not None]
        out = []
        for p in sorted((Path(self.root) / SERVICES_DIR).glob("[!.]*.json")):
            try:
                out.append(p.read_bytes())
            except FileNotFoundError:  # withdrawn meanwhile
                pass
        return out
