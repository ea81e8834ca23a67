"""The serving app under plain uvicorn on 127.0.0.1 (real HTTP, real registry and LanceDB store): answers
equal the offline library's (predict_model, Decoder + LanceDB search, the extraction pipeline's
embedding of the same image), every bad input is a 4xx naming what was wrong, a bounded fuzz never
gets a 5xx, the token guards everything but /healthz."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests


@pytest.fixture(scope="module")
def served(serving_models):
    from brainstore.serving import LocalBackend, LocalServer, make_app

    backend = LocalBackend(serving_models["registry"])
    server = LocalServer(make_app(backend))
    url = server.start()
    yield {**serving_models, "url": url, "backend": backend}
    server.stop()


def _arr(obj) -> np.ndarray:
    return np.frombuffer(base64.b64decode(obj["data_b64"]), dtype="<f4").reshape(obj["shape"])


def _b64(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"dtype": "float32", "shape": list(a.shape), "data_b64": base64.b64encode(a.tobytes()).decode()}


@pytest.mark.slow
def test_health_ready_models_and_metrics(served):
    u = served["url"]
    assert requests.get(f"{u}/healthz", timeout=10).json() == {"status": "ok"}
    r = requests.get(f"{u}/readyz", timeout=30)
    assert r.status_code == 200 and r.json()["encoders"] == 4 and r.json()["decoders"] == 1
    cat = requests.get(f"{u}/v1/models", timeout=10).json()
    assert sorted(cat["encoders"]) == ["subj01", "subj02"]
    assert sorted(cat["encoders"]["subj01"]) == ["both", "img"]
    assert cat["decoders"][f"decoder-ridge-{served['txt']}"]["subjects"] == ["subj01", "subj02"]
    requests.post(f"{u}/v1/encode", json={"subject": "nobody", "stimulus_id": "x"}, timeout=10)
    m = requests.get(f"{u}/metrics", timeout=10).text
    assert 'brainstore_requests_total{route="/v1/encode",status="404"}' in m
    assert "brainstore_request_seconds_bucket" in m
    assert requests.get(f"{u}/openapi.json", timeout=10).json()["paths"].keys() >= {"/v1/encode", "/v1/decode"}


@pytest.mark.slow
def test_encode_equals_offline_predict_for_ids_embeddings_and_uploads(served):
    from brainstore.datasets import AlgonautsDataset
    from brainstore.features import FeatureStore
    from brainstore.fitting import ModelRegistry, predict_model

    u, reg, fs = served["url"], ModelRegistry(served["registry"]), FeatureStore(served["store"], create=False)
    ds = AlgonautsDataset(served["data"])
    t = ds.stimuli()
    sid, path = t.column("stimulus_id")[0].as_py(), t.column("path")[0].as_py()
    for subject in ("subj01", "subj02"):
        for model in ("img", "both"):
            want = predict_model(reg, model, subject, None, [sid])
            got = requests.post(f"{u}/v1/encode", json={"subject": subject, "model": model, "stimulus_id": sid},
                                timeout=60).json()
            assert got["model"] == model and got["shape"] == {h: list(v.shape) for h, v in want.items()}
            for h in ("lh", "rh"):
                np.testing.assert_array_equal(_arr(got[h]), want[h])
    # raw embeddings: one concatenated array, or one array per table; plain lists on request
    E = {k: fs.load(k, [sid]) for k in (served["img"], served["txt"])}
    want = predict_model(reg, "both", "subj01", None, [sid])
    for emb in (_b64(np.hstack([E[served["img"]], E[served["txt"]]])), {k: v.tolist() for k, v in E.items()}):
        got = requests.post(f"{u}/v1/encode", json={"subject": "subj01", "model": "both", "embedding": emb,
                                                    "format": "list"}, timeout=60).json()
        np.testing.assert_allclose(np.array(got["lh"]), want["lh"], rtol=1e-5, atol=1e-5)
    # an uploaded image goes through the same extractor code and preprocessing as the extraction pipeline
    want = predict_model(reg, "img", "subj02", None, [sid])
    with open(path, "rb") as f:
        r = requests.post(f"{u}/v1/encode", data={"subject": "subj02", "model": "img", "hemisphere": "rh"},
                          files={"image": ("x.png", f, "image/png")}, headers={"Accept": "application/x-npy"},
                          timeout=120)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-npy" and r.headers["x-brainstore-columns"] == \
        f"rh:{want['rh'].shape[1]}"
    np.testing.assert_allclose(np.load(io.BytesIO(r.content)), want["rh"], rtol=1e-4, atol=1e-4)
    # an ROI: its vertices only, and which they are
    regions = ds.regions("subj01", "lh")
    roi = next(n for n, m in regions.items() if m.any() and n.startswith("FFA"))
    got = requests.post(f"{u}/v1/encode", json={"subject": "subj01", "model": "img", "stimulus_id": sid,
                                                "hemisphere": "lh", "roi": roi}, timeout=60).json()
    idx = np.flatnonzero(regions[roi])
    assert got["vertices"] == {"lh": idx.tolist()}
    np.testing.assert_array_equal(_arr(got["lh"]), predict_model(reg, "img", "subj01", None, [sid])["lh"][:, idx])


@pytest.mark.slow
def test_decode_equals_the_offline_decoder_and_whole_store_search(served):
    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting import Decoder
    from brainstore.fitting import response_matrix, store_top_k

    u, txt = served["url"], served["txt"]
    ds = AlgonautsDataset(served["data"])
    dec = Decoder.load(served["registry"], f"decoder-ridge-{txt}/subj02")
    R = response_matrix(ds, "subj02", "test", dec.voxels)[:3]
    E = dec.decode(R)
    ids, sims = store_top_k(dec.store, txt, E, 4)
    got = requests.post(f"{u}/v1/decode", json={"subject": "subj02", "responses": _b64(R), "top_k": 4,
                                                "return_embedding": True}, timeout=60).json()
    assert got["target"] == txt and got["table_rows"] == dec.store.info(txt).rows
    assert [[x["stimulus_id"] for x in row] for row in got["results"]] == ids
    np.testing.assert_allclose([[x["score"] for x in row] for row in got["results"]], sims, rtol=1e-5)
    assert all(x["caption"] for row in got["results"] for x in row)
    np.testing.assert_allclose(_arr(got["embedding"]), E, rtol=1e-5, atol=1e-6)
    # an npy body (one response vector), the decoded embedding back as npy
    buf = io.BytesIO()
    np.save(buf, R[0])
    r = requests.post(f"{u}/v1/decode?subject=subj02&top_k=1&return_embedding=true", data=buf.getvalue(),
                      headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"}, timeout=60)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.load(io.BytesIO(r.content)), E[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_explain_route_names_the_top_stimuli(served):
    from brainstore.fitting import explain_roi

    u = served["url"]
    got = requests.post(f"{u}/v1/explain", json={"model": "img", "roi": "floc-faces", "subject": "subj01", "top": 5},
                        timeout=120).json()
    want = explain_roi(served["registry"], "img", "subj01", roi="floc-faces", top=5)
    assert [x["stimulus_id"] for x in got["top"]] == [s.stimulus_id for s in want.top]
    assert got["n_vertices"] == want.n_vertices


def _bad(u: str, route: str, **kw) -> requests.Response:
    return requests.post(f"{u}{route}", timeout=60, **kw)


@pytest.mark.slow
def test_bad_inputs_are_4xx_naming_what_is_wrong(served):
    u, txt = served["url"], served["txt"]
    n_vox = served["backend"].catalog()["decoders"][f"decoder-ridge-{txt}"]
    cases = [
        ("/v1/encode", {"json": {"subject": "subj09", "stimulus_id": "x"}}, 404, "unknown subject 'subj09'"),
        ("/v1/encode", {"json": {"subject": "subj01", "model": "nope", "stimulus_id": "x"}}, 404, "its models: both, img"),
        ("/v1/encode", {"json": {"subject": "subj01", "model": "img", "stimulus_id": "nsd-99999"}}, 404,
         "not in the feature table"),
        ("/v1/encode", {"json": {"subject": "subj01", "model": "img", "stimulus_id": "../../etc/passwd"}}, 422,
         "is not a stimulus id"),
        ("/v1/encode", {"json": {"subject": "subj01", "model": "img", "embedding": [1.0, 2.0]}}, 422,
         "the model reads"),
        ("/v1/encode", {"json": {"subject": "subj01", "model": "img"}}, 422, "give exactly one stimulus"),
        ("/v1/encode", {"json": {"subject": "subj01", "stimulus_id": "x", "colour": 1}}, 422, "unknown field(s) colour"),
        ("/v1/encode", {"json": {"subject": "subj01", "model": "img", "stimulus_id": "x", "roi": "V9"}}, 404, None),
        ("/v1/encode", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400, "malformed JSON"),
        ("/v1/encode", {"data": {"subject": "subj01", "model": "img"}, "files": {"image": ("x.png", b"not an image")}},
         400, "image:"),
        ("/v1/encode", {"data": {"subject": "subj01", "model": "both"}, "files": {"image": ("x.png", b"\x89PNG")}},
         422, "an uploaded image cannot produce"),
        ("/v1/decode", {"json": {"subject": "subj01", "responses": [1.0, 2.0, 3.0]}}, 422, "expects"),
        ("/v1/decode", {"data": "{\"subject\": \"subj01\", \"responses\": [NaN, 1.0]}",
                        "headers": {"Content-Type": "application/json"}}, 422, "NaN or infinite"),
        ("/v1/decode", {"json": {"subject": "subj01", "responses": _b64(np.array([np.inf, 1.0]))}}, 422,
         "NaN or infinite"),
        ("/v1/decode", {"json": {"subject": "subj01", "responses": {"dtype": "float32", "shape": [3],
                                                                    "data_b64": "AAAA"}}}, 422, "holds 3 bytes"),
        ("/v1/decode", {"json": {"subject": "subj07", "responses": [1.0]}}, 404, "subjects with decoders: subj01, subj02"),
        ("/v1/decode", {"json": {"subject": "subj01", "responses": [1.0], "top_k": 0}}, 422, "top_k"),
        ("/v1/decode", {"data": b"garbage", "headers": {"Content-Type": "application/x-npy"},
                        "params": {"subject": "subj01"}}, 400, "not a readable .npy"),
        ("/v1/decode", {"json": {"subject": "subj01"}}, 422, "responses: required"),
        ("/v1/explain", {"json": {"model": "img", "roi": "nowhere"}}, 404, "nowhere"),
        ("/v1/explain", {"json": {"model": "zzz", "roi": "FFA-1"}}, 404, "unknown encoding model 'zzz'"),
    ]
    for route, kw, status, words in cases:
        r = _bad(u, route, **kw)
        assert r.status_code == status, (route, kw, r.status_code, r.text)
        msg = r.json()["error"]
        if words:
            assert words in msg, (words, msg)
    # the wrong vertex count states the expected one
    r = _bad(u, "/v1/decode", json={"subject": "subj01", "responses": [0.5] * 7})
    assert "expects" in r.json()["error"] and "lh:" in r.json()["error"] and n_vox["subjects"]
    # a body over the limit: 413 before it is read
    r = _bad(u, "/v1/decode", data=b"0" * (33 << 20), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


@pytest.mark.slow
def test_a_bounded_fuzz_never_gets_a_5xx(served):
    u = served["url"]
    rng = np.random.default_rng(0)
    atoms = [None, True, 0, -1, 1e308, "subj01", "", "x" * 300, [], {}, [1, "a"], [[1, 2], [3]], {"dtype": "float32"},
             {"dtype": "object", "shape": [1], "data_b64": "AAAA"}, {"dtype": "float32", "shape": [-1], "data_b64": ""},
             "../x", "nsd-00001", [float(x) for x in rng.normal(size=5)]]
    keys = {"/v1/encode": ["model", "stimulus_id", "embedding", "roi", "hemisphere", "format"],
            "/v1/decode": ["model", "responses", "top_k", "return_embedding", "target", "format"],
            "/v1/explain": ["model", "roi", "top", "hemisphere"]}
    statuses = []
    for i in range(300):
        route = ["/v1/encode", "/v1/decode", "/v1/explain"][i % 3]
        if i % 10 == 9:  # raw bytes of random content types
            r = requests.post(f"{u}{route}", data=rng.bytes(int(rng.integers(0, 200))), timeout=60,
                              headers={"Content-Type": ["application/json", "application/x-npy",
                                                        "multipart/form-data; boundary=zz", "text/plain"][i % 4]})
        else:  # a plausible body with random values in some of the route's fields (now and then an unknown one)
            fields = keys[route] + (["zz"] if rng.random() < 0.1 else [])
            body = {k: atoms[int(rng.integers(len(atoms)))] for k in rng.choice(fields, int(rng.integers(1, 4)),
                                                                                replace=False)}
            body = {**({"subject": "subj01"} if rng.random() < 0.7 else {}), "model": "img", "roi": "floc-faces",
                    **body}
            r = requests.post(f"{u}{route}", data=json.dumps(body), timeout=60,
                              headers={"Content-Type": "application/json"})
        statuses.append(r.status_code)
        assert r.status_code < 500, (route, r.status_code, r.text)
        assert "error" in r.json() or r.status_code == 200
    assert {400, 404, 422} <= set(statuses), sorted(set(statuses))  # it reached several kinds of refusal


@pytest.mark.slow
def test_a_token_guards_everything_but_healthz(served):
    from brainstore.serving import LocalBackend, LocalServer, make_app

    token = "s3cret-s3cret-s3cret"
    with LocalServer(make_app(LocalBackend(served["registry"]), token=token)) as u:
        assert requests.get(f"{u}/healthz", timeout=10).status_code == 200
        for path in ("/readyz", "/v1/models", "/metrics"):
            r = requests.get(f"{u}{path}", timeout=10)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert requests.get(f"{u}/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
        assert requests.get(f"{u}/v1/models", headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200


@pytest.mark.slow
def test_readyz_proves_models_loadable_and_sees_a_changed_weights_file(served, tmp_path):
    """/readyz checks every servable model's weights against the sha256 in its model.json (once per file
    version): a copy of the registry is ready; after one weights file is altered it is 503 naming that model,
    while /healthz stays 200."""
    import shutil

    from brainstore.serving import LocalBackend, LocalServer, make_app

    reg = tmp_path / "registry"
    shutil.copytree(served["registry"], reg)
    server = LocalServer(make_app(LocalBackend(reg)))
    u = server.start()
    try:
        r = requests.get(f"{u}/readyz", timeout=60)
        assert r.status_code == 200 and r.json()["models_checked"] == 6, r.text
        victim = sorted(reg.glob("*/*/@*/model.safetensors"))[0]  # <name>/@<version>/
        data = bytearray(victim.read_bytes())
        data[-1] ^= 0xFF
        victim.write_bytes(bytes(data))
        r = requests.get(f"{u}/readyz", timeout=60)
        assert r.status_code == 503, r.text
        name = victim.parent.parent.relative_to(reg).as_posix()
        assert name in r.json()["error"] and "sha256" in r.json()["error"], r.text
        assert requests.get(f"{u}/healthz", timeout=10).status_code == 200
    finally:
        server.stop()


# ------------------------------------------------------------------------------------- answers and refusals
# These run the app under uvicorn around a stand-in backend (no Ray, no models): what the app itself
# promises whatever the backend gives it.
TOKEN = "a-token-of-20-chars-"


class _Backend:
    """Answers every route with arrays and scores of ``value`` (a model letting an overflow through gives
    inf or NaN; 1e39 is finite in float64 and infinite in float32), or raises ``fail``."""

    def __init__(self, value: float = 0.5, fail: BaseException | None = None):
        self.value, self.fail, self.calls = value, fail, []

    def _maybe_fail(self):
        if self.fail is not None:
            raise self.fail

    def catalog(self):
        self._maybe_fail()
        return {"encoders": {"subj01": {"m": {"val_score": None}}}, "decoders": {}}

    def ready(self):
        self._maybe_fail()
        return {"encoders": 1, "decoders": 0}

    def encode(self, subject, **kw):
        self._maybe_fail()
        self.calls.append(kw)
        P = np.full((1, 4), self.value)
        return {"model": "m", "subject": subject, "responses": {"lh": P, "rh": P}, "vertices": None}

    def decode(self, subject, responses, **kw):
        self._maybe_fail()
        self.calls.append({"responses": responses, **kw})
        out = {"model": "d", "subject": subject, "target": "t", "table_rows": 3,
               "results": [[{"stimulus_id": "a", "score": float(self.value), "caption": None}]]}
        if kw.get("return_embedding"):
            out["embedding"] = np.full((1, 3), self.value)
        return out

    def explain(self, model, roi, **kw):
        self._maybe_fail()
        return {"model": model, "subject": "subj01", "roi": roi, "n_vertices": 2, "n_scored": 3,
                "top": [{"stimulus_id": "a", "score": float(self.value), "z": 0.0, "caption": None}]}


def _serve(backend, **kw):
    from brainstore.serving import LocalServer, make_app

    return LocalServer(make_app(backend, **kw))


def test_no_answer_holds_nan_or_infinity_whatever_the_model_gives():
    """An answer that would hold NaN or an infinity (as float32, how arrays are sent) is 422 naming the
    input field, as JSON (b64 or lists) or npy, never a 200 with inf nor a 500 from the JSON encoder."""
    for value in (np.inf, -np.inf, np.nan, 1e39):
        with _serve(_Backend(value)) as u:
            for body, field in (({"subject": "subj01", "embedding": [0.5] * 4}, "embedding"),
                                ({"subject": "subj01", "stimulus_id": "nsd-00001"}, "stimulus_id")):
                for fmt in ("b64", "list"):
                    r = requests.post(f"{u}/v1/encode", json={**body, "format": fmt}, timeout=30)
                    assert r.status_code == 422 and r.json()["error"].startswith(f"{field}:"), (value, fmt, r.text)
                r = requests.post(f"{u}/v1/encode", json=body, headers={"Accept": "application/x-npy"}, timeout=30)
                assert r.status_code == 422 and r.json()["error"].startswith(f"{field}:"), (value, r.text)
            score_ok = bool(np.isfinite(value))  # a score of 1e39 is a finite JSON number; an array of it is not
            for extra, ok in (({}, score_ok), ({"return_embedding": True}, False)):
                r = requests.post(f"{u}/v1/decode", json={"subject": "subj01", "responses": [0.5] * 3, **extra},
                                  timeout=30)
                assert r.status_code == (200 if ok else 422), (value, extra, r.text)
                assert ok or r.json()["error"].startswith("responses:"), (value, r.text)
            r = requests.post(f"{u}/v1/explain", json={"model": "m", "roi": "FFA-1"}, timeout=30)
            assert r.status_code == (200 if score_ok else 422), (value, r.text)
            assert score_ok or r.json()["error"].startswith("model:"), (value, r.text)
    with _serve(_Backend(3e38)) as u:  # finite in float32: answered
        r = requests.post(f"{u}/v1/encode", json={"subject": "subj01", "embedding": [0.5] * 4, "format": "list"},
                          timeout=30)
        assert r.status_code == 200 and r.json()["lh"] == [[pytest.approx(3e38)] * 4]


def test_booleans_strings_and_out_of_range_values_are_not_numbers():
    """JSON true/false (a Python bool is an int), strings (numpy reads "1.5" as a float) and values beyond
    float32 (inf once read) are refused, naming the field; numbers and encoded arrays are read."""
    from brainstore.serving import ServingError, decode_array

    for bad, words in (([True, False, True], "true, false"), ([[1.0, True]], "true, false"), (["1.5"], "strings"),
                       ([1.0, None], "null"), ([1e39], "beyond float32's range"), ([10 ** 400], "list of numbers"),
                       ({"dtype": "float64", "shape": [1], "data_b64": base64.b64encode(np.array([1e39], "<f8")
                                                                                       .tobytes()).decode()},
                        "beyond float32's range")):
        with pytest.raises(ServingError, match=words) as e:
            decode_array(bad, "embedding", 1000)
        assert e.value.status == 422 and e.value.message.startswith("embedding")
    np.testing.assert_array_equal(decode_array([[1, 2.5], [3, 4]], "x", 10), [[1, 2.5], [3, 4]])
    with pytest.raises(ServingError, match="unknown key"):
        decode_array({**_b64(np.ones(2)), "extra": 1}, "embedding", 10)
    with _serve(_Backend()) as u:
        r = requests.post(f"{u}/v1/encode", json={"subject": "subj01", "embedding": [True, False] * 192}, timeout=30)
        assert r.status_code == 422 and "embedding" in r.json()["error"] and "true, false" in r.json()["error"]


def test_a_body_of_another_type_is_415_naming_the_accepted_ones():
    """text/plain (even holding JSON), a form (curl -d) or npy where JSON is read: 415 with the accepted types;
    a body sent without any Content-Type is read as JSON."""
    body = json.dumps({"subject": "subj01", "embedding": [0.5] * 4})
    backend = _Backend()
    with _serve(backend) as u:
        for route, ctype, accepted in (
                ("/v1/encode", "text/plain", "application/json or multipart/form-data"),
                ("/v1/encode", "application/x-npy", "application/json or multipart/form-data"),
                ("/v1/decode", "text/plain; charset=utf-8", "application/json or application/x-npy"),
                ("/v1/decode", "multipart/form-data; boundary=x", "application/json or application/x-npy"),
                ("/v1/explain", "application/x-www-form-urlencoded", "application/json (curl -d sends")):
            r = requests.post(f"{u}{route}", data=body, headers={"Content-Type": ctype}, timeout=30)
            assert r.status_code == 415, (route, ctype, r.text)
            assert accepted in r.json()["error"] and ctype.split(";")[0] in r.json()["error"], r.text
            assert r.headers["accept-post"].startswith("application/json")
        assert backend.calls == []  # none reached the backend
        r = requests.post(f"{u}/v1/encode", data=body.encode(), timeout=30)  # no Content-Type at all
        assert r.request.headers.get("content-type") is None and r.status_code == 200, r.text


def test_tokens_blank_or_short_are_refused_and_the_scheme_is_case_insensitive():
    from brainstore.serving import check_token, make_app

    for bad in ("", "   ", "\t\n", "x", "a" * 15, "has spaces inside it", "token-with-newline\n", "quote\"quote\"quote"):
        with pytest.raises(ValueError, match=r"secrets\.token_urlsafe\(32\)") as e:
            check_token(bad, "$BRAINSTORE_TOKEN")
        assert e.value.args[0].startswith("$BRAINSTORE_TOKEN") and "\n" not in e.value.args[0]
        with pytest.raises(ValueError):
            make_app(_Backend(), token=bad)
    assert check_token(None) is None and check_token("A" * 16) == "A" * 16
    with _serve(_Backend(), token=TOKEN) as u:
        def status(header):
            return requests.get(f"{u}/v1/models", headers={"Authorization": header} if header is not None else {},
                                timeout=30).status_code

        for ok in (f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer   {TOKEN}", f"Bearer {TOKEN} "):
            assert status(ok) == 200, ok
        for refused in (None, "", "Bearer", "Bearer    ", f"Basic {TOKEN}", TOKEN, f"Bearer {TOKEN}x",
                        f"Bearer {TOKEN[:-1]}", f"Bearer{TOKEN}"):
            assert status(refused) == 401, refused


def test_unknown_routes_and_methods_answer_the_error_body():
    with _serve(_Backend()) as u:
        r = requests.get(f"{u}/v2/encode", timeout=30)
        assert r.status_code == 404 and "/v1/encode" in r.json()["error"]
        r = requests.put(f"{u}/v1/encode", json={}, timeout=30)
        assert r.status_code == 405 and r.json() == {"error": "PUT is not allowed on /v1/encode"}
        assert r.headers["allow"] == "POST"


def test_an_unreachable_registry_or_store_is_503_with_retry_after_in_words_of_ours():
    """obstore's and LanceDB's errors (Rust debug dumps with source paths), OS errors and timeouts, raised
    directly or wrapped in our errors, are 503 + Retry-After with one line of ours; a fault of the service's
    own code is a 500 that keeps the library text out too."""
    from obstore.exceptions import GenericError

    from brainstore.fitting import RegistryError

    rust = ('Generic S3 error: Error performing GET http://127.0.0.1:9/b?list-type=2 after 10 retries - HTTP error: '
            'error sending request\n\nDebug source:\nGeneric {\n    store: "S3",\n  source: ConnectError("tcp connect '
            'error", Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }) }, location: Location '
            '{ file: "/root/.cargo/registry/src/lance-io-13.0.0/src/object_store.rs", line: 1506 }')

    def wrapped() -> Exception:
        try:
            try:
                raise GenericError(rust)
            except GenericError:
                raise RegistryError("model registry s3://b/models: cannot list objects (Generic S3 error)") from None
        except RegistryError as e:
            return e

    cases = [(GenericError(rust), "connection refused"), (ValueError(f"Invalid input, {rust}"), "connection refused"),
             (wrapped(), "connection refused"), (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
             (TimeoutError("read timed out"), "timed out"), (OSError(5, "Input/output error"), "input/output error")]
    for fail, why in cases:
        with _serve(_Backend(fail=fail)) as u:
            for method, route, kw in (("get", "/readyz", {}), ("get", "/v1/models", {}),
                                      ("post", "/v1/encode", {"json": {"subject": "subj01", "embedding": [1.0]}}),
                                      ("post", "/v1/decode", {"json": {"subject": "subj01", "responses": [1.0]}}),
                                      ("post", "/v1/explain", {"json": {"model": "m", "roi": "r"}})):
                r = getattr(requests, method)(f"{u}{route}", timeout=30, **kw)
                assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, (fail, route, r.status_code, r.text)
                msg = r.json()["error"]
                assert why in msg and "unavailable" in msg and "retry" in msg, msg
                assert "\n" not in msg and ".rs" not in msg and "Debug" not in msg and "cargo" not in msg, msg
    with _serve(_Backend(fail=TypeError("unsupported operand at src/lib.rs:3"))) as u:
        r = requests.get(f"{u}/v1/models", timeout=30)
        assert r.status_code == 500 and r.json() == {"error": "internal error (TypeError); the service's log has "
                                                             "the details"}


# ------------------------------------------------------------------------------------- with the real models
@pytest.mark.slow
def test_huge_embeddings_are_422_never_a_500_or_an_infinite_answer(served):
    """The issue's requests: embeddings of 1e6 and 3e38 (finite float32 inputs), as lists and b64, with lists
    and b64 answers: a 200 holding finite numbers, or 422 naming the embedding; 3e38 overflows any answer
    of this model (its answer to 1e30 is above 1e30), so it is 422."""
    from brainstore.features import FeatureStore

    u = served["url"]
    dim = FeatureStore(served["store"], create=False).info(served["img"]).dim
    got = requests.post(f"{u}/v1/encode", json={"subject": "subj01", "model": "img", "embedding": [1e30] * dim,
                                                "format": "list"}, timeout=60)
    assert got.status_code == 200 and np.abs(np.array(got.json()["lh"])).max() > 1e30
    for value in (1e6, 3e38):
        for send in ("list", "b64"):
            emb = [value] * dim if send == "list" else _b64(np.full(dim, value))
            for fmt in ("list", "b64"):
                r = requests.post(f"{u}/v1/encode", json={"subject": "subj01", "model": "img", "embedding": emb,
                                                          "format": fmt}, timeout=60)
                if value == 3e38:
                    assert r.status_code == 422, (value, send, fmt, r.status_code, r.text[:300])
                if r.status_code == 422:
                    assert r.json()["error"].startswith("embedding:") and "non-finite" in r.json()["error"], r.text
                else:
                    assert r.status_code == 200, r.text[:300]
                    lh = np.array(r.json()["lh"]) if fmt == "list" else _arr(r.json()["lh"])
                    assert np.isfinite(lh).all()


@pytest.mark.slow
def test_the_librarys_non_finite_error_is_422_naming_the_field(served, monkeypatch):
    """A model that raises fitting.NonFiniteOutputError (the library's check) is answered 422 naming the
    request's field and the rows, for encode (embedding, stimulus_id) and decode (responses)."""
    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting import Decoder, EncodingModel, NonFiniteOutputError

    def overflow(self, *a, **k):
        raise NonFiniteOutputError("input: overflow", field="input", rows=[0, 2])

    sid = AlgonautsDataset(served["data"]).stimuli().column("stimulus_id")[0].as_py()
    n_vox = Decoder.load(served["registry"], f"decoder-ridge-{served['txt']}/subj01").n_voxels
    monkeypatch.setattr(EncodingModel, "predict", overflow)
    monkeypatch.setattr(Decoder, "decode", overflow)
    u = served["url"]
    for body, field in (({"embedding": [0.1] * 32}, "embedding"), ({"stimulus_id": sid}, "stimulus_id")):
        r = requests.post(f"{u}/v1/encode", json={"subject": "subj01", "model": "img", **body}, timeout=60)
        assert r.status_code == 422 and r.json()["error"].startswith(f"{field}:"), r.text
        assert "row(s) 0, 2" in r.json()["error"]
    r = requests.post(f"{u}/v1/decode", json={"subject": "subj01", "responses": [0.5] * n_vox}, timeout=60)
    assert r.status_code == 422 and r.json()["error"].startswith("responses:") and "row(s) 0, 2" in r.json()["error"]


@pytest.mark.slow
def test_decode_takes_responses_per_hemisphere(served):
    """{"lh": ..., "rh": ...} (as /v1/encode answers) is the decoder's voxels of each hemisphere, joined in its
    order: the same answer as one array, lh then rh; a part of the wrong length is refused naming it and the
    count expected."""
    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting import Decoder
    from brainstore.fitting import response_matrix

    u, txt = served["url"], served["txt"]
    dec = Decoder.load(served["registry"], f"decoder-ridge-{txt}/subj02")
    R = response_matrix(AlgonautsDataset(served["data"]), "subj02", "test", dec.voxels)[:2]
    n_lh = len(dec.voxels["lh"])
    whole = requests.post(f"{u}/v1/decode", json={"subject": "subj02", "responses": _b64(R), "top_k": 4},
                          timeout=60).json()
    parts = requests.post(f"{u}/v1/decode", json={"subject": "subj02", "top_k": 4, "responses": {
        "rh": R[:, n_lh:].tolist(), "lh": _b64(R[:, :n_lh])}}, timeout=60)
    assert parts.status_code == 200, parts.text
    assert parts.json()["results"] == whole["results"]
    r = requests.post(f"{u}/v1/decode", json={"subject": "subj02", "responses": {"lh": R[:, :n_lh - 1].tolist(),
                                                                                "rh": R[:, n_lh:].tolist()}}, timeout=60)
    assert r.status_code == 422 and r.json()["error"].startswith("responses.lh has") and f"reads {n_lh} lh" in \
        r.json()["error"], r.text
    r = requests.post(f"{u}/v1/decode", json={"subject": "subj02", "responses": {"lh": R[:, :n_lh].tolist()}},
                      timeout=60)
    assert r.status_code == 422 and "missing rh" in r.json()["error"], r.text


# ------------------------------------------------------------------------------------- a registry that goes away
class _Moto:
    """moto's S3 server on a fixed loopback port that can be stopped and started again (its objects live in
    memory: ``fill`` puts them back after each start, as a store that comes back with its data would)."""

    BUCKET = "brainstore-outage"

    def __init__(self, fill):
        import boto3

        from brainstore.serving import free_port

        self.port, self.fill, self.proc = free_port(), fill, None
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="test",
                                   aws_secret_access_key="test", region_name="us-east-1")
        self.options = {"aws_endpoint": self.endpoint, "aws_access_key_id": "test", "aws_secret_access_key": "test",
                        "aws_region": "us-east-1", "allow_http": True}

    def start(self) -> None:
        import subprocess
        import sys
        import time

        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(150):
            try:
                self.client.create_bucket(Bucket=self.BUCKET)
                break
            except Exception:  # not listening yet
                if self.proc.poll() is not None:
                    raise AssertionError(f"moto server exited ({self.proc.returncode}) on port {self.port}")
                time.sleep(0.2)
        else:
            raise AssertionError("moto server did not start")
        self.fill(self)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("remote", ["registry", "store"])
