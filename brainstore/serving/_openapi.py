"""The HTTP contract in the OpenAPI schema (``/openapi.json``, ``/docs``): every request body (the app
parses bodies itself, so that its messages name fields, and declares them here) and every answer, refusals
included, with its body. The schemas say what the parser accepts; the parser stays the authority on
what it refuses and why."""

from __future__ import annotations

from ._codec import NPY

__all__ = ["COMPONENTS", "route_docs", "security", "ERROR_STATUSES"]

_REF = "#/components/schemas/"


def _ref(name: str) -> dict:
    return {"$ref": _REF + name}


_NAME = {"type": "string", "minLength": 1, "maxLength": 256}
#: An optional name: null means "not given" (the default), as JSON clients often send it.
_OPT = {"type": ["string", "null"], "minLength": 1, "maxLength": 256}
_STIMULUS_ID = {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$", "examples": ["nsd-00012"]}
_FORMAT = {"type": "string", "enum": ["b64", "list"], "default": "b64",
           "description": "How answer arrays travel: encoded arrays (b64) or nested lists."}
_HEMI = {"type": ["string", "null"], "enum": ["lh", "rh", None]}
_MODEL = {"type": ["string", "null"], "minLength": 1, "maxLength": 256,
          "description": "NAME (what its bare name serves: its champion alias when set, else its latest version), "
                         "NAME@3 (that version) or NAME@ALIAS (what the alias points at)."}
_VERSION = {"type": "string", "examples": ["img/subj01@3"],
            "description": "The registry version that produced the answer (NAME@VERSION); also the "
                           "X-Brainstore-Model header."}

COMPONENTS: dict[str, dict] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {"type": "string", "description": "What was wrong, naming the field, and the fix."}},
    },
    "EncodedArray": {
        "type": "object", "required": ["dtype", "shape", "data_b64"], "additionalProperties": False,
        "description": "A little-endian array: its bytes in base64.",
        "properties": {
            "dtype": {"type": "string", "enum": ["float32", "float64", "float16", "int32", "int64",
                                                 "<f4", "<f8", "<f2", "<i4", "<i8"]},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 2},
            "data_b64": {"type": "string", "contentEncoding": "base64"},
        },
    },
    "Numbers": {
        "description": "Finite numbers (within float32's range): a vector, a matrix of rows, or an encoded array.",
        "anyOf": [{"type": "array", "items": {"type": "number"}},
                  {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
                  _ref("EncodedArray")],
    },
    "AnswerArray": {
        "description": "An answer's array: encoded (format b64, float32) or nested lists (format list).",
        "anyOf": [_ref("EncodedArray"),
                  {"type": "array", "items": {"anyOf": [{"type": "number"},
                                                        {"type": "array", "items": {"type": "number"}}]}}],
    },
    "EncodeRequest": {
        "type": "object", "required": ["subject"], "additionalProperties": False,
        "description": "Exactly one stimulus: stimulus_id (store ids), embedding (one array of the model's "
                       "tables side by side, or one per table), or an uploaded image (multipart).",
        "properties": {
            "subject": {**_NAME, "examples": ["subj01"]},
            "model": {**_MODEL, "description": "Encoding model (default: the subject's best by validation): "
                                               + _MODEL["description"]},
            "hemisphere": {**_HEMI, "description": "One hemisphere only (default: every one of the model)."},
            "roi": {**_OPT, "description": "A named ROI: only its vertices, and which they are."},
            "stimulus_id": {"anyOf": [_STIMULUS_ID, {"type": "array", "items": _STIMULUS_ID, "minItems": 1,
                                                     "maxItems": 1024}, {"type": "null"}]},
            "embedding": {"anyOf": [_ref("Numbers"), {"type": "object", "additionalProperties": _ref("Numbers"),
                                                      "description": "{feature table: its array}"},
                                    {"type": "null"}]},
            "format": _FORMAT,
        },
    },
    "EncodeUpload": {
        "type": "object", "required": ["subject", "image"], "additionalProperties": False,
        "properties": {
            "subject": {**_NAME, "examples": ["subj01"]},
            "model": _NAME,
            "hemisphere": {"type": "string", "enum": ["lh", "rh"]},
            "roi": _NAME,
            "format": _FORMAT,
            "image": {"type": "string", "format": "binary", "description": "The image file (PNG, JPEG, ...)."},
        },
    },
    "DecodeRequest": {
        "type": "object", "required": ["subject", "responses"], "additionalProperties": False,
        "properties": {
            "subject": {**_NAME, "examples": ["subj01"]},
            "responses": {"anyOf": [_ref("Numbers"), {
                "type": "object", "additionalProperties": False, "properties": {"lh": _ref("Numbers"),
                                                                                 "rh": _ref("Numbers")},
                "description": "Per hemisphere: the decoder's voxels of it, or all its vertices (the decoder "
                               "takes its voxels); as /v1/encode answers."}],
                "description": "Response vectors: the decoder's voxels, lh then rh (one row per vector), or "
                               "{lh, rh}."},
            "model": {**_MODEL, "description": "Decoding model (default: the subject's only one): "
                                               + _MODEL["description"]},
            "target": {**_OPT, "description": "Feature table to decode into (default: the model's first)."},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 5},
            "return_embedding": {"type": "boolean", "default": False},
            "format": _FORMAT,
        },
    },
    "ExplainRequest": {
        "type": "object", "required": ["model", "roi"], "additionalProperties": False,
        "properties": {
            "model": {**_NAME, "examples": ["img"]},
            "roi": {**_NAME, "examples": ["floc-faces"], "description": "A named ROI or an ROI family."},
            "subject": {**_OPT, "description": "Subject (default: the first the model is fitted for)."},
            "top": {"type": "integer", "minimum": 1, "maximum": 200, "default": 20},
            "hemisphere": _HEMI,
        },
    },
    "EncodeAnswer": {
        "type": "object", "required": ["model", "model_version", "subject", "shape"],
        "description": "Predicted responses per hemisphere (lh, rh: arrays of shape (n stimuli, n vertices)).",
        "properties": {
            "model": {"type": "string"}, "model_version": _VERSION, "subject": {"type": "string"},
            "shape": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}}},
            "vertices": {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "integer"}},
                         "description": "With roi: the vertex indices answered, per hemisphere."},
            "lh": _ref("AnswerArray"), "rh": _ref("AnswerArray"),
        },
    },
    "DecodeAnswer": {
        "type": "object", "required": ["model", "model_version", "subject", "target", "table_rows", "results"],
        "properties": {
            "model": {"type": "string"}, "model_version": _VERSION, "subject": {"type": "string"},
            "target": {"type": "string"},
            "table_rows": {"type": "integer", "description": "Stimuli searched (the whole target table)."},
            "results": {"type": "array", "description": "Per response vector, the top_k stimuli, best first.",
                        "items": {"type": "array", "items": {
                            "type": "object", "required": ["stimulus_id", "score"],
                            "properties": {"stimulus_id": {"type": "string"}, "score": {"type": "number"},
                                           "caption": {"type": ["string", "null"]}}}}},
            "embedding": _ref("AnswerArray"),
        },
    },
    "ExplainAnswer": {
        "type": "object", "required": ["model", "subject", "roi", "n_vertices", "n_scored", "top"],
        "properties": {
            "model": {"type": "string"}, "subject": {"type": "string"}, "roi": {"type": "string"},
            "n_vertices": {"type": "integer"}, "n_scored": {"type": "integer"},
            "top": {"type": "array", "items": {
                "type": "object", "required": ["stimulus_id", "score", "z"],
                "properties": {"stimulus_id": {"type": "string"}, "score": {"type": "number"}, "z": {"type": "number"},
                               "caption": {"type": ["string", "null"]}}}},
        },
    },
    "Catalog": {
        "type": "object", "required": ["encoders", "decoders"],
        "properties": {
            "encoders": {"type": "object", "description": "{subject: {model: {kind, features, dataset, val_score, "
                                                          "hemispheres, model_version}}}: what each bare name serves",
                         "additionalProperties": {"type": "object", "additionalProperties": {"type": "object"}}},
            "decoders": {"type": "object", "description": "{model: {kind, targets, subjects, dataset, "
                                                          "model_versions: {subject: NAME@VERSION}}}",
                         "additionalProperties": {"type": "object"}},
            "models": {"type": "object", "description": "Per registry name (MODEL/SUBJECT, MODEL/shared): its "
                                                        "versions, aliases, and the version its bare name serves now.",
                       "additionalProperties": _ref("ModelVersions")},
        },
    },
    "ModelVersions": {
        "type": "object", "required": ["serving", "aliases", "versions"],
        "properties": {
            "kind": {"type": ["string", "null"]},
            "serving": {"type": "integer", "description": "The version the bare name serves now."},
            "aliases": {"type": "object", "additionalProperties": {"type": "integer"},
                        "description": "{alias: version}"},
            "versions": {"type": "array", "items": {
                "type": "object", "required": ["version"],
                "properties": {"version": {"type": "integer"}, "created": {"type": ["string", "null"]},
                               "val_score": {"type": ["number", "null"]},
                               "aliases": {"type": "array", "items": {"type": "string"}}}}},
            "held": {"type": "object", "description": "A newer version the name should serve but that cannot be "
                                                      "loaded: the older one keeps serving.",
                     "properties": {"wanted": {"type": "integer"}, "error": {"type": "string"}}},
        },
    },
    "Ready": {
        "type": "object", "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ready"]}, "encoders": {"type": "integer"},
                       "decoders": {"type": "integer"}, "models_checked": {"type": "integer"},
                       "stores": {"type": "array", "items": {"type": "string"}},
                       "deployments": {"type": "array", "items": {"type": "string"}},
                       "held": {"type": "array", "description": "Versions held back (they cannot be loaded): each "
                                                               "name keeps serving its older version.",
                                "items": {"type": "object", "properties": {
                                    "model": {"type": "string"}, "serving": {"type": "string"},
                                    "wanted": {"type": "string"}, "error": {"type": "string"}}}}},
    },
    "Health": {"type": "object", "required": ["status"], "properties": {"status": {"type": "string", "enum": ["ok"]}}},
}

