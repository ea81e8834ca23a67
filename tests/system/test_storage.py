"""The feature store on object storage: a local S3-compatible server (moto's, on 127.0.0.1) holds a
store that the real extraction pipeline writes and that reads back equal to the same extraction on
local disk; storage options come from $BRAINSTORE_STORAGE_OPTIONS (JSON or a file) and code, and an
unknown key (which LanceDB would ignore silently) is an error naming it and the nearest known keys."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from brainstore._storage import ENV, storage_options
from brainstore.datasets import AlgonautsDataset
from brainstore.features import FeatureStore, FeatureStoreError

BUCKET = "brainstore-test"


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a free loopback port, with one bucket; stopped after the module."""
    boto3 = pytest.importorskip("boto3")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                              region_name="us-east-1")
        for _ in range(150):
            try:
                client.create_bucket(Bucket=BUCKET)
                break
            except Exception:  # not listening yet
                time.sleep(0.2)
        else:
            raise AssertionError("moto server did not start")
        yield {"endpoint": endpoint, "client": client,
               "options": {"aws_endpoint": endpoint, "aws_access_key_id": "test", "aws_secret_access_key": "test",
                           "aws_region": "us-east-1", "allow_http": True}}
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_unknown_option_keys_are_refused_with_the_nearest_known_ones(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(FeatureStoreError, match=r"'endpiont' \(did you mean endpoint"):
        FeatureStore("s3://bucket/features", {"endpiont": "http://127.0.0.1:9"})
    monkeypatch.setenv(ENV, '{"aws_regoin": "eu-west-1"}')
    with pytest.raises(FeatureStoreError, match=rf"in \${ENV}.*'aws_regoin' \(did you mean aws_region"):
        FeatureStore("s3://bucket/features")
    monkeypatch.setenv(ENV, "{not json")
    with pytest.raises(FeatureStoreError, match=f"{ENV} is not a JSON object"):
        FeatureStore("s3://bucket/features")
    cfg = tmp_path / "storage.yaml"
    cfg.write_text("aws_endpoint: http://127.0.0.1:9\nallow_http: true\n")
    monkeypatch.setenv(ENV, str(cfg))
    assert storage_options("s3://bucket/x", {"aws_region": "us-east-1"}) == {
        "aws_endpoint": "http://127.0.0.1:9", "allow_http": "true", "aws_region": "us-east-1"}
    assert storage_options(tmp_path / "local") is None  # local folders take no object-store options
    monkeypatch.setenv(ENV, str(tmp_path / "missing.yaml"))
    with pytest.raises(FeatureStoreError, match="missing.yaml.*no such file"):
        FeatureStore("s3://bucket/features")


@pytest.mark.slow
def test_extraction_into_s3_equals_local_disk(s3_server, small_dataset, tmp_path, monkeypatch, ray_local):
    from brainstore.features import extract

    monkeypatch.setenv(ENV, json.dumps(s3_server["options"]))
    uri = f"s3://{BUCKET}/features"
    remote = extract(small_dataset, "text", uri, progress=False)
    local = extract(small_dataset, "text", str(tmp_path / "store"), progress=False)
    assert remote.feature == local.feature and remote.failed == local.failed == [] and remote.written == remote.requested > 0
    keys = [o["Key"] for o in s3_server["client"].list_objects_v2(Bucket=BUCKET, Prefix="features/")["Contents"]]
    assert any(k.startswith(f"features/{remote.feature}.lance/") for k in keys)  # really on the S3 server

    fs_r, fs_l = FeatureStore(uri, create=False), FeatureStore(tmp_path / "store", create=False)
    ids = sorted(fs_l.ids(local.feature))
    assert sorted(fs_r.ids(remote.feature)) == ids
    np.testing.assert_allclose(fs_r.load(remote.feature, ids), fs_l.load(local.feature, ids), rtol=1e-5, atol=1e-6)
    assert fs_r.metadata(remote.feature)["weights_sha256"] == fs_l.metadata(local.feature)["weights_sha256"]
    again = extract(small_dataset, "text", uri, progress=False)  # a rerun finds every row there: no duplicates
    assert again.written == 0 and len(fs_r.ids(remote.feature)) == len(ids)


# ---------------------------------------------------------------------------------------------- registry
def _s3_registry(s3_server, prefix: str):
    from brainstore.fitting import ModelRegistry

    return ModelRegistry(f"s3://{BUCKET}/{prefix}", storage_options=s3_server["options"])


def test_registry_on_s3_saves_loads_lists_and_deletes_like_a_folder(s3_server, tmp_path, monkeypatch):
    import safetensors.numpy

    from brainstore.fitting import ModelRegistry, RegistryError

    monkeypatch.delenv(ENV, raising=False)
    reg, local = _s3_registry(s3_server, "reg-basic"), ModelRegistry(tmp_path / "reg")
    rng = np.random.default_rng(0)
    w = {"coef": rng.standard_normal((5, 3)).astype(np.float32), "alpha": np.array([1.0, 10.0])}
    for r in (reg, local):
        r.save("ridge/subj01", w, {"kind": "ridge", "subject": "subj01"})
        r.save("ridge/subj02", w, {"kind": "ridge", "subject": "subj02"})
    assert reg.names() == local.names() == ["ridge/subj01", "ridge/subj02"]
    tensors, rec = reg.load_arrays("ridge/subj01")
    np.testing.assert_array_equal(tensors["coef"], w["coef"])
    assert rec.meta["safetensors_sha256"] == local.record("ridge/subj01").meta["safetensors_sha256"]
    assert rec.path == f"s3://{BUCKET}/reg-basic/ridge/subj01/@1" and rec.version == 1
    # the objects are there, in the local layout, and the weights read back with safetensors alone
    client = s3_server["client"]
    body = client.get_object(Bucket=BUCKET, Key="reg-basic/ridge/subj01/@1/model.safetensors")["Body"].read()
    np.testing.assert_array_equal(safetensors.numpy.load(body)["coef"], w["coef"])
    assert json.loads(client.get_object(Bucket=BUCKET, Key="reg-basic/ridge/subj01/@1/model.json")["Body"].read())[
        "subject"] == "subj01"
    with pytest.raises(RegistryError, match="already exists"):
        reg.save("ridge/subj01", w, {}, new_version=False)
    with pytest.raises(RegistryError, match="cannot be nested"):
        reg.save("ridge/subj01/inner", w, {})
    with pytest.raises(RegistryError, match="holds other models"):
        reg.save("ridge", w, {})
    st1 = reg.stamp(reg.record("ridge/subj01"))
    v1_objects = {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read()
                  for k in ("reg-basic/ridge/subj01/@1/model.json", "reg-basic/ridge/subj01/@1/model.safetensors")}
    assert reg.save("ridge/subj01", {"coef": w["coef"] * 2}, {"kind": "ridge", "subject": "subj01"}).version == 2
    np.testing.assert_array_equal(reg.load_arrays("ridge/subj01")[0]["coef"], w["coef"] * 2)
    np.testing.assert_array_equal(reg.load_arrays("ridge/subj01@1")[0]["coef"], w["coef"])
    assert {k: client.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in v1_objects} == v1_objects  # immutable
    assert reg.stamp(reg.record("ridge/subj01")) != st1
    # aliases on object storage: the bare name follows champion; a stale compare-and-swap is refused
    reg.set_alias("ridge/subj01", "champion", 1, expect=None)
    assert reg.record("ridge/subj01").version == 1 and reg.record("ridge/subj01@latest").version == 2
    with pytest.raises(RegistryError, match="moved concurrently"):
        reg.set_alias("ridge/subj01", "champion", 2, expect=None)
    assert local.save("ridge/subj01", {"coef": w["coef"] * 2}, {"kind": "ridge", "subject": "subj01"}).version == 2
    assert [r.version for r in reg.versions("ridge/subj01")] == [r.version for r in local.versions("ridge/subj01")]
    # weights changed behind the registry's back: refused, naming the object
    client.put_object(Bucket=BUCKET, Key="reg-basic/ridge/subj02/@1/model.safetensors",
                      Body=safetensors.numpy.save({"coef": np.zeros((5, 3), np.float32)}))
    with pytest.raises(RegistryError, match=r"reg-basic/ridge/subj02/@1/model.safetensors changed since it was saved"):
        reg.load_arrays("ridge/subj02")
    reg.delete("ridge/subj02")
    assert reg.names() == ["ridge/subj01"] and not reg.exists("ridge/subj02")
    with pytest.raises(RegistryError, match="no model 'ridge/subj02'.*did you mean 'ridge/subj01'"):
        reg.load_arrays("ridge/subj02")
    # a reader never creates: an empty prefix is refused; unknown option keys are refused
    with pytest.raises(RegistryError, match="reg-nothing holds no model"):
        ModelRegistry(f"s3://{BUCKET}/reg-nothing", create=False, storage_options=s3_server["options"])
    with pytest.raises(RegistryError, match=r"'aws_endpiont' \(did you mean aws_endpoint"):
        ModelRegistry(f"s3://{BUCKET}/reg-basic", storage_options={"aws_endpiont": "http://127.0.0.1:9"})


def test_service_announcements_on_s3_are_listed_while_fresh(s3_server, monkeypatch):
    """Services announce themselves under _services/ of an S3 registry as in a folder: listed while fresh, not
    models, gone when withdrawn."""
    monkeypatch.delenv(ENV, raising=False)
    reg = _s3_registry(s3_server, "reg-services")
    reg.save("ridge/subj01", {"w": np.zeros(3, np.float32)}, {"kind": "ridge", "subject": "subj01"})
    reg.announce("svc-1", {"url": "http://127.0.0.1:8000", "models": ["ridge/subj01@1"]})
    keys = [o["Key"] for o in s3_server["client"].list_objects_v2(Bucket=BUCKET, Prefix="reg-services/_services/")
            .get("Contents", [])]
    assert keys == ["reg-services/_services/svc-1.json"]
    [svc] = _s3_registry(s3_server, "reg-services").services()
    assert svc["models"] == ["ridge/subj01@1"] and svc["age_s"] < 30 and reg.names() == ["ridge/subj01"]
    assert reg.services(now=time.time() + 60) == []
    assert reg.withdraw("svc-1") and reg.services(max_age_s=None) == []


def test_concurrent_writers_of_one_s3_table_and_one_s3_model_are_serialized(s3_server, monkeypatch):
    """Two writers adding overlapping ids to one table on S3 at once: every id stored exactly once (the
    table lock is an object created with a conditional PUT); a lock held by another writer times out
    with an error naming it."""
    import threading

    import obstore

    from brainstore._storage import object_store

    monkeypatch.setenv(ENV, json.dumps(s3_server["options"]))
    uri = f"s3://{BUCKET}/concurrent"
    FeatureStore(uri).ensure_table("t", 4, {"extractor": "test"})
    ids = [f"s{i:03d}" for i in range(60)]
    emb = np.arange(60 * 4, dtype=np.float32).reshape(60, 4)
    errors = []

    def writer(order):
        try:
            fs = FeatureStore(uri)
            for lo in range(0, 60, 10):
                sel = order[lo:lo + 10]
                fs.write("t", [ids[i] for i in sel], emb[sel], dataset="d", split="train")
        except Exception as e:  # reported below
            errors.append(e)

    a = list(range(60))
    b = a[::-1]
    threads = [threading.Thread(target=writer, args=(o,)) for o in (a, b, a[30:] + a[:30])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    fs = FeatureStore(uri, create=False)
    got = fs.ids("t")
    assert sorted(got) == ids and len(got) == 60
    np.testing.assert_array_equal(fs.load("t", ids), emb)

    store = object_store(uri)
    obstore.put(store, "_brainstore_locks/t.lock", b'{"host": "elsewhere", "pid": 7}')
    with pytest.raises(FeatureStoreError, match=r"another writer \(elsewhere, pid 7\) has held the lock "
                                                r"s3://brainstore-test/concurrent/_brainstore_locks/t.lock"):
        FeatureStore(uri, lock_timeout=0.5).write("t", ["new"], emb[:1], dataset="d", split="train")
    obstore.delete(store, "_brainstore_locks/t.lock")


@pytest.mark.slow
def test_extract_fit_predict_and_serve_on_s3_equal_local_disk(s3_server, small_dataset, tmp_path, monkeypatch,
                                                              ray_local):
    """Store and registry on s3:// (options set after the session's Ray started: they reach the tasks through
    their jobs), the same results as on local disk: registered weights, test predictions, decoders, and the
    serving backend reading both from the URIs."""
    from brainstore.features import extract
    from brainstore.fitting import FitSpec, ModelRegistry, fit_decoders, fit_encoding_models, predict_model, \
        subject_stimuli
    from brainstore.serving import LocalBackend

    monkeypatch.setenv(ENV, json.dumps(s3_server["options"]))
    monkeypatch.setenv("BRAINSTORE_HOME", str(tmp_path / "home"))
    runs = {}
    for where, store, registry in (("s3", f"s3://{BUCKET}/e2e/features", f"s3://{BUCKET}/e2e/models"),
                                   ("local", str(tmp_path / "features"), str(tmp_path / "models"))):
        txt = extract(small_dataset, "text", store, progress=False).feature
        spec = FitSpec(dataset=str(small_dataset), alphas=[1.0, 100.0, 10000.0], folds=3,
                       models=[{"name": "txt", "features": [txt]}])
        run = fit_encoding_models(spec, store=store, registry=registry, progress=False)
        assert not run.failures, run.failures
        drun = fit_decoders(small_dataset, txt, store=store, registry=registry, progress=False)
        assert not drun.failures, drun.failures
        runs[where] = (store, registry, txt, run, drun)
    assert str(runs["s3"][3].run_dir).startswith(str(tmp_path / "home" / "runs"))  # run folders stay local
    keys = [o["Key"] for o in s3_server["client"].list_objects_v2(Bucket=BUCKET, Prefix="e2e/models/")["Contents"]]
    assert "e2e/models/txt/subj01/@1/model.safetensors" in keys

    (s_store, s_reg, txt, s_run, s_drun), (l_store, l_reg, _, l_run, l_drun) = runs["s3"], runs["local"]
    reg_s, reg_l = ModelRegistry(s_reg, create=False), ModelRegistry(l_reg, create=False)
    assert reg_s.names() == reg_l.names()
    for name in reg_l.names():
        ws, wl = reg_s.load_arrays(name)[0], reg_l.load_arrays(name)[0]
        assert ws.keys() == wl.keys()
        for k in wl:
            np.testing.assert_allclose(ws[k], wl[k], rtol=1e-5, atol=1e-6, err_msg=f"{name} {k}")
    for s in ("subj01", "subj02"):
        ids = subject_stimuli(AlgonautsDataset(small_dataset), s, "test")
        ps, pl = predict_model(reg_s, "txt", s, None, ids), predict_model(reg_l, "txt", s, None, ids)
        for h in ("lh", "rh"):
            np.testing.assert_allclose(ps[h], pl[h], rtol=1e-4, atol=1e-5)
    assert s_drun.metrics.keys() == l_drun.metrics.keys()

    backend = LocalBackend(s_reg)
    ready = backend.ready()  # every model's weights hash and feature tables, read from S3
    assert ready["stores"] == [s_store] and ready["models_checked"] == len(reg_s.names())
    sid = subject_stimuli(AlgonautsDataset(small_dataset), "subj01", "test")[:2]
    got = backend.encode("subj01", model="txt", stimulus_id=sid)
    ref = predict_model(reg_l, "txt", "subj01", None, sid)
    np.testing.assert_allclose(got["responses"]["lh"], ref["lh"], rtol=1e-4, atol=1e-5)


def test_cli_storage_option_flags_reach_the_registry_and_bad_ones_are_one_line_errors(s3_server, tmp_path):
    """``brainstore -S KEY=VALUE`` / ``--storage-config FILE`` feed the same options as the variable."""
    import os

    env = {k: v for k, v in os.environ.items() if k != ENV}
    _s3_registry(s3_server, "reg-cli").save("m/subj01", {"w": np.ones(3, np.float32)}, {"kind": "ridge"})
    flags = [x for k, v in s3_server["options"].items() for x in ("-S", f"{k}={v}")]
    cli = [sys.executable, "-m", "brainstore.cluster.cli"]
    r = subprocess.run([*cli, *flags, "models", "--registry", f"s3://{BUCKET}/reg-cli", "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr + r.stdout
    assert [m["name"] for m in json.loads(r.stdout)] == ["m/subj01"]
    cfg = tmp_path / "s3.yaml"
    cfg.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in s3_server["options"].items()) + "\n")
    r = subprocess.run([*cli, "--storage-config", str(cfg), "models", "--registry", f"s3://{BUCKET}/reg-cli", "--json"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and json.loads(r.stdout)[0]["name"] == "m/subj01", r.stderr + r.stdout
    for bad, msg in ((["-S", "aws_endpiont=http://x"], "'aws_endpiont' (did you mean aws_endpoint"),
                     (["-S", "novalue"], "--storage-option 'novalue': expected KEY=VALUE"),
                     (["--storage-config", str(tmp_path / "nope.yaml")], "nope.yaml does not exist")):
        r = subprocess.run([*cli, *bad, "models", "--registry", f"s3://{BUCKET}/reg-cli"], capture_output=True,
                           text=True, env=env, timeout=120)
        out = " ".join((r.stdout + r.stderr).split())
        assert r.returncode == 2 and msg in out and "Traceback" not in out, out


# ---------------------------------------------------------------------------------------------- outages
class _StoppableS3:
    """A moto S3 server in this process that goes away and comes back on the same port with its objects.

    ``stop()`` closes the listening socket and every open connection, so clients meet "connection
    refused" (as when an object store process dies); ``start()`` listens again. moto keeps its buckets
    and objects in this process, so what was written before the outage is there after it: the come-back
    is real. ``stop_on(test)`` stops the server instead of answering the first request for which
    ``test(method, path, body)`` is true (an outage at a chosen point of a writer's protocol).
    """

    def __init__(self):
        import logging
        import threading

        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log lines
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._app = DomainDispatcherApplication(create_backend_app)
        self._conns, self._guard, self._test, self.server = set(), threading.Lock(), None, None
        outer = self

        class Handler(MotoRequestHandler):
            def setup(self):
                super().setup()
                with outer._guard:
                    outer._conns.add(self.connection)

            def finish(self):
                with outer._guard:
                    outer._conns.discard(self.connection)
                try:
                    super().finish()
                except OSError:  # the connection was cut by stop()
                    pass

        self._handler = Handler

    def _wsgi(self, environ, start_response):
        test = self._test
        if test is not None and test(environ["REQUEST_METHOD"], environ.get("PATH_INFO", ""), self._body(environ)):
            self._test = None
            self.stop()  # this request's connection included: the client gets no answer
            start_response("503 Service Unavailable", [("Content-Length", "0")])
            return [b""]
        return self._app(environ, start_response)

    @staticmethod
    def _body(environ) -> bytes:
        """The request's body (left readable for moto)."""
        import io

        n = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(n) if n else b""
        environ["wsgi.input"] = io.BytesIO(body)
        return body

    def start(self) -> "_StoppableS3":
        import threading

        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", self.port, self._wsgi, threaded=True, request_handler=self._handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        srv, self.server = self.server, None
        if srv is None:
            return
        srv.shutdown()
        srv.server_close()
        with self._guard:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def stop_on(self, test) -> None:
        self._test = test

    def client(self, service: str = "s3", **keys):
        import boto3

        return boto3.client(service, endpoint_url=self.endpoint, region_name="us-east-1",
                            **(keys or {"aws_access_key_id": "test", "aws_secret_access_key": "test"}))

    def options(self, **over) -> dict:
        return {"aws_endpoint": self.endpoint, "aws_access_key_id": "test", "aws_secret_access_key": "test",
                "aws_region": "us-east-1", "allow_http": "true", **over}


@pytest.fixture()
def stoppable_s3():
    pytest.importorskip("boto3")
    srv = _StoppableS3().start()
    srv.client().create_bucket(Bucket=BUCKET)
    yield srv
    srv.stop()


def _one_line_error(out: str, *words: str) -> str:
    """The CLI's output is one error line (wrapped by the console) with ``words``; no traceback, no Rust."""
    flat = " ".join(out.split())
    assert flat.startswith("error:") and flat.count("error:") == 1, out
    assert "Traceback" not in out and ".rs:" not in out and ".cargo" not in out and "Debug source" not in out, out
    for w in words:
        assert w in flat, (w, out)
    return flat


def _cli(args, options: dict | None, timeout: float = 300):
    import os

    env = {k: v for k, v in os.environ.items() if k != ENV}
    if options is not None:
        env[ENV] = json.dumps(options)
    return subprocess.run([sys.executable, "-m", "brainstore.cluster.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.mark.slow
def test_store_failures_are_one_line_naming_the_store_cause_and_fix(stoppable_s3, tmp_path):
    """A missing bucket, refused credentials (moto enforcing IAM auth: a real 403) and an endpoint nobody
    listens on: the library raises StoreAccessError (a FeatureStoreError) with one line naming the store,
    the cause and the fix, and the CLI prints just that line."""
    import requests

    from brainstore.features import StoreAccessError

    srv = stoppable_s3
    opts = srv.options()
    FeatureStore(f"s3://{BUCKET}/ok", opts).ensure_table("t", 4, {"extractor": "test"})

    with pytest.raises(StoreAccessError) as ei:
        FeatureStore("s3://no-such-bucket/features", opts).names()
    assert str(ei.value) == (f"feature store s3://no-such-bucket/features: bucket 'no-such-bucket' does not exist at "
                             f"{srv.endpoint}: create it (e.g. `aws s3 mb s3://no-such-bucket`) or check --store and "
                             "the endpoint (-S aws_endpoint=...)")
    r = _cli(["features", "--store", "s3://no-such-bucket/features"], opts, timeout=120)
    assert r.returncode == 2
    _one_line_error(r.stdout + r.stderr, "bucket 'no-such-bucket' does not exist", "aws s3 mb")

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(StoreAccessError, match=rf"^feature store s3://{BUCKET}/ok unreachable \(connection refused at "
                                               rf"{dead}\): start the object store, or check --store"):
        FeatureStore(f"s3://{BUCKET}/ok", srv.options(aws_endpoint=dead)).names()
    r = _cli(["features", "--store", f"s3://{BUCKET}/ok"], srv.options(aws_endpoint=dead), timeout=120)
    assert r.returncode == 2
    _one_line_error(r.stdout + r.stderr, f"unreachable (connection refused at {dead})")

    # moto checks signatures once IAM auth is on: a user with an access key may read, a wrong key or secret is 403
    iam = srv.client("iam")
    iam.create_user(UserName="reader")
    iam.put_user_policy(UserName="reader", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="reader")["AccessKey"]
    requests.post(f"{srv.endpoint}/moto-api/reset-auth", data=b"0", timeout=10).raise_for_status()
    try:
        good = srv.options(aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        assert FeatureStore(f"s3://{BUCKET}/ok", good).names() == ["t"]  # the control: auth is on and passes
        with pytest.raises(StoreAccessError, match=rf"^feature store s3://{BUCKET}/ok: access denied by "
                                                   rf"{srv.endpoint} \(InvalidAccessKeyId: .*\): check the credentials"):
            FeatureStore(f"s3://{BUCKET}/ok", srv.options(aws_access_key_id="AKIAWRONGWRONGWRONG")).names()
        with pytest.raises(StoreAccessError, match=r"access denied by .*\(SignatureDoesNotMatch: "):
            FeatureStore(f"s3://{BUCKET}/ok", {**good, "aws_secret_access_key": "wrong"}).ids("t")
        r = _cli(["features", "--store", f"s3://{BUCKET}/ok"], srv.options(aws_access_key_id="AKIAWRONGWRONGWRONG"),
                 timeout=120)
        assert r.returncode == 2
        _one_line_error(r.stdout + r.stderr, "access denied", "InvalidAccessKeyId", "aws_secret_access_key")
    finally:
        requests.post(f"{srv.endpoint}/moto-api/reset-auth", data=b"inf", timeout=10)


@pytest.mark.slow
def test_extraction_survives_the_store_going_away_and_resumes_when_it_returns(stoppable_s3, small_dataset):
    """`brainstore extract --store s3://...` with the object store stopping right after the 3rd chunk commit
    (at the release of the table's write lock, so the lock object stays behind): one error line naming the
    store, the cause and that a rerun resumes. A rerun while it is still down says so at once. Once the same
    server is back (same port, same objects), the rerun clears the lock left by the dead writer and ends with
    exactly one row per captioned stimulus of the dataset."""
    import lancedb
    import pyarrow.compute as pc

    from brainstore.datasets import open_stimuli

    srv = stoppable_s3
    uri, opts = f"s3://{BUCKET}/outage", srv.options()
    stim = open_stimuli(small_dataset)
    expected = set(stim.filter(pc.invert(pc.is_null(stim.column("caption")))).column("stimulus_id").to_pylist())
    assert len(expected) > 100
    args = ["extract", "--dataset", str(small_dataset), "--extractor", "text", "--store", uri, "--commit-every", "20",
            "--batch-size", "20"]
    releases = []

    def third_lock_release(method, path, body):  # obstore deletes with DeleteObjects: POST /bucket?delete
        if method in ("DELETE", "POST") and b"_brainstore_locks/" in body + path.encode():
            releases.append(path)
        return len(releases) == 3

    srv.stop_on(third_lock_release)
    r = _cli(args, opts)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    assert srv.server is None  # it really went away mid-run
    flat = _one_line_error(out, f"feature store {uri} unreachable (connection refused at {srv.endpoint})",
                           "start the object store", "extraction of 'text-all-minilm-l6-v2' stopped",
                           "the same command resumes")

    r = _cli(args, opts)  # still down: refused at once, nothing else said
    assert r.returncode == 2
    _one_line_error(r.stdout + r.stderr, f"unreachable (connection refused at {srv.endpoint})")

    srv.start()  # back, with what was committed before the outage
    keys = [o["Key"] for o in srv.client().list_objects_v2(Bucket=BUCKET, Prefix="outage/")["Contents"]]
    assert "outage/_brainstore_locks/text-all-minilm-l6-v2.lock" in keys  # left by the writer that lost the store
    table = lancedb.connect(uri, storage_options=opts).open_table("text-all-minilm-l6-v2")
    assert table.count_rows() == 60  # three commits of 20 rows survived the outage
    r = _cli(args, opts)
    assert r.returncode == 0, r.stdout + r.stderr
    flat = " ".join(r.stdout.split())
    assert f"{len(expected) - 60} written, 60 already stored" in flat, flat
    ids = lancedb.connect(uri, storage_options=opts).open_table("text-all-minilm-l6-v2").to_arrow() \
        .column("stimulus_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(expected) and set(ids) == expected  # exactly one row per stimulus
    keys = [o["Key"] for o in srv.client().list_objects_v2(Bucket=BUCKET, Prefix="outage/")["Contents"]]
    assert not any("_brainstore_locks/" in k for k in keys)


def test_a_storage_error_no_store_translated_reaches_the_user_without_its_rust_dump():
    """The CLI's last resort (cluster._errors.describe) keeps the library's sentence, not its debug dump."""
    from brainstore.cluster._errors import describe

    raw = RuntimeError("lance error: LanceError(IO): Generic S3 error: Error performing GET http://127.0.0.1:9/b in "
                       "371ms, after 3 retries - HTTP error: error sending request, /root/.cargo/registry/src/"
                       "index.crates.io-1949cf8c6b5b557f/lance-io-13.0.0/src/object_store/read_dir.rs:146:24")
    said = describe(raw)
    assert said.startswith("the object store or storage layer failed: lance error:") and "error sending request" in said
    assert ".rs:" not in said and ".cargo" not in said
    assert describe(ValueError("x")) == "ValueError: x"


@pytest.mark.slow
def test_registry_failures_are_one_line_naming_the_registry_cause_and_fix(stoppable_s3):
    """The model registry on object storage says what the feature store says: a missing bucket, an endpoint
    nobody answers on (the server stopped under a registry in use), and it works again when the server
    returns; the library's error stays chained for --verbose and for the service's 503."""
    from brainstore.fitting import ModelRegistry, RegistryError

    srv = stoppable_s3
    reg = ModelRegistry(f"s3://{BUCKET}/models", storage_options=srv.options())
    reg.save("m/subj01", {"w": np.ones(3, np.float32)}, {"kind": "ridge"})

    with pytest.raises(RegistryError) as ei:
        ModelRegistry("s3://no-such-bucket/models", storage_options=srv.options(), create=False)
    assert str(ei.value).startswith("model registry s3://no-such-bucket/models: bucket 'no-such-bucket' does not "
                                    f"exist at {srv.endpoint}: create it")

    srv.stop()
    for call in (lambda: reg.load_arrays("m/subj01"), lambda: reg.list(),
                 lambda: reg.save("m/subj02", {"w": np.ones(3, np.float32)}, {"kind": "ridge"})):
        with pytest.raises(RegistryError) as ei:
            call()
        msg = str(ei.value)
        assert msg.startswith(f"model registry s3://{BUCKET}/models unreachable (connection refused at "
                              f"{srv.endpoint}): start the object store, or check --registry"), msg
        assert "\n" not in msg and ".rs:" not in msg
        assert type(ei.value.__cause__).__module__.startswith("obstore")
    srv.start()
    tensors, rec = reg.load_arrays("m/subj01")
    assert np.array_equal(tensors["w"], np.ones(3, np.float32)) and [r.name for r in reg.list()] == ["m/subj01"]
