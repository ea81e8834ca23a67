"""Services' announcements in the registry (``registry/_services.py``): fresh ones listed, stale ones not."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from brainstore.fitting.registry import ModelRegistry, RegistryError


def test_announce_lists_fresh_services_and_withdraw_removes_them(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    reg.save("m/subj01", {"w": np.zeros(2)}, {"kind": "ridge"})
    doc = reg.announce("svc-a", {"url": "http://127.0.0.1:8000", "models": ["m/subj01@1"], "kind": "local"})
    assert doc["id"] == "svc-a" and abs(doc["heartbeat"] - time.time()) < 5
    on_disk = json.loads((tmp_path / "reg" / "_services" / "svc-a.json").read_text())
    assert on_disk["models"] == ["m/subj01@1"] and on_disk["url"] == "http://127.0.0.1:8000"
    reg.announce("svc-b", {"url": "http://127.0.0.1:8001", "models": []})
    [a, b] = reg.services()
    assert (a["id"], b["id"]) == ("svc-a", "svc-b") and 0 <= a["age_s"] < 5
    assert reg.names() == ["m/subj01"]  # announcements are not models
    # a service that stopped heartbeating is stale: not listed (unless every one is asked for)
    assert reg.services(now=time.time() + 31) == []
    assert [d["id"] for d in reg.services(max_age_s=None, now=time.time() + 3600)] == ["svc-a", "svc-b"]
    assert reg.withdraw("svc-a") and not reg.withdraw("svc-a")
    assert [d["id"] for d in reg.services()] == ["svc-b"]
    (tmp_path / "reg" / "_services" / "broken.json").write_text("{not json")  # skipped, not an error
    assert [d["id"] for d in reg.services()] == ["svc-b"]


def test_bad_announcements_are_refused_naming_the_field(tmp_path):
    reg = ModelRegistry(tmp_path / "reg")
    with pytest.raises(RegistryError, match="invalid service id '../x'"):
        reg.announce("../x", {"models": []})
    with pytest.raises(RegistryError, match=r"info\['models'\] must be a list of model references"):
        reg.announce("svc", {"models": "m/subj01@1"})