#: What each refusal means (the body is always ``{"error": "..."}``).
ERROR_STATUSES = {
    400: "Malformed body: JSON that does not parse, a broken multipart body or .npy file, an unreadable image.",
    401: "Missing or wrong bearer token (Authorization: Bearer <token>).",
    404: "Unknown subject, model, model version or alias, stimulus id, ROI or feature table (the message lists "
         "the known ones).",
    406: "An npy answer (Accept: application/x-npy) where the answer holds no array.",
    413: "Body, image or array above the service's limits.",
    415: "A Content-Type the route does not read (the message names the accepted ones).",
    422: "A field is missing, unknown or invalid, or the answer would not be finite (the message names the field).",
    503: "The service cannot answer now (registry or feature store unreachable, queue full, request timeout); "
         "retry after Retry-After seconds.",
}


def _error(status: int) -> dict:
    out = {"description": ERROR_STATUSES[status], "content": {"application/json": {"schema": _ref("Error")}}}
    if status == 503:
        out["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying.", "required": True,
                                          "schema": {"type": "string", "pattern": "^[0-9]+$"}}}
    if status == 401:
        out["headers"] = {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}}
    return out


def _json_body(schema: str, example: dict | None = None) -> dict:
    media = {"schema": _ref(schema)}
    if example is not None:
        media["example"] = example
    return {"application/json": media}


