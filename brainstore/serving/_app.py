"""The HTTP face of brainstore: one FastAPI app built by :func:`make_app` around a backend (models in
this process for plain uvicorn; Ray Serve deployment handles in the product). Routes, validation and
answers are this code in both.

Routes (``_routes.py``, one function each): ``GET /healthz`` (liveness, never behind the token), ``GET
/readyz`` (registry and stores reachable), ``GET /v1/models``, ``POST /v1/encode``, ``POST /v1/decode``,
``POST /v1/explain``, ``GET /metrics`` (Prometheus), ``/docs`` (OpenAPI). Arrays travel as
``{"dtype","shape","data_b64"}`` (default), plain lists (``"format": "list"``) or ``application/x-npy``
(``Accept`` for answers, ``Content-Type`` for decode bodies). Bad input is 4xx with ``{"error": "..."}``
naming the field and the fix; the service's own unavailability (a registry or store out of reach, a full
queue, a timeout) is 503 with ``Retry-After``; no answer ever holds a NaN or an infinity. Every request
body and answer is declared in the OpenAPI schema (``_openapi.py``).

Bodies: ``application/json`` (encode, decode, explain), ``multipart/form-data`` (encode, with the image
file), ``application/x-npy`` (decode); any other Content-Type is 415. A body sent without a Content-Type
is read as JSON (lenient for hand-written clients; ``curl -d`` sends a form type, which is 415 with the fix).

What surrounds every route (the token, the body size, metrics, refusals as the error body) is in
``_guard.py``; reading requests and writing answers in ``_http.py``.
"""

import re

__all__ = ["make_app", "Limits", "check_token", "TOKEN_MIN_LENGTH", "MAKE_TOKEN"]

#: The shortest bearer token the service starts with.
TOKEN_MIN_LENGTH = 16
#: How to make a good token (said by every refusal of a token).
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # what an Authorization header can carry (RFC 6750 b64token)


def check_token(token: str | None, where: str = "the bearer token") -> str | None:
    """``token`` when it is usable (None: no token); else ValueError with a one-line message saying how to
    make one: blank, shorter than :data:`TOKEN_MIN_LENGTH`, or holding characters a header cannot carry."""
    if token is None:
        return None
    if not isinstance(token, str) or not token.strip():
        raise ValueError(f"{where} is blank; make one with `{MAKE_TOKEN}`")
    if len(token) < TOKEN_MIN_LENGTH:
        raise ValueError(f"{where} has {len(token)} characters, fewer than {TOKEN_MIN_LENGTH}; make one with "
                         f"`{MAKE_TOKEN}`")
    if not _TOKEN68.fullmatch(token):
        raise ValueError(f"{where} holds characters a bearer token cannot carry (spaces, quotes, a newline...): "
                         f"only letters, digits and -._~+/ (then = padding); make one with `{MAKE_TOKEN}`")
    return token


class Limits:
    """Request limits: body bytes, uploaded image bytes, array values per request, and the seconds a
    request may take before it is answered 503 with ``Retry-After`` (the work is cancelled where it can be)."""

    def __init__(self, max_body_bytes: int = 32 << 20, max_image_bytes: int = 16 << 20,
                 max_values: int = 4_000_000, request_timeout_s: float = 30.0):
        if not request_timeout_s > 0:
            raise ValueError(f"limits.request_timeout_s must be > 0 seconds, got {request_timeout_s!r}")
        self.max_body_bytes, self.max_image_bytes, self.max_values = max_body_bytes, max_image_bytes, max_values
        self.request_timeout_s = float(request_timeout_s)


def make_app(backend, *, token: str | None = None, limits: Limits | None = None, title: str = "brainstore"):
    """The FastAPI app serving ``backend`` (``catalog``, ``ready``, ``encode``, ``decode``, ``explain``).

    Parameters
    ----------
    token : bearer token required on every route but ``/healthz`` (None: no token).
    limits : request size limits (:class:`Limits`).
    """
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    from ._codec import ServingError
    from ._guard import Guard, Metrics, on_http_error, on_serving_error, on_validation_error
    from ._openapi import route_docs
    from ._routes import ROUTES

    token = check_token(token)
    app = FastAPI(title=title, description="Encoding and decoding models of the brainstore registry. Every refusal "
                                           "is a JSON body {\"error\": \"...\"} naming the field and the fix.")
    app.openapi = lambda: _openapi(app, token is not None)
    metrics = Metrics()
    app.state.backend, app.state.metrics = backend, metrics.registry  # (the Prometheus registry, per app)
    app.state.counters, app.state.token, app.state.limits = metrics, token, limits or Limits()
    app.add_exception_handler(ServingError, on_serving_error)
    app.add_exception_handler(HTTPException, on_http_error)  # unknown routes and methods: our body too
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_middleware(Guard)
    for path, (method, handler) in ROUTES.items():  # each route's request bodies and answers, for /openapi.json
        app.add_api_route(path, handler, methods=[method], **route_docs(path, token=token is not None))
    return app


def _openapi(app, token: bool) -> dict:
    """FastAPI's document, plus the shared schemas and (``token``) the bearer token."""
    from fastapi.openapi.utils import get_openapi

    from ._openapi import COMPONENTS, security

    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        doc.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
        app.openapi_schema = security(doc) if token else doc
    return app.openapi_schema
