"""The HTTP face of brainstore: one FastAPI app built by :func:`make_app` around a backend (models in
this process for plain uvicorn; Ray Serve deployment handles in the product). Routes, validation and
answers are this code in both.

Routes: ``GET /healthz`` (liveness, never behind the token), ``GET /readyz`` (registry and stores
reachable), ``GET /v1/models``, ``POST /v1/encode``, ``POST /v1/decode``, ``POST /v1/explain``,
``GET /metrics`` (Prometheus), ``/docs`` (OpenAPI). Arrays travel as ``{"dtype","shape","data_b64"}``
(default), plain lists (``"format": "list"``) or ``application/x-npy`` (``Accept`` for answers,
``Content-Type`` for decode bodies). Bad input is 4xx with ``{"error": "..."}`` naming the field and
the fix; the service's own unavailability (a registry or store out of reach, a full queue, a timeout) is
503 with ``Retry-After``; no answer ever holds a NaN or an infinity. Every request body and answer is
declared in the OpenAPI schema (``_openapi.py``).

Bodies: ``application/json`` (encode, decode, explain), ``multipart/form-data`` (encode, with the image
file), ``application/x-npy`` (decode); any other Content-Type is 415. A body sent without a Content-Type
is read as JSON (lenient for hand-written clients; ``curl -d`` sends a form type, which is 415 with the fix).
"""


import hmac
import inspect
import json
import logging
import math
import re
import time

import numpy as np

from ._codec import NPY, ServingError, array_from_npy, array_to_npy, decode_array, encode_array
from ._outage import RETRY_AFTER_S, outage

__all__ = ["make_app", "Limits", "check_token", "TOKEN_MIN_LENGTH", "MAKE_TOKEN"]

#: The shortest bearer token the service starts with.
TOKEN_MIN_LENGTH = 16
#: How to make a good token (said by every refusal of a token).
MAKE_TOKEN = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*")  # what an Authorization header can carry (RFC 6750 b64token)
_JSON = "application/json"
_MULTIPART = "multipart/form-data"
_log = logging.getLogger("brainstore.serving")


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


def _authorized(header: str, token: str) -> bool:
    """``Authorization: Bearer <token>``, the scheme in any case (RFC 7235), compared in constant time."""
    scheme, _, credentials = header.strip().partition(" ")
    same = hmac.compare_digest(credentials.strip().encode("utf-8", "replace"), token.encode())
    return same and scheme.lower() == "bearer"


def _media_type(request) -> str:
    """The request's media type, lower case, without parameters ("" when there is no Content-Type)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _accepts(request, route: str, accepted: tuple[str, ...]) -> str:
    """The body's media type when ``route`` reads it (a missing Content-Type reads as JSON); else 415."""
    media = _media_type(request)
    if not media:
        return _JSON
    if media in accepted:
        return media
    hint = (" (curl -d sends application/x-www-form-urlencoded: add -H 'Content-Type: application/json')"
            if media == "application/x-www-form-urlencoded" else "")
    raise ServingError(415, f"Content-Type {media[:100]} is not read by {route}; send {' or '.join(accepted)}{hint}",
                       headers={"Accept-Post": ", ".join(accepted)})