_QUERY_NPY = "For an application/x-npy body (a JSON body may carry it instead, not both)."

#: Per route: (openapi_extra, answers: {status: description or schema name}, refusals).
_ROUTES: dict[str, dict] = {
    "/healthz": {"ok": ("Health", "The process answers."), "errors": []},
    "/readyz": {"ok": ("Ready", "Every servable model loadable and every store reachable."), "errors": [503]},
    "/v1/models": {"ok": ("Catalog", "Servable encoding models per subject and decoding models."), "errors": [503]},
    "/metrics": {"ok": (None, "Prometheus metrics."), "errors": []},
    "/v1/encode": {
        "ok": ("EncodeAnswer", "Predicted responses (JSON, or with Accept: application/x-npy one (n, columns) "
                               "float32 array whose X-Brainstore-Columns header says hemisphere:columns)."),
        "npy": True, "versioned": True,
        "errors": [400, 404, 413, 415, 422, 503],
        "extra": {"requestBody": {"required": True, "content": {
            **_json_body("EncodeRequest", {"subject": "subj01", "stimulus_id": "nsd-00012"}),
            "multipart/form-data": {"schema": _ref("EncodeUpload"),
                                    "encoding": {"image": {"contentType": "image/*, application/octet-stream"}}},
        }}},
    },
    "/v1/decode": {
        "ok": ("DecodeAnswer", "The top_k stimuli of the whole target table per response vector (and, with "
                               "return_embedding, the decoded embeddings; as npy with Accept: application/x-npy)."),
        "npy": True, "versioned": True,
        "errors": [400, 404, 406, 413, 415, 422, 503],
        "extra": {
            "requestBody": {"required": True, "content": {
                **_json_body("DecodeRequest"),
                NPY: {"schema": {"type": "string", "format": "binary",
                                 "description": "A .npy file of response vectors (1-D, or one row per vector); "
                                                "the other fields as query parameters."}},
            }},
            "parameters": [
                {"name": "subject", "in": "query", "required": False, "schema": _NAME, "description": _QUERY_NPY},
                {"name": "model", "in": "query", "required": False, "schema": _NAME, "description": _QUERY_NPY},
                {"name": "target", "in": "query", "required": False, "schema": _NAME, "description": _QUERY_NPY},
                {"name": "top_k", "in": "query", "required": False,
                 "schema": {"type": "integer", "minimum": 1, "maximum": 100}, "description": _QUERY_NPY},
                {"name": "return_embedding", "in": "query", "required": False, "schema": {"type": "boolean"},
                 "description": _QUERY_NPY},
                {"name": "format", "in": "query", "required": False, "schema": _FORMAT, "description": _QUERY_NPY},
            ],
        },
    },
    "/v1/explain": {
        "ok": ("ExplainAnswer", "The stored stimuli the model predicts drive the ROI most, best first."),
        "errors": [400, 404, 413, 415, 422, 503],
        "extra": {"requestBody": {"required": True, "content": _json_body(
            "ExplainRequest", {"model": "img", "roi": "floc-faces", "top": 5})}},
    },
}


