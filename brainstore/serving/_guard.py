"""What surrounds every route of the app: the middleware (the bearer token checked in constant time, the
body size checked before it is read, requests counted and timed per route for Prometheus, a registry or
store out of reach answered 503 with ``Retry-After``, any other failure logged and answered 500 without
its details) and the exception handlers that turn every refusal into the ``{"error": "..."}`` body.

The app's settings are read from ``request.app.state``: ``token``, ``limits``, ``backend``, ``counters``.
"""

import hmac
import logging
import time

from ._http import error
from ._outage import outage
from ._routes import KNOWN

__all__ = ["Metrics", "Guard", "on_serving_error", "on_http_error", "on_validation_error"]

_log = logging.getLogger("brainstore.serving")


class Metrics:
    """An app's Prometheus registry (``/metrics``) and its counters: requests per route and status, latency per
    route, model loads."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("brainstore_requests", "HTTP requests", ["route", "status"], registry=self.registry)
        self.latency = Histogram("brainstore_request_seconds", "Request latency", ["route"], registry=self.registry,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
        self.loads = Counter("brainstore_model_loads", "Models loaded into memory", registry=self.registry)


def _authorized(header: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, the scheme in any case (RFC 7235), compared in constant time."""
    scheme, _, credentials = header.strip().partition(" ")
    same = hmac.compare_digest(credentials.strip().encode("utf-8", "replace"), token.encode())
    return same and scheme.lower() == "bearer"


class Guard:
    """The middleware, as a plain ASGI app around the routes (Starlette's ``BaseHTTPMiddleware`` cost ~12 % of a
    small encode's CPU): token, body size, then the route; its outcome counted and timed; a failure below it a
    503 (registry or store out of reach) or a logged 500."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        state = scope["app"].state
        token, limits, counters, backend = state.token, state.limits, state.counters, state.backend
        route, t0 = scope["path"], time.perf_counter()
        headers = {k: v for k, v in scope["headers"] if k in (b"authorization", b"content-length")}
        known = route if route in KNOWN else "other"
        refusal = None
        if token is not None and route != "/healthz":
            if not _authorized(headers.get(b"authorization", b"").decode("latin-1"), token):
                refusal = error(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                                {"WWW-Authenticate": "Bearer"})
        size = headers.get(b"content-length", b"").decode("latin-1") if b"content-length" in headers else None
        if refusal is None and size is not None and (not size.isdigit() or int(size) > limits.max_body_bytes):
            refusal = error(413, f"request body of {size} bytes, above the limit of {limits.max_body_bytes:,}")
        if refusal is not None:
            counters.requests.labels(route, str(refusal.status_code)).inc()
            return await refusal(scope, receive, send)
        before, sent = getattr(backend, "model_loads", 0), {}

        async def sending(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception as e:  # a registry or store out of reach is 503; anything else a fault of ours, logged
            if "status" in sent:
                raise
            err = outage(e)
            if err is not None:
                response = error(err.status, err.message, err.headers)
            else:
                _log.error("%s %s failed", scope.get("method"), route, exc_info=e)
                response = error(500, f"internal error ({type(e).__name__}); the service's log has the details")
            await response(scope, receive, sending)
        counters.loads.inc(max(0, getattr(backend, "model_loads", 0) - before))
        counters.requests.labels(known, str(sent.get("status", 500))).inc()
        counters.latency.labels(known).observe(time.perf_counter() - t0)


async def on_serving_error(request, e):
    """A :class:`~._codec.ServingError` a route or the backend raised: its status, message and headers."""
    return error(e.status, e.message, e.headers)


async def on_http_error(request, e):
    """Unknown routes and methods (and Starlette's other HTTP errors) with our body."""
    message = {404: f"no route {request.url.path[:200]}; routes: {', '.join(sorted(KNOWN))}",
               405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
    return error(e.status_code, message, getattr(e, "headers", None))


async def on_validation_error(request, e):
    """FastAPI's own validation (the routes parse their bodies themselves): the first problem, named."""
    first = e.errors()[0] if e.errors() else {}
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
    return error(422, f"{where or 'request'}: {first.get('msg', 'invalid request')}")