def _finite_json(obj) -> bool:
    """Every number in a JSON-able answer is finite."""
    if isinstance(obj, float):
        return math.isfinite(obj)
    if isinstance(obj, dict):
        return all(_finite_json(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(_finite_json(v) for v in obj)
    if isinstance(obj, np.ndarray):
        return obj.dtype.kind not in "fc" or bool(np.isfinite(obj).all())
    if isinstance(obj, np.floating):
        return bool(np.isfinite(obj))
    return True


class Limits:
    """Request limits: body bytes, uploaded image bytes, array values per request, and the seconds a
    request may take before it is answered 503 with ``Retry-After`` (the work is cancelled where it can be)."""

    def __init__(self, max_body_bytes: int = 32 << 20, max_image_bytes: int = 16 << 20,
                 max_values: int = 4_000_000, request_timeout_s: float = 30.0):
        if not request_timeout_s > 0:
            raise ValueError(f"limits.request_timeout_s must be > 0 seconds, got {request_timeout_s!r}")
        self.max_body_bytes, self.max_image_bytes, self.max_values = max_body_bytes, max_image_bytes, max_values
        self.request_timeout_s = float(request_timeout_s)


async def _call(fn, *args, timeout: float | None = None, **kwargs):
    """A backend method: awaited when it is a coroutine (Ray Serve handles), else run in a worker thread;
    past ``timeout`` seconds, a 503 with ``Retry-After`` (the awaited handle call is cancelled). A
    TimeoutError the backend raises itself (a store's) stays its own (``_outage`` says what it was)."""
    import asyncio

    from starlette.concurrency import run_in_threadpool

    work = fn(*args, **kwargs) if inspect.iscoroutinefunction(fn) else run_in_threadpool(fn, *args, **kwargs)
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:  # the request itself was cancelled: so is the work
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise ServingError(503, f"no answer within the request timeout of {timeout:g} s (the service is busy, or "
                                "the request is very large); retry, or send fewer vectors per request",
                           headers={"Retry-After": "1"})
    return task.result()


def make_app(backend, *, token: str | None = None, limits: Limits | None = None, title: str = "brainstore"):
    """The FastAPI app serving ``backend`` (``catalog``, ``ready``, ``encode``, ``decode``, ``explain``).

    Parameters
    ----------
    token : bearer token required on every route but ``/healthz`` (None: no token).
    limits : request size limits (:class:`Limits`).
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.openapi.utils import get_openapi
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
    from starlette.exceptions import HTTPException

    from ._openapi import COMPONENTS, route_docs, security

    token = check_token(token)
    limits = limits or Limits()
    app = FastAPI(title=title, description="Encoding and decoding models of the brainstore registry. Every refusal "
                                           "is a JSON body {\"error\": \"...\"} naming the field and the fix.")

    def openapi() -> dict:  # FastAPI's document, plus the shared schemas and the bearer token
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            doc.setdefault("components", {}).setdefault("schemas", {}).update(COMPONENTS)
            app.openapi_schema = security(doc) if token else doc
        return app.openapi_schema

    app.openapi = openapi

    def docs(path: str) -> dict:  # the route's request bodies and answers, for /openapi.json
        return route_docs(path, token=token is not None)

    metrics = CollectorRegistry()
    requests_total = Counter("brainstore_requests", "HTTP requests", ["route", "status"], registry=metrics)
    latency = Histogram("brainstore_request_seconds", "Request latency", ["route"], registry=metrics,
                        buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
    loads = Counter("brainstore_model_loads", "Models loaded into memory", registry=metrics)
    app.state.backend, app.state.metrics = backend, metrics

    def call(fn, *args, **kwargs):
        return _call(fn, *args, timeout=limits.request_timeout_s, **kwargs)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        if status == 503 and not any(k.lower() == "retry-after" for k in (headers or {})):
            headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_S)}  # every 503 says when to retry
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, e: ServingError):
        return error(e.status, e.message, e.headers)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException):  # unknown routes and methods: our body too
        message = {404: f"no route {request.url.path[:200]}; routes: {', '.join(sorted(_ROUTES))}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return error(e.status_code, message, getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        return error(422, f"{where or 'request'}: {first.get('msg', 'invalid request')}")

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        route = request.url.path
        t0 = time.perf_counter()
        if token is not None and route != "/healthz":
            if not _authorized(request.headers.get("authorization", ""), token):
                requests_total.labels(route, "401").inc()
                return error(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                             {"WWW-Authenticate": "Bearer"})
        size = request.headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > limits.max_body_bytes):
            requests_total.labels(route, "413").inc()
            return error(413, f"request body of {size} bytes, above the limit of {limits.max_body_bytes:,}")
        before = getattr(backend, "model_loads", 0)
        try:
            response = await call_next(request)
        except Exception as e:  # a registry or store out of reach is 503; anything else a fault of ours, logged
            err = outage(e)
            if err is not None:
                response = error(err.status, err.message, err.headers)
            else:
                _log.error("%s %s failed", request.method, route, exc_info=e)
                response = error(500, f"internal error ({type(e).__name__}); the service's log has the details")
        loads.inc(max(0, getattr(backend, "model_loads", 0) - before))
        known = route if route in _ROUTES else "other"
        requests_total.labels(known, str(response.status_code)).inc()
        latency.labels(known).observe(time.perf_counter() - t0)
        return response

    async def body_json(request: Request) -> dict:
        raw = await _body(request, limits.max_body_bytes)
        try:
            obj = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ServingError(400, f"malformed JSON body: {e}") from None
        if not isinstance(obj, dict):
            raise ServingError(422, "the body must be a JSON object")
        return obj

    def answer(request: Request, payload: dict, arrays: dict[str, np.ndarray], fmt: str, field: str) -> Response:
        """JSON (arrays as ``fmt``) or npy; refused 422 naming the input ``field`` when any value would be NaN
        or infinite as sent (float32), whatever the model let through."""
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is the refusal below, not a warning
            arrays = {k: np.asarray(v, dtype="<f4") for k, v in arrays.items()}
        bad = [k for k, a in arrays.items() if a.size and not np.isfinite(a).all()]
        if bad or not _finite_json(payload):
            where = f" (in {', '.join(bad)})" if bad else ""
            raise ServingError(422, f"{field}: the answer would hold NaN or infinite values{where}; the input is far "
                                    "outside the range the model was fitted on: send values on the scale of its "
                                    "training data")
        if NPY in request.headers.get("accept", "") and arrays:
            names = list(arrays)
            A = np.concatenate([np.atleast_2d(arrays[n]) for n in names], axis=1)
            hdr = {"X-Brainstore-Columns": ",".join(f"{n}:{np.atleast_2d(arrays[n]).shape[1]}" for n in names)}
            return Response(array_to_npy(A), media_type=NPY, headers=hdr)
        return JSONResponse({**payload, **{k: encode_array(v, fmt) for k, v in arrays.items()}})

    @app.get("/healthz", **docs("/healthz"))
    async def healthz():
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", **docs("/readyz"))
    async def readyz():
        """Readiness: the registry lists servable models and their feature stores open."""
        return {"status": "ready", **(await call(backend.ready))}

    @app.get("/v1/models", **docs("/v1/models"))
    async def models():
        """Servable encoding models per subject and decoding models, with registry metadata."""
        return await call(backend.catalog)

    @app.get("/metrics", **docs("/metrics"))
    async def prometheus():
        """Request counts and latencies per route and status, model loads (Prometheus text format)."""
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/encode", **docs("/v1/encode"))
    async def encode(request: Request):
        """Predicted responses of a subject to a stimulus: JSON ``{"subject", "stimulus_id" | "embedding",
        "model"?, "hemisphere"?, "roi"?, "format"?}`` or a multipart upload (fields + ``image`` file)."""
        image = None
        if _accepts(request, "/v1/encode", (_JSON, _MULTIPART)) == _MULTIPART:
            await _body(request, limits.max_body_bytes)  # size checked before parsing
            try:
                form = await request.form(max_files=1, max_fields=16, max_part_size=limits.max_image_bytes)
            except Exception as e:
                raise ServingError(400, f"malformed multipart body: {e}") from None
            upload = form.get("image")
            if upload is None or isinstance(upload, str):
                raise ServingError(422, "multipart encode needs the image as a file field named 'image'")
            image = await upload.read()
            if len(image) > limits.max_image_bytes:
                raise ServingError(413, f"image of {len(image):,} bytes, above the limit of {limits.max_image_bytes:,}")
            q = {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}
        else:
            q = await body_json(request)
        q = _fields(q, {"subject", "model", "hemisphere", "roi", "stimulus_id", "embedding", "format"}, "/v1/encode")
        subject, fmt = _str(q, "subject", required=True), _fmt(q)
        emb = q.get("embedding")
        if isinstance(emb, dict) and not {"dtype", "shape", "data_b64"} <= set(emb):
            emb = {str(k): decode_array(v, f"embedding.{k}", limits.max_values) for k, v in emb.items()}
        elif emb is not None:
            emb = decode_array(emb, "embedding", limits.max_values)
        out = await call(backend.encode, subject, model=_str(q, "model"), hemisphere=_str(q, "hemisphere"),
                          roi=_str(q, "roi"), stimulus_id=q.get("stimulus_id"), embedding=emb, image=image)
        payload = {k: out[k] for k in ("model", "subject")}
        payload["shape"] = {h: list(np.shape(v)) for h, v in out["responses"].items()}
        if out.get("vertices"):
            payload["vertices"] = out["vertices"]
        field = "stimulus_id" if q.get("stimulus_id") is not None else "image" if image is not None else "embedding"
        return answer(request, payload, {h: v for h, v in out["responses"].items()}, fmt, field)

    @app.post("/v1/decode", **docs("/v1/decode"))
    async def decode(request: Request):
        """Top-k stimuli of the whole store table for response vectors: JSON ``{"subject", "responses",
        "model"?, "target"?, "top_k"?, "return_embedding"?, "format"?}`` (``responses`` one array, lh then
        rh, or ``{"lh", "rh"}``), or an ``application/x-npy`` body with those fields as query parameters."""
        fields = {"subject", "responses", "model", "target", "top_k", "return_embedding", "format"}
        query = _fields(dict(request.query_params), fields - {"responses"}, "/v1/decode (query parameters)")
        if "top_k" in query:
            query["top_k"] = _int(query["top_k"], "top_k")
        if "return_embedding" in query:
            query["return_embedding"] = _flag(query["return_embedding"], "return_embedding")
        if _accepts(request, "/v1/decode", (_JSON, NPY)) == NPY:
            q = query
            R = array_from_npy(await _body(request, limits.max_body_bytes), "responses", limits.max_values)
        else:  # the fields in the body (query parameters too, as with npy bodies, but not the same field twice)
            q = await body_json(request)
            twice = sorted(set(q) & set(query))
            if twice:
                raise ServingError(422, f"{', '.join(twice)}: given both in the query and in the body; give each once")
            q = {**query, **q}
            if "responses" not in q:
                raise ServingError(422, "responses: required (one or more response vectors of the subject)")
            R = q["responses"]
            if isinstance(R, dict) and not {"dtype", "shape", "data_b64"} & set(R):  # {"lh": ..., "rh": ...}
                R = {str(h): decode_array(v, f"responses.{h}", limits.max_values) for h, v in R.items()}
            else:
                R = decode_array(R, "responses", limits.max_values)
        q = _fields(q, fields, "/v1/decode")
        top_k = q.get("top_k", 5)
        if not isinstance(q.get("return_embedding", False), bool):
            raise ServingError(422, "return_embedding must be true or false")
        out = await call(backend.decode, _str(q, "subject", required=True), R, model=_str(q, "model"),
                          target=_str(q, "target"), top_k=top_k, return_embedding=q.get("return_embedding", False))
        arrays = {"embedding": out.pop("embedding")} if "embedding" in out else {}
        if NPY in request.headers.get("accept", "") and not arrays:
            raise ServingError(406, "an npy answer holds the decoded embeddings: set return_embedding")
        return answer(request, out, arrays, _fmt(q), "responses")

    @app.post("/v1/explain", **docs("/v1/explain"))
    async def explain(request: Request):
        """Selectivity: the stored stimuli (with captions) an encoding model predicts drive an ROI most,
        JSON ``{"model", "roi", "subject"?, "top"?, "hemisphere"?}``."""
        _accepts(request, "/v1/explain", (_JSON,))
        q = _fields(await body_json(request), {"model", "roi", "subject", "top", "hemisphere"}, "/v1/explain")
        out = await call(backend.explain, _str(q, "model", required=True), _str(q, "roi", required=True),
                         subject=_str(q, "subject"), top=q.get("top", 20), hemisphere=_str(q, "hemisphere"))
        return answer(request, out, {}, "b64", "model")

    return app


_ROUTES = {"/healthz", "/readyz", "/v1/models", "/metrics", "/v1/encode", "/v1/decode", "/v1/explain", "/docs",
           "/openapi.json"}


async def _body(request, limit: int) -> bytes:
    """The request body, refused past ``limit`` bytes while it streams in (no Content-Length trusted)."""
    if getattr(request, "_body", None) is not None:
        return request._body
    chunks, n = [], 0
    async for chunk in request.stream():
        n += len(chunk)
        if n > limit:
            raise ServingError(413, f"request body above the limit of {limit:,} bytes")
        chunks.append(chunk)
    request._body = b"".join(chunks)
    return request._body


def _fields(q: dict, allowed: set[str], route: str) -> dict:
    unknown = sorted(set(q) - allowed)
    if unknown:
        raise ServingError(422, f"{route}: unknown field(s) {', '.join(unknown)}; fields: {', '.join(sorted(allowed))}")
    return q


def _str(q: dict, key: str, required: bool = False) -> str | None:
    v = q.get(key)
    if v is None:
        if required:
            raise ServingError(422, f"{key}: required")
        return None
    if not isinstance(v, str) or not v or len(v) > 256:
        raise ServingError(422, f"{key} must be a non-empty string (at most 256 characters); got {v!r}"[:300])
    return v


def _int(v: str, key: str) -> int:
    try:
        return int(v)
    except ValueError:
        raise ServingError(422, f"{key} must be an integer; got {v!r}") from None


def _flag(v: str, key: str) -> bool:
    low = v.strip().lower()
    if low in ("1", "true", "yes"):
        return True
    if low in ("0", "false", "no"):
        return False
    raise ServingError(422, f"{key} must be true or false; got {v[:50]!r}")


def _fmt(q: dict) -> str:
    fmt = q.get("format", "b64")
    if fmt not in ("b64", "list"):
        raise ServingError(422, f"format must be 'b64' (encoded arrays) or 'list'; got {fmt!r}")
    return fmt
