"""The HTTP face of brainstore: one FastAPI app built by :func:`make_app` around a backend (models in
this process for plain uvicorn; Ray Serve deployment handles in the product). Routes, validation and
answers are this code in both.

Routes: ``GET /healthz`` (liveness, never behind the token), ``GET /readyz`` (registry and stores
reachable), ``GET /v1/models``, ``POST /v1/encode``, ``POST /v1/decode``, ``POST /v1/explain``,
``GET /metrics`` (Prometheus), ``/docs`` (OpenAPI). Arrays travel as ``{"dtype","shape","data_b64"}``
(default), plain lists (``"format": "list"``) or ``application/x-npy`` (``Accept`` for answers,
``Content-Type`` for decode bodies). Bad input is 4xx with ``{"error": "..."}`` naming the field and
the fix; only a fault of the service itself is 5xx.
"""


import hmac
import inspect
import json
import time

import numpy as np

from ._codec import NPY, ServingError, array_from_npy, array_to_npy, decode_array, encode_array

__all__ = ["make_app", "Limits"]


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
    past ``timeout`` seconds, a 503 with ``Retry-After`` (the awaited handle call is cancelled)."""
    import asyncio

    from starlette.concurrency import run_in_threadpool

    work = fn(*args, **kwargs) if inspect.iscoroutinefunction(fn) else run_in_threadpool(fn, *args, **kwargs)
    try:
        return await asyncio.wait_for(work, timeout)
    except asyncio.TimeoutError:
        raise ServingError(503, f"no answer within the request timeout of {timeout:g} s (the service is busy, or "
                                "the request is very large); retry, or send fewer vectors per request",
                           headers={"Retry-After": "1"}) from None


def make_app(backend, *, token: str | None = None, limits: Limits | None = None, title: str = "brainstore"):
    """The FastAPI app serving ``backend`` (``catalog``, ``ready``, ``encode``, ``decode``, ``explain``).

    Parameters
    ----------
    token : bearer token required on every route but ``/healthz`` (None: no token).
    limits : request size limits (:class:`Limits`).
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

    limits = limits or Limits()
    app = FastAPI(title=title, description="Encoding and decoding models of the brainstore registry.")
    metrics = CollectorRegistry()
    requests_total = Counter("brainstore_requests", "HTTP requests", ["route", "status"], registry=metrics)
    latency = Histogram("brainstore_request_seconds", "Request latency", ["route"], registry=metrics,
                        buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10))
    loads = Counter("brainstore_model_loads", "Models loaded into memory", registry=metrics)
    app.state.backend, app.state.metrics = backend, metrics

    def call(fn, *args, **kwargs):
        return _call(fn, *args, timeout=limits.request_timeout_s, **kwargs)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(ServingError)
    async def _serving_error(request: Request, e: ServingError):
        return error(e.status, e.message, e.headers)

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
            got = request.headers.get("authorization", "")
            if not hmac.compare_digest(got.encode(), f"Bearer {token}".encode()):
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
        except Exception as e:  # a fault of the service: say so, never hang
            response = error(500, f"internal error: {type(e).__name__}: {e}")
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

    def answer(request: Request, payload: dict, arrays: dict[str, np.ndarray], fmt: str) -> Response:
        if NPY in request.headers.get("accept", ""):
            names = list(arrays)
            A = np.concatenate([np.atleast_2d(arrays[n]) for n in names], axis=1)
            hdr = {"X-Brainstore-Columns": ",".join(f"{n}:{np.atleast_2d(arrays[n]).shape[1]}" for n in names)}
            return Response(array_to_npy(A), media_type=NPY, headers=hdr)
        return JSONResponse({**payload, **{k: encode_array(v, fmt) for k, v in arrays.items()}})

    @app.get("/healthz")
    async def healthz():
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        """Readiness: the registry lists servable models and their feature stores open."""
        return {"status": "ready", **(await call(backend.ready))}

    @app.get("/v1/models")
    async def models():
        """Servable encoding models per subject and decoding models, with registry metadata."""
        return await call(backend.catalog)

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/encode")
    async def encode(request: Request):
        """Predicted responses of a subject to a stimulus: JSON ``{"subject", "stimulus_id" | "embedding",
        "model"?, "hemisphere"?, "roi"?, "format"?}`` or a multipart upload (fields + ``image`` file)."""
        ctype = request.headers.get("content-type", "")
        image = None
        if ctype.startswith("multipart/form-data"):
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
        return answer(request, payload, {h: v for h, v in out["responses"].items()}, fmt)

    @app.post("/v1/decode")
    async def decode(request: Request):
        """Top-k stimuli of the whole store table for response vectors: JSON ``{"subject", "responses",
        "model"?, "target"?, "top_k"?, "return_embedding"?, "format"?}``, or an ``application/x-npy``
        body with those fields as query parameters."""
        if request.headers.get("content-type", "").startswith(NPY):
            q = dict(request.query_params)
            R = array_from_npy(await _body(request, limits.max_body_bytes), "responses", limits.max_values)
            for k in ("top_k",):
                if k in q:
                    q[k] = _int(q[k], k)
            q["return_embedding"] = q.get("return_embedding", "false").lower() in ("1", "true", "yes")
        else:
            q = await body_json(request)
            if "responses" not in q:
                raise ServingError(422, "responses: required (one or more response vectors of the subject)")
            R = decode_array(q["responses"], "responses", limits.max_values)
        q = _fields(q, {"subject", "responses", "model", "target", "top_k", "return_embedding", "format"}, "/v1/decode")
        top_k = q.get("top_k", 5)
        if not isinstance(q.get("return_embedding", False), bool):
            raise ServingError(422, "return_embedding must be true or false")
        out = await call(backend.decode, _str(q, "subject", required=True), R, model=_str(q, "model"),
                          target=_str(q, "target"), top_k=top_k, return_embedding=q.get("return_embedding", False))
        arrays = {"embedding": out.pop("embedding")} if "embedding" in out else {}
        if NPY in request.headers.get("accept", "") and not arrays:
            raise ServingError(406, "an npy answer holds the decoded embeddings: set return_embedding")
        return answer(request, out, arrays, _fmt(q))

    @app.post("/v1/explain")
    async def explain(request: Request):
        """Selectivity: the stored stimuli (with captions) an encoding model predicts drive an ROI most,
        JSON ``{"model", "roi", "subject"?, "top"?, "hemisphere"?}``."""
        q = _fields(await body_json(request), {"model", "roi", "subject", "top", "hemisphere"}, "/v1/explain")
        return await call(backend.explain, _str(q, "model", required=True), _str(q, "roi", required=True),
                           subject=_str(q, "subject"), top=q.get("top", 20), hemisphere=_str(q, "hemisphere"))

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


def _fmt(q: dict) -> str:
    fmt = q.get("format", "b64")
    if fmt not in ("b64", "list"):
        raise ServingError(422, f"format must be 'b64' (encoded arrays) or 'list'; got {fmt!r}")
    return fmt
