"""A running service announces itself in the registry it serves (``ModelRegistry.announce``): every
``interval_s`` seconds a daemon thread writes which model versions (``NAME@V``) it serves now, and removes the
announcement when the service stops. ``brainstore lineage`` reads them (``ModelRegistry.services``) to say
whether a version is served, and by whom; a service that died without stopping goes stale after 30 s.

The in-process server announces what its backend serves (what each bare name resolves to now, and every
version loaded on request); a Ray Serve Ingress replica what the registry's bare names resolve to (the versions
its models switch to within their refresh time).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time
from typing import Callable, Iterable

__all__ = ["Heartbeat", "DEFAULT_INTERVAL_S", "registry_refs", "backend_refs", "local_heartbeat", "ingress_heartbeat"]

#: Seconds between two announcements (a reader counts a service as serving for 30 s after the last one).
DEFAULT_INTERVAL_S = 10.0
_NON_SERVED = ("captioner",)

log = logging.getLogger("brainstore.serving")


def registry_refs(reg) -> list[str]:
    """``NAME@V`` of what each servable bare name of ``reg`` resolves to now (encoders, decoders, adaptors)."""
    return sorted(r.ref for r in reg.list() if r.meta.get("kind") not in _NON_SERVED
                  and (r.meta.get("kind") in ("decoder", "adaptor") or r.meta.get("subject")))


def backend_refs(backend) -> list[str]:
    """``NAME@V`` of every version an in-process backend answers with now: what its bare names serve (its routes'
    listing when it has one, else the registry's) and every version it holds loaded (asked for by ``NAME@V``)."""
    routes = getattr(backend, "routes", None)
    if routes is not None and hasattr(routes, "listing"):
        refs = {r.ref for r in routes.listing() if r.meta.get("kind") not in _NON_SERVED}
    else:
        refs = set(registry_refs(backend.reg))
    with backend._lock:
        keys = list(getattr(backend, "_models", {}))
    refs |= {k[1] for k in keys if len(k) == 2 and isinstance(k[1], str) and "@" in k[1]}
    return sorted(refs)


def _service_id(kind: str, port) -> str:
    raw = f"{kind}-{socket.gethostname()}-{os.getpid()}" + (f"-{port}" if port else "")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", raw)[:128]


class Heartbeat:
    """Announce a service in ``reg`` every ``interval_s`` seconds until :meth:`stop` (which withdraws it).

    Parameters
    ----------
    reg : the ModelRegistry served.
    refs : called at every beat: the ``NAME@V`` references served now.
    url : where the service answers (None when the announcer cannot know it).
    kind : what announces (``local``, ``ray-serve``), part of the service id.
    """

    def __init__(self, reg, refs: Callable[[], Iterable[str]], *, url: str | None = None, kind: str = "local",
                 port=None, interval_s: float = DEFAULT_INTERVAL_S):
        self.reg, self.refs, self.url, self.kind, self.interval_s = reg, refs, url, kind, float(interval_s)
        self.service_id = _service_id(kind, port)
        self.started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"brainstore-heartbeat-{kind}", daemon=True)
        self._warned = False
        self.beats = 0

    def beat(self) -> dict | None:
        """Announce once now; None (logged once) when the registry cannot be written: serving goes on."""
        try:
            doc = self.reg.announce(self.service_id, {"url": self.url, "kind": self.kind, "models": list(self.refs()),
                                                      "host": socket.gethostname(), "pid": os.getpid(),
                                                      "started": self.started, "interval_s": self.interval_s})
        except Exception as e:  # noqa: BLE001 - announcing is best effort: a read-only registry still serves
            if not self._warned:
                log.warning("brainstore service %s cannot announce itself in %s: %s", self.service_id, self.reg, e)
                self._warned = True
            return None
        self.beats += 1
        return doc

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.beat()

    def start(self) -> "Heartbeat":
        """Announce now, then every ``interval_s`` seconds in a daemon thread."""
        self.beat()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop announcing and withdraw the announcement."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            self.reg.withdraw(self.service_id)
        except Exception:  # noqa: BLE001 - it goes stale on its own
            pass


def local_heartbeat(app, url: str, port=None) -> Heartbeat:
    """The started heartbeat of the in-process server of ``app`` (its backend: ``app.state.backend``)."""
    backend = app.state.backend
    return Heartbeat(backend.reg, lambda: backend_refs(backend), url=url, kind="local", port=port).start()


def ingress_heartbeat(registry: str | None) -> Heartbeat | None:
    """The started heartbeat of a Ray Serve ingress replica serving ``registry`` (None without one)."""
    if not registry:
        return None
    from ..fitting import ModelRegistry

    try:
        reg = ModelRegistry(registry, create=False)
    except Exception as e:  # noqa: BLE001 - the replica serves (or reports the outage) without announcing
        log.warning("brainstore ingress cannot announce itself in %s: %s", registry, e)
        return None
    return Heartbeat(reg, lambda: registry_refs(reg), url=None, kind="ray-serve").start()
