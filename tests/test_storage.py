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
