"""Services announce the versions they serve in their registry (``serving/_heartbeat.py``), for lineage."""

from __future__ import annotations

import shutil
import time


def test_heartbeat_announces_what_the_backend_serves_and_withdraws_on_stop(serving_models, tmp_path):
    from brainstore.fitting import ModelRegistry, lineage
    from brainstore.serving._backend import LocalBackend
    from brainstore.serving._heartbeat import Heartbeat, backend_refs, registry_refs

    registry = tmp_path / "registry"
    shutil.copytree(serving_models["registry"], registry, ignore=shutil.ignore_patterns("_runs", "_services", "_locks"))
    reg = ModelRegistry(registry)
    backend = LocalBackend(str(registry))
    want = sorted(r.ref for r in reg.list())  # encoders and ridge decoders, each name's served version
    assert backend_refs(backend) == registry_refs(reg) == want
    hb = Heartbeat(reg, lambda: backend_refs(backend), url="http://127.0.0.1:8765", interval_s=0.1, port=8765).start()
    try:
        [svc] = reg.services()
        assert svc["id"] == hb.service_id and svc["url"] == "http://127.0.0.1:8765" and svc["models"] == want
        first = svc["heartbeat"]
        deadline = time.time() + 10
        while hb.beats < 3 and time.time() < deadline:  # it keeps beating
            time.sleep(0.05)
        assert hb.beats >= 3 and reg.services()[0]["heartbeat"] > first
        assert lineage(reg, "img/subj01").link("serving")[0].facts["served_by"][0]["id"] == hb.service_id
    finally:
        hb.stop()
    assert reg.services(max_age_s=None) == []  # withdrawn
    assert not lineage(reg, "img/subj01").link("serving")[0].facts["served"]


def test_a_registry_that_cannot_be_written_does_not_stop_the_service(caplog):
    from brainstore.serving._heartbeat import Heartbeat

    class ReadOnly:
        def announce(self, *a, **k):
            raise PermissionError("read-only file system")

        def withdraw(self, *a, **k):
            raise PermissionError("read-only file system")

    hb = Heartbeat(ReadOnly(), lambda: ["m/subj01@1"], interval_s=0.05)
    hb.start()
    time.sleep(0.2)
    hb.stop()  # no exception either
    assert hb.beats == 0 and sum("cannot announce itself" in r.getMessage() for r in caplog.records) == 1


def test_the_in_process_server_announces_itself_while_it_runs(serving_models, tmp_path):
    from brainstore import serve
    from brainstore.fitting import ModelRegistry

    registry = tmp_path / "registry"
    shutil.copytree(serving_models["registry"], registry, ignore=shutil.ignore_patterns("_runs", "_services", "_locks"))
    reg = ModelRegistry(registry)
    with serve(str(registry), local=True) as url:
        [svc] = reg.services()
        assert svc["url"] == url and svc["kind"] == "local" and "img/subj01@1" in svc["models"]
    assert reg.services(max_age_s=None) == []
