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
from brainstore.fitting.registry import _fileio, _registry
from brainstore.fitting.registry._registry import ModelRecord, ModelRegistry, RegistryError, safe_name

PKG = Path(_registry.__file__).parent


def _tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"coef_": rng.standard_normal((5, 7)).astype(np.float32), "alpha_": rng.uniform(1, 10, 7),
            "idx": np.arange(4, dtype=np.int64), "mask": np.array([True, False, True]),
            "half": rng.standard_normal(3).astype(np.float16), "scalar": np.asarray(2.5)}


def _visible(root: Path) -> list[str]:
    """Every path under root (relative), hidden ones included."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_round_trip(tmp_path):
    reg = ModelRegistry(tmp_path / "models")
    meta = {"kind": "ridge", "score": np.float64(0.25), "n": np.int64(3), "alphas": np.logspace(0, 2, 3),
            "params": {"n_folds": 5, "device": None, "grid": (1, 2)}, "ok": np.bool_(True)}
    tensors = _tensors()
    rec = reg.save("clip-image+text/subj01", tensors, meta)
    assert isinstance(rec, ModelRecord) and rec.path == tmp_path / "models" / "clip-image+text" / "subj01"
    out, rec2 = reg.load_arrays("clip-image+text/subj01")
    assert set(out) == set(tensors)
    for k, v in tensors.items():
        assert out[k].dtype == v.dtype and out[k].shape == v.shape and np.array_equal(out[k], v), k
    m = rec2.meta
    assert m == rec.meta
    assert m["kind"] == "ridge" and m["score"] == 0.25 and m["n"] == 3 and m["ok"] is True
    assert m["alphas"] == [1.0, 10.0, 100.0] and m["params"] == {"n_folds": 5, "device": None, "grid": [1, 2]}
    assert m["name"] == "clip-image+text/subj01" and m["created"].endswith("Z")
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


def test_overwrite(tmp_path, monkeypatch):
    reg = ModelRegistry(tmp_path)
    reg.save("g/m", {"w": np.zeros(3)}, {"v": 1})
    with pytest.raises(RegistryError, match="overwrite=True"):
        reg.save("g/m", {"w": np.ones(3)}, {"v": 2}, overwrite=False)
    assert reg.load_arrays("g/m")[1].meta["v"] == 1
    reg.save("g/m", {"w": np.ones(3)}, {"v": 2})
    out, rec = reg.load_arrays("g/m")
    assert rec.meta["v"] == 2 and np.array_equal(out["w"], np.ones(3))
    monkeypatch.setattr(_fileio, "exchange", lambda a, b: False)  # platforms without renameat2
    reg.save("g/m", {"w": np.full(3, 7.0)}, {"v": 3})
    assert reg.load_arrays("g/m")[1].meta["v"] == 3
    assert _visible(tmp_path) == ["g", "g/m", "g/m/model.json", "g/m/model.safetensors"]


@pytest.mark.parametrize("where", ["safetensors", "json", "install"])
def test_atomic_failure(tmp_path, monkeypatch, where):
    reg = ModelRegistry(tmp_path)
    old = _tensors(1)
    reg.save("grp/keep", old, {"v": "old"})
    before = _visible(tmp_path)

    def partial_safetensors(tensors, path, metadata=None):
        Path(path).write_bytes(b"half-written")
        raise OSError("disk full")

    def boom(*a, **k):
        raise OSError("disk full")

    if where == "safetensors":
        monkeypatch.setattr(safetensors.numpy, "save_file", partial_safetensors)
    elif where == "json":
        monkeypatch.setattr(_registry, "write_json", boom)
    else:
        monkeypatch.setattr(_registry, "install_dir", boom)
    with pytest.raises(OSError, match="disk full"):
        reg.save("grp/keep", _tensors(2), {"v": "new"})  # overwrite of an existing model
    with pytest.raises(OSError, match="disk full"):
        reg.save("other/new", _tensors(2), {"v": "new"})  # a new model in a new group folder
    assert _visible(tmp_path) == before  # no temporary or partial folder left behind
    assert not reg.exists("other/new") and reg.names() == ["grp/keep"]
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
    group = tmp_path / "reg" / "ridge"
    group.mkdir()
    stale = group / ".subj01.tmp-deadbeef0000"  # what a writer killed mid-save leaves
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    old = time.time() - _registry.STALE_TMP_S - 60
    os.utime(stale, (old, old))
    live = group / ".subj02.tmp-0123456789ab"  # a concurrent writer's, seconds old: kept
    live.mkdir()
    reg.save("ridge/subj03", _tensors(), {"kind": "test"})
    assert not stale.exists() and live.exists()
    assert [r.name for r in reg.list()] == ["ridge/subj03"]


def test_weights_and_json_get_the_same_umask_permissions(tmp_path):
    import os
    import stat

    reg = ModelRegistry(tmp_path / "reg")
    old = os.umask(0o027)
    try:
        reg.save("m/subj01", _tensors(), {"kind": "test"})
    finally:
        os.umask(old)
    folder = tmp_path / "reg" / "m" / "subj01"
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
