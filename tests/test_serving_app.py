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

pytestmark = pytest.mark.slow

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


def test_decode_equals_the_offline_decoder_and_whole_store_search(served):
    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting import Decoder
    from brainstore.fitting._decoding import response_matrix, store_top_k

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


def test_a_token_guards_everything_but_healthz(served):
    from brainstore.serving import LocalBackend, LocalServer, make_app

    with LocalServer(make_app(LocalBackend(served["registry"]), token="s3cret")) as u:
        assert requests.get(f"{u}/healthz", timeout=10).status_code == 200
        for path in ("/readyz", "/v1/models", "/metrics"):
            r = requests.get(f"{u}{path}", timeout=10)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        assert requests.get(f"{u}/v1/models", headers={"Authorization": "Bearer wrong"}, timeout=10).status_code == 401
        assert requests.get(f"{u}/v1/models", headers={"Authorization": "Bearer s3cret"}, timeout=10).status_code == 200


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
        victim = sorted(reg.glob("*/*/model.safetensors"))[0]
        data = bytearray(victim.read_bytes())
        data[-1] ^= 0xFF
        victim.write_bytes(bytes(data))
        r = requests.get(f"{u}/readyz", timeout=60)
        assert r.status_code == 503, r.text
        name = victim.parent.relative_to(reg).as_posix()
        assert name in r.json()["error"] and "sha256" in r.json()["error"], r.text
        assert requests.get(f"{u}/healthz", timeout=10).status_code == 200
    finally:
        server.stop()
