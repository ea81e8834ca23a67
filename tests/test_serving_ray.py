"""The Ray Serve application over real HTTP on 127.0.0.1: ingress -> extractor / encoder (multiplexed per
subject) / decoder deployments. Answers equal the in-process backend's (two subjects from one encoder
replica, an uploaded image through the extractor deployment, whole-store decoding); refusals keep their
4xx; a bounded fuzz gets no 5xx. Ray and Serve start once for the module and shut down even on failure."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def serve_url(serving_models, ray_local):
    from ray import serve

    from brainstore.serving import free_port
    from brainstore.serving._deploy import APP_NAME, build_app

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        one = {"num_replicas": 1}
        serve.run(build_app(serving_models["registry"], options={"Encoder": one, "Decoder": one}), name=APP_NAME,
                  route_prefix="/")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()


def _arr(obj) -> np.ndarray:
    return np.frombuffer(base64.b64decode(obj["data_b64"]), dtype="<f4").reshape(obj["shape"])


def test_served_answers_equal_the_in_process_ones(serve_url, serving_models):
    from ray import serve

    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting._decoding import response_matrix
    from brainstore.serving import LocalBackend

    local = LocalBackend(serving_models["registry"])
    ds = AlgonautsDataset(serving_models["data"])
    t = ds.stimuli()
    sid, path = t.column("stimulus_id")[3].as_py(), t.column("path")[3].as_py()
    for subject in ("subj01", "subj02"):  # both subjects from the one encoder replica
        got = requests.post(f"{serve_url}/v1/encode", json={"subject": subject, "model": "both", "stimulus_id": sid},
                            timeout=120).json()
        want = local.encode(subject, model="both", stimulus_id=sid)["responses"]
        for h in ("lh", "rh"):
            np.testing.assert_array_equal(_arr(got[h]), want[h])
    status = serve.status().applications["brainstore"].deployments
    assert status["Encoder"].replica_states.get("RUNNING") == 1
    with open(path, "rb") as f:
        image = f.read()
    got = requests.post(f"{serve_url}/v1/encode", data={"subject": "subj01", "model": "img"},
                        files={"image": ("x.png", image, "image/png")}, timeout=120)
    assert got.status_code == 200, got.text
    want = local.encode("subj01", model="img", image=image)["responses"]
    np.testing.assert_allclose(_arr(got.json()["lh"]), want["lh"], rtol=1e-5, atol=1e-6)
    cat = local.catalog()["decoders"]
    model = next(iter(cat))
    from brainstore.fitting import Decoder

    R = response_matrix(ds, "subj02", "test", Decoder.load(serving_models["registry"], f"{model}/subj02").voxels)[:2]
    got = requests.post(f"{serve_url}/v1/decode", json={"subject": "subj02", "responses": R.tolist(), "top_k": 3},
                        timeout=120).json()
    want = local.decode("subj02", R, top_k=3)
    assert [[x["stimulus_id"] for x in row] for row in got["results"]] == \
        [[x["stimulus_id"] for x in row] for row in want["results"]]
    ex = requests.post(f"{serve_url}/v1/explain", json={"model": "img", "roi": "floc-faces", "top": 3},
                       timeout=120).json()
    assert [x["stimulus_id"] for x in ex["top"]] == \
        [x["stimulus_id"] for x in local.explain("img", "floc-faces", top=3)["top"]]


def test_refusals_keep_their_4xx_through_serve(serve_url):
    u = serve_url
    cases = [
        ("/v1/encode", {"json": {"subject": "subj09", "stimulus_id": "x"}}, 404, "unknown subject 'subj09'"),
        ("/v1/encode", {"json": {"subject": "subj01", "model": "img", "stimulus_id": "nsd-99999"}}, 404, "not in"),
        ("/v1/encode", {"data": {"subject": "subj01", "model": "img"}, "files": {"image": ("x.png", b"nope")}}, 400,
         "image:"),
        ("/v1/encode", {"data": {"subject": "subj01", "model": "both"}, "files": {"image": ("x.png", b"nope")}}, 422,
         "cannot produce"),
        ("/v1/decode", {"json": {"subject": "subj01", "responses": [1.0, 2.0]}}, 422, "expects"),
        ("/v1/decode", {"data": '{"subject": "subj01", "responses": [NaN]}',
                        "headers": {"Content-Type": "application/json"}}, 422, "NaN"),
        ("/v1/decode", {"data": b"{", "headers": {"Content-Type": "application/json"}}, 400, "malformed JSON"),
        ("/v1/decode", {"data": b"0" * (33 << 20), "headers": {"Content-Type": "application/json"}}, 413, "limit"),
    ]
    for route, kw, status, words in cases:
        r = requests.post(f"{u}{route}", timeout=120, **kw)
        assert r.status_code == status and words in r.json()["error"], (route, r.status_code, r.text[:300])
    rng = np.random.default_rng(1)
    atoms = [None, 1, "subj01", "x" * 300, [], {}, [[1], [1, 2]], {"dtype": "float32", "shape": [2], "data_b64": "?"},
             "../etc", [float("1e39")]]
    for i in range(60):
        route = ["/v1/encode", "/v1/decode", "/v1/explain"][i % 3]
        body = {"subject": "subj01", "model": "img",
                **{k: atoms[int(rng.integers(len(atoms)))] for k in ("stimulus_id", "responses", "roi", "top_k")
                   if rng.random() < 0.5}}
        r = requests.post(f"{u}{route}", data=json.dumps(body), headers={"Content-Type": "application/json"},
                          timeout=120)
        assert r.status_code < 500, (route, body, r.status_code, r.text[:300])


def test_overload_is_503_with_retry_after_not_500(serve_url, serving_models):
    """A decoder that takes one request at a time with a queue of one: a burst gets 503 + Retry-After for what
    does not fit, never a 500 or a hang, and the service answers normally afterwards. (Redeploys the app:
    keep this test last in the module.)"""
    from concurrent.futures import ThreadPoolExecutor

    from ray import serve

    from brainstore.serving._deploy import APP_NAME, build_app

    tight = {"num_replicas": 1, "max_ongoing_requests": 1, "max_queued_requests": 1}
    serve.run(build_app(serving_models["registry"], options={"Decoder": tight, "Encoder": {"num_replicas": 1}}),
              name=APP_NAME, route_prefix="/")
    n_vox = None
    cat = requests.get(f"{serve_url}/v1/models", timeout=60).json()
    model = next(iter(cat["decoders"]))
    from brainstore.fitting import Decoder

    n_vox = Decoder.load(serving_models["registry"], f"{model}/subj01").n_voxels
    body = {"subject": "subj01", "responses": [[0.1] * n_vox] * 64, "top_k": 5}

    def post(_):
        r = requests.post(f"{serve_url}/v1/decode", json=body, timeout=120)
        return r.status_code, r.headers.get("retry-after")

    with ThreadPoolExecutor(24) as ex:
        got = list(ex.map(post, range(48)))
    codes = [c for c, _ in got]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(503) > 0 and codes.count(200) > 0, codes
    assert all(ra == "1" for c, ra in got if c == 503)
    assert requests.post(f"{serve_url}/v1/decode", json=body, timeout=120).status_code == 200
