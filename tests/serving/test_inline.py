"""Answers made on the event loop (``LocalBackend.encode_now`` / ``decode_now``): a warm request that needs only
memory and little work is answered where it lands, equal to the offline library's answer; anything that would
read the registry or a store, load a model, embed an image or take long goes to a worker thread."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests


@pytest.fixture()
def backend(serving_models):
    from brainstore.serving import LocalBackend

    return LocalBackend(serving_models["registry"])


def _stimuli(serving_models) -> list[str]:
    from brainstore.datasets import AlgonautsDataset

    return AlgonautsDataset(serving_models["data"]).stimuli().column("stimulus_id").to_pylist()


@pytest.mark.slow
def test_encode_now_answers_warm_requests_only_and_as_the_offline_library(serving_models, backend, monkeypatch):
    from brainstore.features import FeatureStore
    from brainstore.fitting import ModelRegistry, predict_model
    from brainstore.serving import _backend

    ids = _stimuli(serving_models)
    assert backend.encode_now("subj01", model="both", stimulus_id=ids[0]) is None  # nothing resolved or loaded yet
    backend.encode("subj01", model="both", stimulus_id=ids[0])  # (in a thread, in the app: the model loads)
    want = predict_model(ModelRegistry(serving_models["registry"]), "both", "subj01", None, ids[:3])
    got = backend.encode_now("subj01", model="both", stimulus_id=ids[:3])
    assert got is not None and got["model"] == "both"
    for h in ("lh", "rh"):
        np.testing.assert_array_equal(got["responses"][h], want[h])
    fs = FeatureStore(serving_models["store"], create=False)
    E = np.hstack([fs.load(serving_models["img"], ids[:2]), fs.load(serving_models["txt"], ids[:2])])
    got = backend.encode_now("subj01", model="both", embedding=E)  # embeddings sent: the model's dims, no store read
    np.testing.assert_allclose(got["responses"]["lh"], want["lh"][:2], rtol=1e-5, atol=1e-5)
    assert backend.encode_now("subj01", model="both", hemisphere="rh", stimulus_id=ids[1])["responses"].keys() == {"rh"}

    # not from memory, or not little: None (the app then runs encode in a worker thread)
    assert backend.encode_now("subj01", model="img", stimulus_id=ids[0]) is None  # another model, not loaded
    assert backend.encode_now("subj02", model="both", stimulus_id=ids[0]) is None  # another subject's model
    assert backend.encode_now("subj01", model="both", stimulus_id="not-a-stored-id") is None  # a store read
    assert backend.encode_now("subj01", model="both", stimulus_id=[ids[0], 7]) is None  # refused by encode
    assert backend.encode_now("subj01", model="both", stimulus_id=ids[0], roi="FFA-1") is None
    assert backend.encode_now("subj01", model="both", image=b"\x89PNG") is None
    assert backend.encode_now("subj01", model="both@7", stimulus_id=ids[0]) is None  # a version never resolved
    monkeypatch.setattr(_backend, "INLINE_WORK", 10)
    assert backend.encode_now("subj01", model="both", stimulus_id=ids[0]) is None  # more work than allowed
    monkeypatch.undo()
    # another thread holds the backend's lock (loading a model, an extractor, a dataset): not waited for
    held, release = threading.Event(), threading.Event()

    def holder():
        with backend._lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    held.wait(10)
    try:
        t0 = time.perf_counter()
        assert backend.encode_now("subj01", model="both", stimulus_id=ids[0]) is None
        assert time.perf_counter() - t0 < 0.5
    finally:
        release.set()
        t.join()
    assert backend.encode_now("subj01", model="both", stimulus_id=ids[0]) is not None
    # a refusal that needs no registry read is raised at once, as encode raises it
    with pytest.raises(Exception, match="unknown subject"):
        backend.encode_now("nobody", stimulus_id=ids[0])


@pytest.mark.slow
def test_decode_now_answers_from_memory_only_and_as_the_whole_table_search(serving_models, backend, monkeypatch):
    from brainstore.datasets import AlgonautsDataset
    from brainstore.fitting import Decoder, response_matrix, store_top_k
    from brainstore.serving import _backend

    txt = serving_models["txt"]
    dec = Decoder.load(serving_models["registry"], f"decoder-ridge-{txt}/subj01")
    R = response_matrix(AlgonautsDataset(serving_models["data"]), "subj01", "test", dec.voxels)[:2]
    assert backend.decode_now("subj01", R, top_k=3) is None  # nothing loaded, no candidates in memory
    backend.decode("subj01", R, top_k=3)
    got = backend.decode_now("subj01", R, top_k=3, return_embedding=True)
    ids, sims = store_top_k(dec.store, txt, dec.decode(R), 3)  # LanceDB's search of the whole table
    assert got is not None and [[x["stimulus_id"] for x in row] for row in got["results"]] == ids
    np.testing.assert_allclose([[x["score"] for x in row] for row in got["results"]], sims, rtol=1e-5)
    np.testing.assert_allclose(got["embedding"], dec.decode(R), rtol=1e-5, atol=1e-6)

    half = R.shape[1] // 2  # (a split into lh and rh that the thread path would check against the dataset)
    assert backend.decode_now("subj01", {"lh": R[:, :half], "rh": R[:, half:]}) is None
    index = next(iter(backend._indexes.values()))
    checks = []
    version = index.fs.version
    monkeypatch.setattr(index.fs, "version", lambda t: (checks.append(threading.current_thread().name), version(t))[1])
    # its version due for a check (once: with refresh_s 0 every search would be due, the answer's own search too),
    # made in a background thread
    monkeypatch.setattr(index, "_checked", index._checked - index.refresh_s)
    assert backend.decode_now("subj01", R, top_k=3)["results"] == got["results"]
    for _ in range(100):
        if checks:
            break
        time.sleep(0.05)
    assert checks[:1] == ["brainstore-index"] and index.loads == 1  # checked there; the same version: not reloaded
    monkeypatch.undo()
    monkeypatch.setattr(_backend, "INLINE_WORK", 10)
    assert backend.decode_now("subj01", R) is None
    monkeypatch.undo()
    from brainstore.serving import LocalBackend

    big = LocalBackend(serving_models["registry"], max_memory_rows=10)  # candidates searched by LanceDB
    big.decode("subj01", R, top_k=3)
    assert big.decode_now("subj01", R, top_k=3) is None


@pytest.mark.slow
def test_the_app_answers_warm_requests_on_its_event_loop_and_cold_ones_in_a_worker_thread(serving_models,
                                                                                        backend):
    from brainstore.serving import LocalServer, make_app

    where = []
    for name in ("encode_now", "encode"):
        method = getattr(backend, name)

        def recorded(*a, _method=method, _name=name, **kw):
            out = None
            try:
                out = _method(*a, **kw)
                return out
            finally:  # (a refusal raised is recorded too)
                where.append((_name, threading.current_thread().name, out is not None))

        setattr(backend, name, recorded)
    ids = _stimuli(serving_models)
    with LocalServer(make_app(backend)) as u:
        loop = next(t.name for t in threading.enumerate() if t.name == "brainstore-uvicorn")
        for sid in ids[:3]:
            r = requests.post(f"{u}/v1/encode", json={"subject": "subj02", "model": "img", "stimulus_id": sid},
                              timeout=60)
            assert r.status_code == 200, r.text
        r = requests.post(f"{u}/v1/encode", json={"subject": "subj02", "model": "img", "stimulus_id": "gone-1"},
                          timeout=60)
        assert r.status_code == 404 and "gone-1" in r.json()["error"]
    first, warm, gone = where[:2], where[2:4], where[4:]
    assert first[0] == ("encode_now", loop, False) and first[1][0] == "encode" and first[1][1] != loop, \
        f"the first request loads the model: in a worker thread ({first})"
    assert warm == [("encode_now", loop, True)] * 2, f"warm requests are answered on the event loop ({warm})"
    assert gone[0] == ("encode_now", loop, False) and gone[1][:2] == ("encode", gone[1][1]) and gone[1][1] != loop, \
        f"an id the model does not hold in memory is looked up in a worker thread ({gone})"
