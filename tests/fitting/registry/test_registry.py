"""Tests of the model registry: safetensors + JSON round trips, integrity, atomic writes, provenance."""

from __future__ import annotations

import ast
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from brainstore.features import FeatureStore
from brainstore.fitting.registry import _local, _registry
from brainstore.fitting.registry._registry import ModelRecord, ModelRegistry, RegistryError, safe_name

PKG = Path(_registry.__file__).parent


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"coef_": rng.standard_normal((5, 7)).astype(np.float32), "alpha_": rng.uniform(1, 10, 7),
            "idx": np.arange(4, dtype=np.int64), "mask": np.array([True, False, True]),
            "half": rng.standard_normal(3).astype(np.float16), "scalar": np.asarray(2.5)}


def _visible(root: Path) -> list[str]:
    """Every path under root (relative), hidden ones included; the writers' lock files (``_locks/``) aside."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.relative_to(root).as_posix()
                  .startswith("_locks"))


def test_round_trip(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    meta = {"kind": "ridge", "score": np.float64(0.25), "n": np.int64(3), "alphas": np.logspace(0, 2, 3),
            "params": {"n_folds": 5, "device": None, "grid": (1, 2)}, "ok": np.bool_(True)}
    tensors = _tensors()
    rec = reg.save("clip-image+text/subj01", tensors, meta)
    assert isinstance(rec, ModelRecord) and rec.path == tmp_path / "models" / "clip-image+text" / "subj01" / "@1"
    assert rec.version == 1 and rec.ref == "clip-image+text/subj01@1" and rec.aliases == ()
    out, rec2 = reg.load_arrays("clip-image+text/subj01")
    assert set(out) == set(tensors)
    for k, v in tensors.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape and np.array_equal(out[k], v), k
    m = rec2.meta
    assert m == rec.meta
    assert m["kind"] == "ridge" and m["score"] == 0.25 and m["n"] == 3 and m["ok"] is True
    assert m["alphas"] == [1.0, 10.0, 100.0] and m["params"] == {"n_folds": 5, "device": None, "grid": [1, 2]}
    assert m["name"] == "clip-image+text/subj01" and m["version"] == 1 and m["created"].endswith("Z")
    assert m["tensors"]["coef_"] == {"shape": [5, 7], "dtype": "float32"}
    assert m["tensors"]["scalar"] == {"shape": [], "dtype": "float64"}
    assert set(m["package_versions"]) == {"brainstore", "numpy", "torch", "scikit-learn", "safetensors", "lancedb"}
    assert m["package_versions"]["numpy"] == np.__version__
    assert len(m["safetensors_sha256"]) == 64
    assert reg.record("clip-image+text/subj01").meta == m


def test_list_exists_delete(tmp_path):
    reg = ModelRegistry(tmp_path)
    for name in ("ridge/subj02", "ridge/subj01", "mlp/subj01", "solo"):
        reg.save(name, {"w": np.ones(2)}, {"model": name})
    (tmp_path / ".solo.tmp-deadbeef").mkdir()  # leftovers of a killed save are ignored
    assert [r.name for r in reg.list()] == ["mlp/subj01", "ridge/subj01", "ridge/subj02", "solo"]
    assert reg.names("ridge/") == ["ridge/subj01", "ridge/subj02"]
    assert all(r.meta["model"] == r.name for r in reg.list())
    assert reg.exists("ridge/subj01") and not reg.exists("ridge/subj03") and not reg.exists("ridge")
    reg.delete("mlp/subj01")
    assert not reg.exists("mlp/subj01") and not (tmp_path / "mlp").exists()  # empty group folder removed
    with pytest.raises(RegistryError, match="ridge/subj01"):
        reg.load_arrays("ridge/subj1")  # close name suggested
    with pytest.raises(RegistryError, match="no model 'nope'"):
        reg.delete("nope")
    with pytest.raises(RegistryError, match="nested inside models"):
        reg.save("solo/inner", {"w": np.ones(1)}, {})
    with pytest.raises(RegistryError, match="folder of other models"):
        reg.save("ridge", {"w": np.ones(1)}, {})
    assert ModelRegistry(tmp_path / "empty").list() == []


def test_names_and_meta_validation(tmp_path):
    reg = ModelRegistry(tmp_path)
    for bad in ("../escape", "a//b", ".hidden", "a/../b", "", "/abs", "sp ace"):
        with pytest.raises(RegistryError, match="model name"):
            reg.save(bad, {"w": np.ones(1)}, {})
    assert safe_name("CLIP ViT-B/32 (layer 3)") == "CLIP-ViT-B-32-layer-3"
    assert safe_name("..x") == "x" and safe_name("///") == "model"
    for meta, key in (({"a": {"b": object()}}, "a.b"), ({"s": {1, 2}}, "s"), ({"x": [1, float("nan")]}, r"x\[1\]"),
                      ({"d": {3: "int key"}}, "d"), ({"arr": np.array([object()])}, "arr")):
        with pytest.raises(RegistryError, match=rf"meta\[{key}\]"):
            reg.save("m", {"w": np.ones(1)}, meta)
    with pytest.raises(RegistryError, match="dtype"):
        reg.save("m", {"w": np.array(["text"])}, {})
    assert _visible(tmp_path) == []  # nothing written by refused saves


def test_tamper_detection(tmp_path):
    reg = ModelRegistry(tmp_path)
    rec = reg.save("m", _tensors(), {})
    f = rec.path / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # flip the last byte of the last tensor
    f.write_bytes(bytes(data))
    with pytest.raises(RegistryError, match="changed since it was saved"):
        reg.load_arrays("m")
    f.unlink()
    with pytest.raises(RegistryError, match="missing"):
        reg.load_arrays("m")


def test_saving_again_adds_a_version_and_never_rewrites_one(tmp_path):
    reg = ModelRegistry(tmp_path)
    r1 = reg.save("g/m", {"w": np.zeros(3)}, {"v": 1})
    files1 = {p: p.read_bytes() for p in r1.path.iterdir()}
    with pytest.raises(RegistryError, match="already exists.*versions 1.*new_version=True"):
        reg.save("g/m", {"w": np.ones(3)}, {"v": 2}, new_version=False)
    r2 = reg.save("g/m", {"w": np.ones(3)}, {"v": 2})
    assert (r1.version, r2.version) == (1, 2) and r2.path == tmp_path / "g" / "m" / "@2"
    assert {p: p.read_bytes() for p in r1.path.iterdir()} == files1  # version 1 untouched
    out, rec = reg.load_arrays("g/m")  # the latest
    assert rec.version == 2 and rec.meta["v"] == 2 and np.array_equal(out["w"], np.ones(3))
    out, rec = reg.load_arrays("g/m@1")
    assert rec.version == 1 and rec.meta["v"] == 1 and np.array_equal(out["w"], np.zeros(3))
    assert reg.save("g/m", {"w": np.ones(3)}, {"v": 2}).version == 2  # the same save again (a resumed job): no new version
    assert reg.save("g/m", {"w": np.ones(3)}, {"v": 3}).version == 3  # other metadata: a new version
    assert [r.version for r in reg.versions("g/m")] == [1, 2, 3] and reg.names() == ["g/m"]
    assert [(r.name, r.version) for r in reg.all_versions()] == [("g/m", 1), ("g/m", 2), ("g/m", 3)]
    assert _visible(tmp_path) == ["g", "g/m", "g/m/@1", "g/m/@1/model.json", "g/m/@1/model.safetensors", "g/m/@2",
                                  "g/m/@2/model.json", "g/m/@2/model.safetensors", "g/m/@3", "g/m/@3/model.json",
                                  "g/m/@3/model.safetensors"]
    with pytest.raises(RegistryError, match=r"no version 7 \(versions 1-3\)"):
        reg.load_arrays("g/m@7")
    for bad in ("g/m@0", "g/m@", "g/m@9x", "g/m@latest2!", "a@b/c"):
        with pytest.raises(RegistryError, match="version|alias|model name"):
            reg.record(bad)


def test_aliases_resolve_move_with_compare_and_swap_and_guard_deletion(tmp_path):
    reg = ModelRegistry(tmp_path)
    for v in range(3):
        reg.save("clip/subj01", {"w": np.full(2, float(v))}, {"v": v})
    assert reg.record("clip/subj01").version == 3  # no champion: the latest
    assert reg.set_alias("clip/subj01", "champion", 1) is None
    assert reg.record("clip/subj01").version == 1 and reg.record("clip/subj01@latest").version == 3
    assert reg.record("clip/subj01@champion").aliases == ("champion",)
    assert reg.list()[0].version == 1  # what the bare name loads
    with pytest.raises(RegistryError, match="points at version 1 now, not 2: it was moved concurrently"):
        reg.set_alias("clip/subj01", "champion", 3, expect=2)
    assert reg.set_alias("clip/subj01", "champion", 2, expect=1) == 1
    assert reg.set_alias("clip/subj01", "staging", 3, expect=None) is None
    assert reg.aliases("clip/subj01") == {"champion": 2, "staging": 3}
    assert [r.aliases for r in reg.versions("clip/subj01")] == [(), ("champion",), ("staging",)]
    with pytest.raises(RegistryError, match="no version 9"):
        reg.set_alias("clip/subj01", "champion", 9)
    for bad in ("latest", "3", "-x", "has space", ""):
        with pytest.raises(RegistryError, match="invalid alias"):
            reg.set_alias("clip/subj01", bad, 1)
    with pytest.raises(RegistryError, match=r"no alias 'prod' \(aliases: champion -> 2, staging -> 3\)"):
        reg.record("clip/subj01@prod")
    with pytest.raises(RegistryError, match="alias.*champion point at it"):
        reg.delete("clip/subj01@2")
    with pytest.raises(RegistryError, match="latest version"):
        reg.delete("clip/subj01@3")
    reg.delete("clip/subj01@1")
    assert [r.version for r in reg.versions("clip/subj01")] == [2, 3]
    assert reg.remove_alias("clip/subj01", "champion") == 2
    assert reg.record("clip/subj01").version == 3
    assert json.loads((tmp_path / "clip" / "subj01" / "@aliases.json").read_text()) == {"staging": 3}
    reg.delete("clip/subj01")
    assert reg.names() == [] and not (tmp_path / "clip").exists()


def test_a_model_saved_before_versions_is_read_as_version_1(tmp_path):
    """The layout of older brainstore registries (``<name>/model.json`` + weights) reads as version 1; saving
    again adds ``@2`` beside it and leaves the old files as they were."""
    reg = ModelRegistry(tmp_path)
    folder = tmp_path / "ridge" / "subj01"
    folder.mkdir(parents=True)
    safetensors.numpy.save_file({"w": np.arange(3.0)}, str(folder / "model.safetensors"))
    sha = __import__("hashlib").sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    (folder / "model.json").write_text(json.dumps({"name": "ridge/subj01", "safetensors_sha256": sha, "v": "old",
                                                   "format_version": 2}))
    assert reg.names() == ["ridge/subj01"] and reg.record("ridge/subj01").version == 1
    assert reg.record("ridge/subj01").path == folder
    rec = reg.save("ridge/subj01", {"w": np.ones(3)}, {"v": "new"})
    assert rec.version == 2 and rec.path == folder / "@2"
    out, r1 = reg.load_arrays("ridge/subj01@1")
    assert r1.meta["v"] == "old" and np.array_equal(out["w"], np.arange(3.0))
    assert [r.version for r in reg.all_versions()] == [1, 2]


def _save_many(root: str, tag: int) -> list[int]:
    reg = ModelRegistry(root)
    return [reg.save("race/m", {"w": np.full(4, tag * 100.0 + i)}, {"writer": tag, "i": i}).version for i in range(5)]


def test_concurrent_writers_of_one_name_get_distinct_versions(tmp_path):
    import concurrent.futures as cf
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
        got = [v for vs in ex.map(_save_many, [str(tmp_path)] * 2, [1, 2]) for v in vs]
    assert sorted(got) == list(range(1, 11))
    reg = ModelRegistry(tmp_path)
    seen = {(r.meta["writer"], r.meta["i"]) for r in reg.versions("race/m")}
    assert seen == {(w, i) for w in (1, 2) for i in range(5)}
    for r in reg.versions("race/m"):  # every version holds its own writer's weights
        out, _ = reg.load_arrays(r.ref)
        assert out["w"][0] == r.meta["writer"] * 100.0 + r.meta["i"]


@pytest.mark.parametrize("where", ["safetensors", "json", "install"])
def test_atomic_failure(tmp_path, monkeypatch, where):
    reg = ModelRegistry(tmp_path)
    old = _tensors(1)
    reg.save("grp/keep", old, {"v": "old"})
    before = _visible(tmp_path)

    real_write = _local._write_file

    def failing_write(path, data):  # the weights (first) or model.json (second) half written, then the disk is full
        if Path(path).name == ("model.safetensors" if where == "safetensors" else "model.json"):
            Path(path).write_bytes(data[: len(data) // 2])
            raise OSError("disk full")
        real_write(path, data)

    def boom(*a, **k):
        raise OSError("disk full")

    if where == "install":
        monkeypatch.setattr(_local, "install_dir", boom)
    else:
        monkeypatch.setattr(_local, "_write_file", failing_write)
    with pytest.raises(OSError, match="disk full"):
        reg.save("grp/keep", _tensors(2), {"v": "new"})  # a new version of an existing model
    with pytest.raises(OSError, match="disk full"):
        reg.save("other/new", _tensors(2), {"v": "new"})  # a new model in a new group folder
    assert _visible(tmp_path) == before  # no temporary or partial folder left behind
    assert not reg.exists("other/new") and reg.names() == ["grp/keep"]
    assert [r.version for r in reg.versions("grp/keep")] == [1]
    monkeypatch.undo()
    out, rec = reg.load_arrays("grp/keep")
    assert rec.meta["v"] == "old" and all(np.array_equal(out[k], old[k]) for k in old)


def test_no_pickle(tmp_path, monkeypatch):
    reg = ModelRegistry(tmp_path)
    rec = reg.save("m", _tensors(), {"a": 1})
    assert sorted(p.name for p in rec.path.iterdir()) == ["model.json", "model.safetensors"]
    assert json.loads((rec.path / "model.json").read_text())["a"] == 1
    raw = (rec.path / "model.safetensors").read_bytes()
    assert not raw.startswith(b"\x80")  # not a pickle stream
    direct = safetensors.numpy.load_file(str(rec.path / "model.safetensors"))
    assert set(direct) == set(_tensors())

    def forbidden(*a, **k):
        raise AssertionError("pickle used")

    for attr in ("load", "loads", "dump", "dumps", "Unpickler", "Pickler"):
        monkeypatch.setattr(pickle, attr, forbidden)
    out, _ = reg.load_arrays("m")
    assert np.array_equal(out["coef_"], direct["coef_"])
    # the registry module itself must not import torch (nor pickle) at import time
    for mod in ("_registry.py", "_fileio.py"):
        tree = ast.parse((PKG / mod).read_text())
        top = [a.name for n in tree.body if isinstance(n, ast.Import) for a in n.names]
        top += [n.module or "" for n in tree.body if isinstance(n, ast.ImportFrom)]
        assert not [m for m in top if m.split(".")[0] in ("torch", "pickle", "joblib")], mod


def _feature_store(root: Path, pretrained: str, table: str = "clip-b32") -> FeatureStore:
    fs = FeatureStore(root)
    fs.ensure_table(table, 8, {"extractor": "clip", "architecture": "ViT-B-32", "pretrained": pretrained,
                               "layer": "final", "pooling": "cls", "preprocessing": "clip-224"})
    return fs


def test_check_features(tmp_path):
    fs = _feature_store(tmp_path / "store", "openai")
    reg = ModelRegistry(tmp_path / "models")
    rec = reg.save("clip/subj01", {"w": np.ones(2)}, {"feature_versions": {"clip-b32": fs.metadata("clip-b32")}})
    reg.check_features("clip/subj01", fs)
    reg.check_features(rec, str(tmp_path / "store"))  # a store URI works too

    other = _feature_store(tmp_path / "store2", "laion2b")
    with pytest.raises(RegistryError) as e:
        reg.check_features(rec, other)
    msg = str(e.value)
    for part in ("clip/subj01", "clip-b32", "pretrained", "openai", "laion2b", "Re-extract", "refit"):
        assert part in msg, part
    assert "architecture" not in msg  # only the differing fields are named

    missing = _feature_store(tmp_path / "store3", "openai", table="clip-b16")
    with pytest.raises(RegistryError, match=r"'clip-b32' is not in store .*clip-b16"):
        reg.check_features(rec, missing)

    bare = reg.save("bare", {"w": np.ones(2)}, {})
    with pytest.raises(RegistryError, match="feature_versions"):
        reg.check_features(bare, fs)


def test_ridge_state_dict_round_trip(tmp_path):
    from brainstore.fitting.ridge._ridge import RidgeCVEncoder

    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 6)).astype(np.float32)
    Y = (X @ rng.standard_normal((6, 4)) + 0.5 * rng.standard_normal((60, 4))).astype(np.float32)
    params = {"alphas": (0.1, 1.0, 10.0, 100.0), "n_folds": 3, "device": "cpu"}
    est = RidgeCVEncoder(**params).fit(X[:45], Y[:45])
    reg = ModelRegistry(tmp_path)
    reg.save("ridge/s1", est.state_dict(), {"estimator": "RidgeCVEncoder", "params": est.get_params()})
    state, rec = reg.load_arrays("ridge/s1")
    params2 = {**rec.meta["params"], "alphas": tuple(rec.meta["params"]["alphas"])}
    est2 = RidgeCVEncoder.from_state_dict(state, **params2)
    assert est2.get_params() == est.get_params()
    assert np.array_equal(est2.predict(X[45:]), est.predict(X[45:]))


def test_stale_temporary_folders_are_removed_by_the_next_write(tmp_path):
    import os
    import time

    reg = ModelRegistry(tmp_path / "reg")
    reg.save("ridge/subj03", _tensors(), {"kind": "test"})
    folder = tmp_path / "reg" / "ridge" / "subj03"
    stale = folder / ".@2.tmp-deadbeef0000"  # what a writer killed mid-save leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    old = time.time() - _registry.STALE_TMP_S - 60
    os.utime(stale, (old, old))
    live = folder / ".@3.tmp-0123456789ab"  # a concurrent writer's, seconds old: kept
    live.mkdir()
    assert reg.save("ridge/subj03", _tensors(1), {"kind": "test"}).version == 2
    assert not stale.exists() and live.exists()
    assert [(r.name, r.version) for r in reg.list()] == [("ridge/subj03", 2)]


def test_weights_and_json_get_the_same_umask_permissions(tmp_path):
    import os
    import stat

    reg = ModelRegistry(tmp_path / "reg")
    old = os.umask(0o027)
    try:
        reg.save("m/subj01", _tensors(), {"kind": "test"})
    finally:
        os.umask(old)
    folder = tmp_path / "reg" / "m" / "subj01" / "@1"
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes == {"model.safetensors": 0o640, "model.json": 0o640}
    assert stat.S_IMODE(folder.stat().st_mode) == 0o750


def test_reading_never_creates_a_registry(tmp_path):
    with pytest.raises(RegistryError, match="does not exist"):
        ModelRegistry(tmp_path / "nosuch", create=False)
    assert not (tmp_path / "nosuch").exists()
    (tmp_path / "file").write_text("x")
    for create in (True, False):
        with pytest.raises(RegistryError, match="is a file"):
            ModelRegistry(tmp_path / "file", create=create)


@pytest.mark.slow
def test_load_gives_a_model_that_predicts_whatever_its_kind(serving_models):
    """``registry.load(name)`` returns the usable model of the record's kind (an encoder predicts responses to
    stimulus ids exactly as predict_model does, a ridge decoder embeddings as its estimator does);
    ``load_arrays`` still gives the raw arrays."""
    from brainstore.features import FeatureStore
    from brainstore.fitting import Decoder, EncodingModel, ModelRegistry, predict_model

    reg = ModelRegistry(serving_models["registry"], create=False)
    enc = reg.load("both/subj01")
    assert isinstance(enc, EncodingModel)
    ids = sorted(FeatureStore(serving_models["store"], create=False).ids(serving_models["img"]))[:5]
    want = predict_model(reg, "both", "subj01", None, ids)
    got = enc.predict(ids)
    assert set(got) == {"lh", "rh"} and all(np.array_equal(got[h], want[h]) for h in want)

    name = f"decoder-ridge-{serving_models['txt']}/subj01"
    dec = reg.load(name, store=serving_models["store"])
    assert isinstance(dec, Decoder)
    R = np.random.default_rng(0).normal(size=(3, dec.n_voxels)).astype(np.float32)
    np.testing.assert_array_equal(dec.predict(R), dec.decode(R))
    tensors, rec = reg.load_arrays(name)
    assert rec.meta["kind"] == "decoder" and "coef_" in tensors
    with pytest.raises(RegistryError, match="both/subj01"):  # a group, not a model: the message names its models
        reg.load("both")
