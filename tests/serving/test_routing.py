"""Routes (serving/_routing.py) over a stand-in registry: a moved alias switches a reference only once its new
version is ready (the old one answers meanwhile), a version that cannot be prepared is held back and not
tried again until its files change, NAME@alias is resolved again and NAME@3 never, and a registry out of
reach in a background refresh leaves the table as it was."""

from __future__ import annotations

import threading
import time

import pytest

from brainstore.fitting import ModelRecord, RegistryError, parse_ref
from brainstore.serving._routing import Routes, check_refresh


class _Registry:
    """Versions and aliases of model names in memory: what Routes reads (list, record, stamp)."""

    def __init__(self):
        self.versions = {"m/s1": [1, 2], "d/s1": [1]}
        self.aliases = {"m/s1": {"champion": 1}, "d/s1": {}}
        self.stamps: dict = {}
        self.down = False
        self.unreadable: set = set()  # names list() skips (their record unreadable), as ModelRegistry.list does

    def _rec(self, name, v) -> ModelRecord:
        return ModelRecord(name, f"/{name}/@{v}", {"kind": "ridge", "subject": "s1"}, v,
                           tuple(a for a, x in self.aliases[name].items() if x == v))

    def _select(self, name, sel) -> int:
        if name not in self.versions:
            raise RegistryError(f"no model {name!r}")
        if sel is None:
            return self.aliases[name].get("champion", self.versions[name][-1])
        if sel == "latest":
            return self.versions[name][-1]
        if isinstance(sel, int):
            if sel not in self.versions[name]:
                raise RegistryError(f"model {name!r} has no version {sel}")
            return sel
        if sel not in self.aliases[name]:
            raise RegistryError(f"model {name!r} has no alias {sel!r}")
        return self.aliases[name][sel]

    def list(self):
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        return [self._rec(n, self._select(n, None)) for n in sorted(self.versions) if n not in self.unreadable]

    def resolve(self, ref):
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        name, sel = parse_ref(ref)
        return name, self._select(name, sel)

    def record(self, ref):
        name, sel = parse_ref(ref)
        return self._rec(name, self._select(name, sel))

    def stamp(self, rec):
        return (rec.name, rec.version, self.stamps.get(rec.ref, 0))


def _wait(cond, timeout=5.0):
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.01)


def test_a_moved_alias_switches_only_once_the_new_version_is_ready():
    reg, gate, prepared = _Registry(), threading.Event(), []

    def prepare(old, new, verify):
        prepared.append((old.ref, new.ref))
        assert gate.wait(5)

    routes = Routes(reg, 0.05, prepare)
    assert [r.ref for r in routes.listing()] == ["d/s1@1", "m/s1@1"]
    gen = routes.generation
    reg.aliases["m/s1"]["champion"] = 2
    time.sleep(0.06)
    routes.maybe_refresh()  # a background refresh: it waits in prepare
    _wait(lambda: prepared)
    assert prepared == [("m/s1@1", "m/s1@2")]
    for _ in range(3):  # requests meanwhile: answered by version 1, no second refresh started
        routes.maybe_refresh()
        assert routes.get("m/s1").version == 1
    gate.set()
    _wait(lambda: routes.get("m/s1").version == 2)
    assert routes.generation > gen and routes.switches == 1 and not routes.held_back()


def test_a_version_that_cannot_be_prepared_is_held_back_until_its_files_change():
    reg, calls = _Registry(), []

    def prepare(old, new, verify):
        calls.append(new.ref)
        if new.ref == "m/s1@2" and reg.stamps.get(new.ref, 0) == 0:
            raise RegistryError("weights changed since saved (sha256)")

    routes = Routes(reg, 1.0, prepare)
    routes.listing()
    reg.aliases["m/s1"]["champion"] = 2
    routes.refresh(force=True)
    assert routes.get("m/s1").version == 1
    assert routes.held_back() == [{"model": "m/s1", "serving": "m/s1@1", "wanted": "m/s1@2",
                                   "error": "weights changed since saved (sha256)"}]
    routes.refresh(force=True)
    assert calls == ["m/s1@2"]  # not tried again: its files are as they were
    reg.stamps["m/s1@2"] = 1  # re-saved / repaired
    routes.refresh(force=True)
    assert calls == ["m/s1@2", "m/s1@2"] and routes.get("m/s1").version == 2 and not routes.held_back()
    reg.aliases["m/s1"]["champion"] = 1  # moved back
    routes.refresh(force=True)
    assert routes.get("m/s1").version == 1


def test_aliases_are_resolved_again_versions_never_and_a_removed_alias_leaves():
    reg = _Registry()
    routes = Routes(reg, 1.0, lambda old, new, verify: None)
    assert routes.get("m/s1@champion").version == 1 and routes.get("m/s1@01").ref == "m/s1@1"
    assert routes.get("m/s1@latest").version == 2
    with pytest.raises(RegistryError, match="no version 7"):
        routes.get("m/s1@7")
    reg.versions["m/s1"].append(3)
    reg.aliases["m/s1"]["champion"] = 3
    routes.refresh(force=True)
    assert routes.get("m/s1@champion").version == 3 and routes.get("m/s1@latest").version == 3
    assert routes.get("m/s1@1").version == 1
    del reg.aliases["m/s1"]["champion"]
    routes.refresh(force=True)
    with pytest.raises(RegistryError, match="no alias"):
        routes.get("m/s1@champion")


def test_a_registry_out_of_reach_in_a_background_refresh_keeps_the_table():
    reg = _Registry()
    routes = Routes(reg, 0.02, lambda old, new, verify: None)
    routes.listing()
    reg.down = True
    time.sleep(0.03)
    routes.maybe_refresh()
    _wait(lambda: routes.error is not None)
    assert "Connection refused" in routes.error and [r.ref for r in routes.listing()] == ["d/s1@1", "m/s1@1"]
    reg.down = False
    time.sleep(0.03)
    routes.maybe_refresh()
    _wait(lambda: routes.error is None)


def test_refresh_s_must_be_positive():
    for bad in (0, -1, "2", True, None):
        with pytest.raises(ValueError, match="refresh_s must be"):
            check_refresh(bad)
    assert check_refresh(float("inf")) == float("inf")


def test_a_name_the_listing_skips_keeps_its_version_unless_the_registry_no_longer_holds_it():
    """ModelRegistry.list skips a model whose record cannot be read now (a store failing under it): the name
    keeps serving; a name deleted from the registry leaves; a registry out of reach fails the refresh."""
    reg = _Registry()
    routes = Routes(reg, 1.0, lambda old, new, verify: None)
    routes.listing()
    reg.unreadable = {"m/s1"}
    routes.refresh(force=True)
    assert [r.ref for r in routes.listing()] == ["d/s1@1", "m/s1@1"]
    reg.down = True
    with pytest.raises(ConnectionRefusedError):
        routes.refresh(force=True)
    assert [r.ref for r in routes.listing()] == ["d/s1@1", "m/s1@1"]
    reg.down, reg.unreadable = False, set()
    del reg.versions["d/s1"]
    routes.refresh(force=True)
    assert [r.ref for r in routes.listing()] == ["m/s1@1"] and routes.get("d/s1") is None
