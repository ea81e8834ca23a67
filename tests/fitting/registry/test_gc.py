"""Garbage collection of model versions: what is kept (latest, aliased, recent, members of kept composites) and
what goes, checked on hand-made registries (the end-to-end run with feature tables is tests/system/test_versions.py)."""

from __future__ import annotations

import numpy as np
import pytest

from brainstore.fitting import ModelRegistry, RegistryError, collect_garbage


def _save(reg, name, v, **meta):
    return reg.save(name, {"w": np.full(2, float(v))}, {"subject": "subj01", "kind": "ridge", "v": v, **meta})


def test_gc_keeps_latest_aliased_recent_and_composite_members(tmp_path):
    reg = ModelRegistry(tmp_path)
    a = [_save(reg, "a/subj01", v) for v in range(4)]  # a@1..a@4
    ens = reg.save("ens/subj01", {"weights": np.ones(1)}, {
        "subject": "subj01", "kind": "ensemble", "members": ["a"],
        "member_sha256": {"a": a[1].meta["safetensors_sha256"]}, "member_versions": {"a": 2}})
    old_ens = reg.save("ens2/subj01", {"weights": np.ones(1)}, {  # saved before member versions: found by sha256
        "subject": "subj01", "kind": "per-roi", "members": ["a"], "member_sha256": {"a": a[0].meta["safetensors_sha256"]}})
    reg.set_alias("a/subj01", "staging", 3)
    assert collect_garbage(reg, older_than_s=3600, tables=False).removed == []  # everything is recent
    dry = collect_garbage(reg, older_than_s=0, tables=False, dry_run=True)
    assert dry.removed == [] and dry.kept == {
        "a/subj01@1": f"member of {old_ens.ref}", "a/subj01@2": f"member of {ens.ref}", "a/subj01@3": "alias staging",
        "a/subj01@4": "latest version", "ens/subj01@1": "latest version", "ens2/subj01@1": "latest version"}
    reg.remove_alias("a/subj01", "staging")
    rep = collect_garbage(reg, older_than_s=0, tables=False)
    assert rep.removed == ["a/subj01@3"] and [r.version for r in reg.versions("a/subj01")] == [1, 2, 4]
    with pytest.raises(RegistryError, match=">= 0"):
        collect_garbage(reg, older_than_s=-1)


def test_a_newer_composite_version_releases_the_member_the_old_one_needed(tmp_path):
    reg = ModelRegistry(tmp_path)
    a1, a2 = _save(reg, "a/subj01", 1), _save(reg, "a/subj01", 2)
    for a in (a1, a2):
        reg.save("ens/subj01", {"weights": np.ones(1)}, {"subject": "subj01", "kind": "ensemble", "members": ["a"],
                                                          "member_sha256": {"a": a.meta["safetensors_sha256"]},
                                                          "member_versions": {"a": a.version}})
    rep = collect_garbage(reg, older_than_s=0, tables=False)
    assert rep.removed == ["a/subj01@1", "ens/subj01@1"]
    assert [r.ref for r in reg.all_versions()] == ["a/subj01@2", "ens/subj01@2"]