def test_a_stopped_object_store_is_503_with_retry_after_and_the_service_recovers(served, monkeypatch, remote):
    """`serve --local --registry s3://...` (or `--store s3://...`): with the object store stopped, /readyz and
    an encode that needs the store are 503 + Retry-After with one line of ours naming it (no library text);
    once the store is back (same port, same objects), the same server answers 200 again, no restart."""
    import time
    from pathlib import Path

    pytest.importorskip("boto3")
    from brainstore._storage import ENV
    from brainstore.datasets import AlgonautsDataset
    from brainstore.serving import LocalBackend

    root = Path(served[remote])
    files = [f for f in root.rglob("*") if f.is_file() and not f.relative_to(root).parts[0].startswith(("_", "."))]

    def upload(moto):
        for f in files:
            moto.client.put_object(Bucket=moto.BUCKET, Key=f"{remote}/{f.relative_to(root).as_posix()}",
                                   Body=f.read_bytes())

    moto = _Moto(upload)
    moto.start()
    uri = f"s3://{moto.BUCKET}/{remote}"
    monkeypatch.setenv(ENV, json.dumps(moto.options))
    server = None
    try:
        backend = LocalBackend(uri) if remote == "registry" else LocalBackend(served["registry"], store=uri)
        server = _serve(backend)
        u = server.start()
        sid = AlgonautsDataset(served["data"]).stimuli().column("stimulus_id")[0].as_py()

        def encode(model):
            return requests.post(f"{u}/v1/encode", json={"subject": "subj01", "model": model, "stimulus_id": sid},
                                 timeout=120)

        r = requests.get(f"{u}/readyz", timeout=120)
        assert r.status_code == 200 and r.json()["models_checked"] == 6, r.text
        assert encode("img").status_code == 200

        moto.stop()
        what = "model registry" if remote == "registry" else "feature store"
        for r in (requests.get(f"{u}/readyz", timeout=120), encode("both")):  # "both" is not loaded yet
            assert r.status_code == 503 and int(r.headers["retry-after"]) > 0, (r.status_code, r.text)
            msg = r.json()["error"]
            assert msg.startswith(f"the {what} {uri} is unavailable (connection refused); retry"), msg
            assert "\n" not in msg and ".rs" not in msg and "Debug" not in msg and "retry_timeout" not in msg, msg
        assert requests.get(f"{u}/healthz", timeout=30).status_code == 200

        moto.start()  # back on the same port, with the same objects
        t0 = time.time()
        while requests.get(f"{u}/readyz", timeout=120).status_code != 200:
            assert time.time() - t0 < 60, "the service did not recover within 60 s of the store's return"
            time.sleep(1)
        assert encode("both").status_code == 200
        assert encode("img").status_code == 200
    finally:
        if server is not None:
            server.stop()
        moto.stop()