def route_docs(path: str, *, token: bool) -> dict:
    """``responses=`` and ``openapi_extra=`` for the route at ``path`` (401 declared when a token applies)."""
    spec = _ROUTES[path]
    name, text = spec["ok"]
    if name is None:
        ok = {"description": text, "content": {"text/plain": {"schema": {"type": "string"}}}}
    else:
        ok = {"description": text, "content": {"application/json": {"schema": _ref(name)}}}
    if spec.get("npy"):
        ok["content"][NPY] = {"schema": {"type": "string", "format": "binary"}}
    if spec.get("versioned"):
        ok["headers"] = {"X-Brainstore-Model": {"description": "The model version that answered (NAME@VERSION).",
                                                "required": True, "schema": {"type": "string"}}}
    errors = sorted(set(spec["errors"]) | ({401} if token and path != "/healthz" else set()))
    return {"responses": {200: ok, **{s: _error(s) for s in errors}}, "openapi_extra": spec.get("extra")}


def security(schema: dict) -> dict:
    """Declare the bearer token (every route but /healthz) in an OpenAPI document."""
    schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
        "type": "http", "scheme": "bearer", "description": "The token the service was started with."}
    for path, ops in schema.get("paths", {}).items():
        if path != "/healthz":
            for op in ops.values():
                op["security"] = [{"bearer": []}]
    return schema
