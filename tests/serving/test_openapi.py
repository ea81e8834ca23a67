"""The HTTP contract as the OpenAPI schema states it, checked by schemathesis against the running service:
the plain `--local` server (uvicorn, models in this process) and the Ray Serve application. Every request
body and refusal is declared (/docs shows how to call each route); generated requests, valid and
invalid, never get a 5xx, every answer's status, content type, headers and body match the schema, and
schema-violating requests are refused (4xx).

Checks: every built-in one except ``positive_data_acceptance``: a schema-valid request may still be
refused with 422 for what no schema can say (give exactly one stimulus; a model whose tables an
uploaded image cannot produce; a vector of the wrong length for the decoder). A schema-violating request
may be refused 413 (an array over the size limits) rather than 4xx for its other faults.

The schema is the app's own document (``make_app(...).openapi()``, what ``/openapi.json`` serves: tested),
loaded at import so that schemathesis parametrizes the tests (its fixture-based loader does not run
under pytest 9).
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402  (schemathesis brings hypothesis)

pytestmark = pytest.mark.slow

TOKEN = "brainstore-openapi-test-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Generated examples per operation and phase: the --local run takes a few tens of seconds.
MAX_EXAMPLES = {"local": 40, "ray": 12}
STATUSES: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


schemathesis.serializer.alias("application/x-npy", "application/octet-stream")  # npy bodies: bytes as they are


def _document() -> dict:
    from brainstore.serving import make_app

    return make_app(object(), token=TOKEN).openapi()  # the document depends on the token only


def _schema(server: str):
    schema = schemathesis.openapi.from_dict(_document(), config=schemathesis.Config())
    schema.config.update(headers=AUTH, request_timeout=60)
    schema.config.generation.update(max_examples=MAX_EXAMPLES[server])
    schema.config.checks.update(excluded_check_names=["positive_data_acceptance"])
    rejection = schema.config.checks.negative_data_rejection  # an array over the size limits is refused first
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    return schema


LOCAL, RAY = _schema("local"), _schema("ray")


@pytest.fixture(scope="module")
def local_url(serving_models):
    from brainstore.serving import LocalBackend, LocalServer, make_app

    server = LocalServer(make_app(LocalBackend(serving_models["registry"]), token=TOKEN))
    yield server.start()
    server.stop()


@pytest.fixture(scope="module")
def ray_url(serving_models, ray_local):
    from ray import serve

    from brainstore.serving import free_port
    from brainstore.serving._deploy import APP_NAME, build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port}, logging_config={"log_level": "WARNING"})
    try:
        one = {"num_replicas": 1}
        serve.run(build_app(serving_models["registry"], token=TOKEN, options={"Ingress": one}),
                  name=APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    for server, counts in STATUSES.items():  # shown with -s: what the generated requests got
        print(f"\nschemathesis {server}: {sum(counts.values())} requests, statuses {dict(sorted(counts.items()))}")


def _run(case, url: str, server: str):
    response = case.call_and_validate(base_url=url, headers=AUTH)  # raises on a failed check (5xx, conformance)
    STATUSES[server][response.status_code] += 1


_settings = settings(deadline=None, derandomize=True, suppress_health_check=list(HealthCheck), database=None)


@LOCAL.parametrize()
@_settings
def test_the_local_server_keeps_its_openapi_contract(case, local_url):
    _run(case, local_url, "local")


@RAY.parametrize()
@_settings
def test_the_ray_serve_app_keeps_its_openapi_contract(case, ray_url):
    _run(case, ray_url, "ray")


def test_real_answers_match_the_schema(local_url, serving_models):
    """Requests that reach the models (a stored id, embeddings, an uploaded image, a vector of the decoder's
    length, per hemisphere too, npy both ways) get 200 answers that match the schema: generated data
    rarely finds a stored id."""
    import io

    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting import Decoder

    t = AlgonautsDataset(serving_models["data"]).stimuli()
    sid, path = t.column("stimulus_id")[0].as_py(), t.column("path")[0].as_py()
    voxels = Decoder.load(serving_models["registry"], f"decoder-ridge-{serving_models['txt']}/subj01").voxels
    n_vox = sum(len(v) for v in voxels.values())
    npy = io.BytesIO()
    np.save(npy, np.full(n_vox, 0.5, np.float32))
    with open(path, "rb") as f:
        image = f.read()
    enc, dec = LOCAL["/v1/encode"]["POST"], LOCAL["/v1/decode"]["POST"]
    cases = [
        enc.Case(body={"subject": "subj01", "model": "img", "stimulus_id": sid}, media_type="application/json"),
        enc.Case(body={"subject": "subj02", "stimulus_id": [sid, sid], "format": "list", "hemisphere": "rh"},
                 media_type="application/json"),
        enc.Case(body={"subject": "subj01", "model": "img", "embedding": [0.1] * 32},
                 media_type="application/json"),
        enc.Case(body={"subject": "subj01", "model": "img", "roi": "floc-faces", "stimulus_id": sid,
                       "hemisphere": "lh"}, media_type="application/json"),
        enc.Case(body={"subject": "subj01", "model": "img", "image": image}, media_type="multipart/form-data"),
        enc.Case(body={"subject": "subj01", "model": "img", "stimulus_id": sid}, media_type="application/json",
                 headers={"Accept": "application/x-npy"}),
        dec.Case(body={"subject": "subj01", "responses": [[0.5] * n_vox] * 2, "top_k": 3, "return_embedding": True},
                 media_type="application/json"),
        dec.Case(body={"subject": "subj01", "responses": {h: [0.5] * len(v) for h, v in voxels.items()},
                       "format": "list"}, media_type="application/json"),
        dec.Case(body=npy.getvalue(), media_type="application/x-npy",
                 query={"subject": "subj01", "return_embedding": "true"}, headers={"Accept": "application/x-npy"}),
        LOCAL["/v1/explain"]["POST"].Case(body={"model": "img", "roi": "floc-faces", "top": 3},
                                          media_type="application/json"),
        LOCAL["/v1/models"]["GET"].Case(),
        LOCAL["/readyz"]["GET"].Case(),
        LOCAL["/healthz"]["GET"].Case(),
        LOCAL["/metrics"]["GET"].Case(),
    ]
    for case in cases:
        r = case.call_and_validate(base_url=local_url, headers=AUTH)
        assert r.status_code == 200, (case.operation.label, r.status_code, r.text[:300])


def test_every_post_route_declares_its_bodies_and_refusals(local_url):
    """/docs can show how to call each route: request bodies per media type, refusals with the error body,
    401 and the bearer scheme where a token applies, Retry-After on 503; /openapi.json serves this document."""
    doc = requests.get(f"{local_url}/openapi.json", headers=AUTH, timeout=30).json()
    assert doc == _document()
    media = {p: sorted(doc["paths"][p]["post"]["requestBody"]["content"]) for p in
             ("/v1/encode", "/v1/decode", "/v1/explain")}
    assert media == {"/v1/encode": ["application/json", "multipart/form-data"],
                     "/v1/decode": ["application/json", "application/x-npy"],
                     "/v1/explain": ["application/json"]}
    for path in ("/v1/encode", "/v1/decode", "/v1/explain"):
        op = doc["paths"][path]["post"]
        assert {"400", "401", "404", "413", "415", "422", "503"} <= set(op["responses"]), path
        assert op["responses"]["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
        assert op["responses"]["503"]["headers"]["Retry-After"]["required"] is True
        assert op["security"] == [{"bearer": []}]
    assert "406" in doc["paths"]["/v1/decode"]["post"]["responses"]
    assert "security" not in doc["paths"]["/healthz"]["get"]
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    req = doc["components"]["schemas"]["DecodeRequest"]
    assert req["required"] == ["subject", "responses"] and req["properties"]["top_k"]["maximum"] == 100
    assert set(doc["paths"]) == {"/healthz", "/readyz", "/v1/models", "/metrics", "/v1/encode", "/v1/decode",
                                 "/v1/explain"}
    without = requests.get(f"{local_url}/docs", timeout=30)
    assert without.status_code == 401 and without.json()["error"]  # the docs sit behind the token too
