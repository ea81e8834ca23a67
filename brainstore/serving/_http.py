"""Reading requests and writing answers, for the routes (``_routes.py``) and the guard around them.

A body is read once, refused past the size limit while it streams in; its media type decides the
parser (a missing Content-Type reads as JSON; others are 415 naming the accepted ones); fields are
checked by name and type, each refusal a :class:`~._codec.ServingError` naming the field. An answer
is JSON (arrays as ``fmt``) or npy, refused 422 when it would hold a NaN or an infinity. A backend
method is awaited (Ray Serve handles) or run in a worker thread, within the request timeout.
"""

import inspect
import math

import numpy as np

from ._codec import NPY, ServingError, array_to_npy, encode_array
from ._outage import RETRY_AFTER_S

__all__ = ["JSON", "MULTIPART", "accepts", "read_body", "body_json", "fields", "str_field", "int_field", "flag",
           "answer_format", "call", "error", "answer", "json_response", "MODEL_HEADER"]

JSON = "application/json"
MULTIPART = "multipart/form-data"


# ----------------------------------------------------------------------------- requests
def _media_type(request) -> str:
    """The request's media type, lower case, without parameters ("" when there is no Content-Type)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def accepts(request, route: str, accepted: tuple[str, ...]) -> str:
    """The body's media type when ``route`` reads it (a missing Content-Type reads as JSON); else 415."""
    media = _media_type(request)
    if not media:
        return JSON
    if media in accepted:
        return media
    hint = (" (curl -d sends application/x-www-form-urlencoded: add -H 'Content-Type: application/json')"
            if media == "application/x-www-form-urlencoded" else "")
    raise ServingError(415, f"Content-Type {media[:100]} is not read by {route}; send {' or '.join(accepted)}{hint}",
                       headers={"Accept-Post": ", ".join(accepted)})


async def read_body(request, limit: int) -> bytes:
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


async def body_json(request) -> dict:
    """The body as a JSON object (400 when it does not parse, 422 when it is not an object)."""
    import orjson

    raw = await read_body(request, request.app.state.limits.max_body_bytes)
    try:  # orjson: several times json's speed
        obj = orjson.loads(raw or b"null")
    except orjson.JSONDecodeError as e:
        import json

        try:  # NaN and Infinity literals (Python's json.dumps writes them): read, to be refused naming the field
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ServingError(400, f"malformed JSON body: {e}") from None
    if not isinstance(obj, dict):
        raise ServingError(422, "the body must be a JSON object")
    return obj


def fields(q: dict, allowed: set[str], route: str) -> dict:
    """``q`` when it holds only ``allowed`` fields; else 422 naming the unknown ones and the known."""
    unknown = sorted(set(q) - allowed)
    if unknown:
        raise ServingError(422, f"{route}: unknown field(s) {', '.join(unknown)}; fields: {', '.join(sorted(allowed))}")
    return q


def str_field(q: dict, key: str, required: bool = False) -> str | None:
    """A name field: a non-empty string of at most 256 characters (None when absent and not ``required``)."""
    v = q.get(key)
    if v is None:
        if required:
            raise ServingError(422, f"{key}: required")
        return None
    if not isinstance(v, str) or not v or len(v) > 256:
        raise ServingError(422, f"{key} must be a non-empty string (at most 256 characters); got {v!r}"[:300])
    return v


def int_field(v: str, key: str) -> int:
    """A query parameter as an integer."""
    try:
        return int(v)
    except ValueError:
        raise ServingError(422, f"{key} must be an integer; got {v!r}") from None


def flag(v: str, key: str) -> bool:
    """A query parameter as true or false (1 / 0, yes / no)."""
    low = v.strip().lower()
    if low in ("1", "true", "yes"):
        return True
    if low in ("0", "false", "no"):
        return False
    raise ServingError(422, f"{key} must be true or false; got {v[:50]!r}")


def answer_format(q: dict) -> str:
    """How the answer's arrays travel: ``b64`` (the default) or ``list``."""
    value = q.get("format", "b64")
    if value not in ("b64", "list"):
        raise ServingError(422, f"format must be 'b64' (encoded arrays) or 'list'; got {value!r}")
    return value


# ----------------------------------------------------------------------------- the backend
async def call(request, fn, *args, now=None, **kwargs):
    """The backend method ``fn``, within the app's request timeout (:func:`_call`). ``now``: the backend's
    ``fn_now`` (``LocalBackend.encode_now``...), tried first: the answer made at once on this event loop when
    it needs only memory and little work, else None, and then ``fn`` runs in a worker thread."""
    if now is not None:
        out = now(*args, **kwargs)
        if out is not None:
            return out
    return await _call(fn, *args, timeout=request.app.state.limits.request_timeout_s, **kwargs)


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


# ----------------------------------------------------------------------------- answers
def json_response(content, status_code: int = 200, headers: dict | None = None):
    """A JSON answer written by orjson (numpy arrays and scalars as numbers; float32 in its shortest form)."""
    import orjson
    from starlette.responses import Response

    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
    return Response(body, status_code=status_code, headers=headers, media_type=JSON)


def error(status: int, message: str, headers: dict | None = None):
    """The error body ``{"error": message}``; every 503 says when to retry."""
    if status == 503 and not any(k.lower() == "retry-after" for k in (headers or {})):
        headers = {**(headers or {}), "Retry-After": str(RETRY_AFTER_S)}  # every 503 says when to retry
    return json_response({"error": message}, status_code=status, headers=headers)


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


#: The header naming the model version (``NAME@VERSION``) that produced an answer (also its ``model_version``).
MODEL_HEADER = "X-Brainstore-Model"


def answer(request, payload: dict, arrays: dict[str, np.ndarray], fmt: str, field: str):
    """JSON (arrays as ``fmt``) or npy; refused 422 naming the input ``field`` when any value would be NaN
    or infinite as sent (float32), whatever the model let through. A payload's ``model_version`` is also
    sent as the :data:`MODEL_HEADER` header (npy answers too)."""
    from starlette.responses import Response

    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is the refusal below, not a warning
        arrays = {k: np.asarray(v, dtype="<f4") for k, v in arrays.items()}
    bad = [k for k, a in arrays.items() if a.size and not np.isfinite(a).all()]
    if bad or not _finite_json(payload):
        where = f" (in {', '.join(bad)})" if bad else ""
        raise ServingError(422, f"{field}: the answer would hold NaN or infinite values{where}; the input is far "
                                "outside the range the model was fitted on: send values on the scale of its "
                                "training data")
    version = {MODEL_HEADER: payload["model_version"]} if payload.get("model_version") else {}
    if NPY in request.headers.get("accept", "") and arrays:
        names = list(arrays)
        A = np.concatenate([np.atleast_2d(arrays[n]) for n in names], axis=1)
        hdr = {"X-Brainstore-Columns": ",".join(f"{n}:{np.atleast_2d(arrays[n]).shape[1]}" for n in names), **version}
        return Response(array_to_npy(A), media_type=NPY, headers=hdr)
    # lists: the float32 arrays themselves (orjson writes each number in its shortest float32 form)
    return json_response({**payload, **{k: np.ascontiguousarray(v) if fmt == "list" else encode_array(v, fmt)
                                        for k, v in arrays.items()}}, headers=version)
