"""The app's routes, one function each (:data:`ROUTES`: path -> method and handler; ``make_app`` adds them
with their OpenAPI declarations from ``_openapi.py``). A handler parses and validates its request
(``_http.py``), calls the backend (``request.app.state.backend``) and answers; every refusal is a
:class:`~._codec.ServingError` naming the field and the fix.
"""

import numpy as np
from starlette.requests import Request

from ._codec import NPY, ServingError, array_from_npy, decode_array
from ._http import (JSON, MULTIPART, accepts, answer, answer_format, body_json, call, fields, flag, int_field,
                    read_body, str_field)

__all__ = ["ROUTES", "KNOWN"]


async def healthz():
    """Liveness: the process answers."""
    return {"status": "ok"}


async def readyz(request: Request):
    """Readiness: the registry lists servable models and their feature stores open."""
    return {"status": "ready", **(await call(request, request.app.state.backend.ready))}


async def models(request: Request):
    """Servable encoding models per subject and decoding models, with registry metadata."""
    return await call(request, request.app.state.backend.catalog)


async def prometheus(request: Request):
    """Request counts and latencies per route and status, model loads (Prometheus text format)."""
    from fastapi.responses import Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(request.app.state.metrics), media_type=CONTENT_TYPE_LATEST)


async def encode(request: Request):
    """Predicted responses of a subject to a stimulus: JSON ``{"subject", "stimulus_id" | "embedding",
    "model"?, "hemisphere"?, "roi"?, "format"?}`` or a multipart upload (fields + ``image`` file)."""
    limits = request.app.state.limits
    image = None
    if accepts(request, "/v1/encode", (JSON, MULTIPART)) == MULTIPART:
        q, image = await _upload(request)
    else:
        q = await body_json(request)
    q = fields(q, {"subject", "model", "hemisphere", "roi", "stimulus_id", "embedding", "format"}, "/v1/encode")
    subject, fmt = str_field(q, "subject", required=True), answer_format(q)
    emb = q.get("embedding")
    if isinstance(emb, dict) and not {"dtype", "shape", "data_b64"} <= set(emb):
        emb = {str(k): decode_array(v, f"embedding.{k}", limits.max_values) for k, v in emb.items()}
    elif emb is not None:
        emb = decode_array(emb, "embedding", limits.max_values)
    backend = request.app.state.backend
    out = await call(request, backend.encode, subject, now=getattr(backend, "encode_now", None),
                     model=str_field(q, "model"), hemisphere=str_field(q, "hemisphere"), roi=str_field(q, "roi"),
                     stimulus_id=q.get("stimulus_id"), embedding=emb, image=image)
    payload = {k: out[k] for k in ("model", "model_version", "subject") if k in out}
    payload["shape"] = {h: list(np.shape(v)) for h, v in out["responses"].items()}
    if out.get("vertices"):
        payload["vertices"] = out["vertices"]
    field = "stimulus_id" if q.get("stimulus_id") is not None else "image" if image is not None else "embedding"
    return answer(request, payload, {h: v for h, v in out["responses"].items()}, fmt, field)


async def _upload(request: Request) -> tuple[dict, bytes]:
    """A multipart encode request: its fields and the uploaded image's bytes (sizes checked)."""
    limits = request.app.state.limits
    await read_body(request, limits.max_body_bytes)  # size checked before parsing
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
    return {k: v for k, v in form.items() if k != "image" and isinstance(v, str)}, image


async def decode(request: Request):
    """Top-k stimuli of the whole store table for response vectors: JSON ``{"subject", "responses",
    "model"?, "target"?, "top_k"?, "return_embedding"?, "format"?}`` (``responses`` one array, lh then
    rh, or ``{"lh", "rh"}``), or an ``application/x-npy`` body with those fields as query parameters."""
    limits = request.app.state.limits
    names = {"subject", "responses", "model", "target", "top_k", "return_embedding", "format"}
    query = fields(dict(request.query_params), names - {"responses"}, "/v1/decode (query parameters)")
    if "top_k" in query:
        query["top_k"] = int_field(query["top_k"], "top_k")
    if "return_embedding" in query:
        query["return_embedding"] = flag(query["return_embedding"], "return_embedding")
    if accepts(request, "/v1/decode", (JSON, NPY)) == NPY:
        q = query
        R = array_from_npy(await read_body(request, limits.max_body_bytes), "responses", limits.max_values)
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
    q = fields(q, names, "/v1/decode")
    top_k = q.get("top_k", 5)
    if not isinstance(q.get("return_embedding", False), bool):
        raise ServingError(422, "return_embedding must be true or false")
    backend = request.app.state.backend
    out = await call(request, backend.decode, str_field(q, "subject", required=True), R,
                     now=getattr(backend, "decode_now", None), model=str_field(q, "model"),
                     target=str_field(q, "target"), top_k=top_k, return_embedding=q.get("return_embedding", False))
    arrays = {"embedding": out.pop("embedding")} if "embedding" in out else {}
    if NPY in request.headers.get("accept", "") and not arrays:
        raise ServingError(406, "an npy answer holds the decoded embeddings: set return_embedding")
    return answer(request, out, arrays, answer_format(q), "responses")


async def explain(request: Request):
    """Selectivity: the stored stimuli (with captions) an encoding model predicts drive an ROI most,
    JSON ``{"model", "roi", "subject"?, "top"?, "hemisphere"?}``."""
    accepts(request, "/v1/explain", (JSON,))
    q = fields(await body_json(request), {"model", "roi", "subject", "top", "hemisphere"}, "/v1/explain")
    out = await call(request, request.app.state.backend.explain, str_field(q, "model", required=True),
                     str_field(q, "roi", required=True), subject=str_field(q, "subject"), top=q.get("top", 20),
                     hemisphere=str_field(q, "hemisphere"))
    return answer(request, out, {}, "b64", "model")


#: The routes, in the order they are declared: path -> (HTTP method, handler).
ROUTES = {"/healthz": ("GET", healthz), "/readyz": ("GET", readyz), "/v1/models": ("GET", models),
          "/metrics": ("GET", prometheus), "/v1/encode": ("POST", encode), "/v1/decode": ("POST", decode),
          "/v1/explain": ("POST", explain)}
#: Every path the app answers (the routes and FastAPI's documentation), for metrics labels and 404 messages.
KNOWN = {*ROUTES, "/docs", "/openapi.json"}
