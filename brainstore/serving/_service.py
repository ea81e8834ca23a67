"""The service started from Python: :func:`serve` gives a :class:`Service` (a context manager yielding its URL)
running the registry's models either in this process under uvicorn (``local=True``) or as the Ray Serve
application (ingress, extractor, encoder and decoder deployments). ``brainstore serve`` runs the same."""

from __future__ import annotations

import time

from .._storage import uri_of
from ._app import MAKE_TOKEN, Limits, check_token
from ._routing import DEFAULT_REFRESH_S, check_refresh

__all__ = ["serve", "Service", "LOOPBACK_HOSTS"]

#: Hosts that keep the service on this machine (anything else needs a bearer token).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Service:
    """A running (or ready to run) brainstore service; ``with serve(...) as url:`` starts and stops it.

    Attributes
    ----------
    url : ``http://HOST:PORT``.
    local : True for uvicorn in this process, False for the Ray Serve application.
    """

    def __init__(self, registry: str, store: str | None, *, local: bool, host: str, port: int | None,
                 token: str | None, limits: Limits, options: dict | None, http_options: dict | None,
                 refresh_s: float = DEFAULT_REFRESH_S):
        self.registry, self.store, self.local, self.refresh_s = registry, store, local, check_refresh(refresh_s)
        self.host, self.token, self.limits, self.options = host, token, limits, options
        self.http_options = dict(http_options or {})
        self.port = port
        self._server = None
        self._started = False

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> str:
        """Start the service (loading nothing until the first request); its URL."""
        if self._started:
            return self.url
        if self.local:
            from ._backend import LocalBackend
            from ._app import make_app
            from ._heartbeat import local_heartbeat
            from ._local import LocalServer

            app = make_app(LocalBackend(self.registry, self.store, refresh_s=self.refresh_s), token=self.token,
                           limits=self.limits)
            self._server = LocalServer(app, host=self.host, port=self.port)
            self.port = self._server.port
            self._server.start()
            self._heartbeat = local_heartbeat(app, self.url, self.port)  # announced in the registry
        else:
            self._start_serve()
        self._started = True
        return self.url

    def _start_serve(self) -> None:
        from ray import serve
        from ray.serve.config import HTTPOptions

        from .._ray import ensure_connected
        from ._config import PROXY_TIMEOUT_MARGIN_S
        from ._deploy import APP_NAME, build_app

        ensure_connected()
        self.port = self.port or 8000
        outer = {"request_timeout_s": self.limits.request_timeout_s + PROXY_TIMEOUT_MARGIN_S}  # the app answers first
        extra = {k: v for k, v in self.http_options.items() if k not in ("host", "port")}
        serve.start(http_options=HTTPOptions(host=self.host, port=self.port, **{**outer, **extra}),
                    logging_config={"log_level": "WARNING"})
        serve.run(build_app(self.registry, self.store, token=self.token, limits=vars(self.limits),
                            options=self.options, refresh_s=self.refresh_s), name=APP_NAME, route_prefix="/")

    def stop(self) -> None:
        """Stop the service (Ray Serve: shut the application and its proxies down)."""
        if not self._started:
            return
        if self.local:
            self._heartbeat.stop()  # the announcement withdrawn
            self._server.stop()
        else:
            from ray import serve

            serve.shutdown()
            time.sleep(1.0)  # Ray's log monitor relays the controller's exit notice late
        self._started = False

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(registry, store=None, *, local: bool = False, host: str = "127.0.0.1", port: int | None = None,
          token: str | None = None, limits: Limits | dict | None = None, options: dict | None = None,
          http_options: dict | None = None, refresh_s: float = DEFAULT_REFRESH_S) -> Service:
    """The registry's encoding and decoding models over HTTP (``/v1/encode``, ``/v1/decode``, ``/docs``).

    Parameters
    ----------
    registry : URI or ModelRegistry
        The model registry to serve.
    store : URI or FeatureStore, optional
        The feature store embeddings are read from (default: each model's own).
    local : bool
        True: plain uvicorn with the models in this process (a notebook, tests); False: the Ray Serve
        application (connecting to Ray, or starting the embedded local one).
    host, port : where to bind (127.0.0.1; a free port when ``local`` and ``port`` is None, else 8000).
    token : str, optional
        Bearer token every route but ``/healthz`` requires (at least 16 characters); needed for a host
        other than loopback.
    limits : Limits or dict, optional
        Request limits (body and image bytes, values per request, request timeout).
    options : dict, optional
        Ray Serve deployment options (replicas, autoscaling, resources), as a serve config holds them.
    http_options : dict, optional
        Further Ray Serve HTTP options.
    refresh_s : float
        Seconds between two resolutions of bare model names (their ``champion`` alias, else their latest
        version) and aliases: moving an alias or saving a new version switches the answers within about this
        time, with no restart and no failed request (the new version is loaded before it is used; one that
        cannot be loaded is held back, ``/readyz`` says why). Every answer names its version
        (``model_version``, header ``X-Brainstore-Model``).

    Returns
    -------
    Service
        Not yet started: ``with serve(...) as url:`` (or ``service.start()`` / ``service.stop()``).
    """
    token = check_token(token, "token")
    if host not in LOOPBACK_HOSTS and not token:
        raise ValueError(f"host {host} exposes the service beyond this machine: give a bearer token (make one with "
                         f"`{MAKE_TOKEN}`), or bind 127.0.0.1")
    lim = limits if isinstance(limits, Limits) else Limits(**(limits or {}))
    return Service(uri_of(registry), None if store is None else uri_of(store), local=local, host=host, port=port,
                   token=token, limits=lim, options=options, http_options=http_options, refresh_s=refresh_s)
