"""The registry refuses models whose inputs drifted: re-derived feature tables, refitted members."""

import numpy as np
import pytest

from brainstore.datasets import AlgonautsDataset
from brainstore.features import FeatureStore, derive_pca, extract
from brainstore.fitting import EncodingModel, FitSpec, ModelRegistry, RegistryError, fit_encoding_models, predict_model
from brainstore.fitting import subject_stimuli

ALPHAS = [1.0, 100.0, 10000.0]


@pytest.fixture(scope="module")
def pca_fit(small_dataset, tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("drift")
    store, registry = str(root / "store"), str(root / "registry")
    txt = extract(small_dataset, "text", store, progress=False).feature
    pca = derive_pca(store, txt, 16)
    spec = FitSpec(dataset=str(small_dataset), alphas=ALPHAS, subjects=["subj01"], folds=4,
                   models=[{"name": "pca", "features": [pca]}, {"name": "txt", "features": [txt]}],
                   ensembles=[{"name": "ens", "members": ["pca", "txt"]}])
    run = fit_encoding_models(spec, store=store, registry=registry, progress=False)
    assert not run.failures
    return {"store": store, "registry": registry, "txt": txt, "pca": pca, "spec": spec, "root": root}


def test_predict_refuses_a_pca_table_re_derived_on_more_rows(pca_fit, small_dataset):
    reg, fs = ModelRegistry(pca_fit["registry"]), FeatureStore(pca_fit["store"])
    ids = subject_stimuli(AlgonautsDataset(small_dataset), "subj01", "test")
    before = predict_model(reg, "pca", "subj01", None, ids)["lh"]
    # unchanged tables: loading twice and predicting again is fine and identical
    np.testing.assert_array_equal(predict_model(reg, "pca", "subj01", fs, ids)["lh"], before)
    # more training rows reach the source table (same extractor, same metadata), and the PCA is re-derived
    txt = pca_fit["txt"]
    extra = [f"extra-{i:04d}" for i in range(40)]
    fs.write(txt, extra, np.random.default_rng(0).normal(size=(40, fs.info(txt).dim)).astype(np.float32),
             dataset="other", split="train")
    n_before = fs.metadata(pca_fit["pca"])["n_fit"]
    derive_pca(fs, txt, 16)
    assert fs.metadata(pca_fit["pca"])["n_fit"] == n_before + 40
    with pytest.raises(RegistryError) as e:
        predict_model(reg, "pca", "subj01", None, ids)
    msg = str(e.value)
    assert f"feature table {pca_fit['pca']!r}" in msg and "embeddings of the" in msg
    assert f"re-fitted on {n_before + 40} rows ({n_before} at fit time)" in msg and "its projection changed" in msg
    assert "Refit the model" in msg
    # the ensemble holding it is refused too (its member is loaded and checked)
    with pytest.raises(RegistryError, match=pca_fit["pca"]):
        EncodingModel.load(reg, "ens", "subj01")
    # the text model, fitted on rows that did not change, still predicts
    assert predict_model(reg, "txt", "subj01", None, ids)["lh"].shape[0] == len(ids)


def test_an_ensemble_keeps_the_member_versions_it_was_made_from(pca_fit, small_dataset, tmp_path):
    """A member refitted alone adds a version; the ensemble still loads the member version it was fitted with
    (its predictions unchanged, bit for bit), and is refused, naming that version, once it is deleted."""
    txt, registry = pca_fit["txt"], str(tmp_path / "registry")  # (the module's PCA table is re-derived above)
    spec = FitSpec(dataset=str(small_dataset), alphas=ALPHAS, subjects=["subj01"], folds=4,
                   models=[{"name": "txt", "features": [txt]}, {"name": "txt-b", "features": [txt]}],
                   ensembles=[{"name": "ens", "members": ["txt", "txt-b"]}])
    assert not fit_encoding_models(spec, store=pca_fit["store"], registry=registry, out=tmp_path / "run1",
                                   progress=False).failures
    reg = ModelRegistry(registry)
    ids = subject_stimuli(AlgonautsDataset(small_dataset), "subj01", "test")
    before = predict_model(reg, "ens", "subj01", None, ids)
    old = reg.record("txt/subj01")
    spec = FitSpec(dataset=str(small_dataset), alphas=[10.0, 1000.0], subjects=["subj01"], folds=4,
                   models=[{"name": "txt", "features": [txt]}])
    fit_encoding_models(spec, store=pca_fit["store"], registry=registry, out=tmp_path / "run2", progress=False)
    new = reg.record("txt/subj01")
    assert new.version == old.version + 1 and new.meta["safetensors_sha256"] != old.meta["safetensors_sha256"]
    ens = EncodingModel.load(reg, "ens", "subj01")
    assert ens.members[0].record.ref == old.ref
    after = predict_model(reg, "ens", "subj01", None, ids)
    assert all(np.array_equal(after[h], before[h]) for h in before)
    reg.delete(old.ref)
    with pytest.raises(RegistryError, match=rf"version {old.version} of its member 'txt/subj01'.*no longer in the registry"):
        EncodingModel.load(reg, "ens", "subj01")
    with pytest.raises(RegistryError, match="Refit 'ens' together with its members"):
        predict_model(reg, "ens", "subj01", None, ids)


def test_a_model_without_fingerprints_is_refused(pca_fit):
    reg = ModelRegistry(pca_fit["registry"])
    tensors, rec = reg.load_arrays("txt/subj01")
    meta = {k: v for k, v in rec.meta.items() if k != "fingerprints"}
    reg.save("old/subj01", tensors, {**meta, "model": "old"})
    with pytest.raises(RegistryError, match="without feature fingerprints.*refit it"):
        EncodingModel.load(reg, "old", "subj01")


# ---------------------------------------------------------------------------------- pinned feature versions
@pytest.fixture(scope="module")
def pinned_fit(small_dataset, tmp_path_factory, ray_local):
    """Models "txt" (text table), "both" (text + its PCA) and their ensemble "ens", fitted for subj01 once; each
    test changes a copy of the store (the registry records the original store, so tests pass the copy)."""
    root = tmp_path_factory.mktemp("pinned")
    store, registry = str(root / "store"), str(root / "registry")
    txt = extract(small_dataset, "text", store, progress=False).feature
    pca = derive_pca(store, txt, 8)
    spec = FitSpec(dataset=str(small_dataset), alphas=ALPHAS, subjects=["subj01"], folds=3,
                   models=[{"name": "txt", "features": [txt]}, {"name": "both", "features": [txt, pca]}],
                   ensembles=[{"name": "ens", "members": ["txt", "both"]}])
    run = fit_encoding_models(spec, store=store, registry=registry, progress=False)
    assert not run.failures
    ds = AlgonautsDataset(small_dataset)
    train, test = subject_stimuli(ds, "subj01", "train"), subject_stimuli(ds, "subj01", "test")
    reg = ModelRegistry(registry)
    fs = FeatureStore(store)
    before = {m: predict_model(reg, m, "subj01", fs, train + test) for m in ("txt", "both", "ens")}
    return {"store": store, "registry": registry, "txt": txt, "pca": pca, "train": train, "test": test,
            "before": before}


def _copy_store(pinned_fit, tmp_path) -> FeatureStore:
    import shutil

    shutil.copytree(pinned_fit["store"], tmp_path / "store")
    return FeatureStore(tmp_path / "store")


def _rewrite(fs: FeatureStore, table: str, sid: str, factor: float = 2.0) -> np.ndarray:
    """Change the stored embedding of ``sid`` directly through LanceDB (behind brainstore's back)."""
    import lancedb

    new = fs.load(table, [sid])[0] * factor
    lancedb.connect(fs.uri).open_table(table).update(where=f"stimulus_id='{sid}'", values={"embedding": new.tolist()})
    np.testing.assert_array_equal(fs.load(table, [sid])[0], new)
    return new


def _at_latest(em, ids) -> dict:
    """What a model would predict reading every row at the table's latest version (the behaviour pinning prevents)."""
    from brainstore.fitting import design_matrix

    X = design_matrix(em.store, list(em.record.meta["features"]), ids)
    return {h: em._estimator(h).predict(X) for h in em.hemispheres}


def test_a_row_changed_behind_a_models_back_keeps_its_fit_time_predictions(pinned_fit, tmp_path):
    from brainstore.serving import LocalBackend
    from brainstore.serving._codec import ServingError

    fs = _copy_store(pinned_fit, tmp_path)
    txt, train, test = pinned_fit["txt"], pinned_fit["train"], pinned_fit["test"]
    fp = ModelRegistry(pinned_fit["registry"]).record("txt/subj01").meta["fingerprints"][txt]
    assert fp["pinned"] and fs.pinned(txt) == [fp["table_version"]] and fp["table_version"] == fs.version(txt)
    changed = train[7]
    _rewrite(fs, txt, changed)
    assert fs.version(txt) > fp["table_version"]
    reg = ModelRegistry(pinned_fit["registry"])
    for m in ("txt", "both", "ens"):
        em = EncodingModel.load(reg, m, "subj01", fs)
        got = em.predict(train + test)
        for h in ("lh", "rh"):
            np.testing.assert_array_equal(got[h], pinned_fit["before"][m][h])  # bit for bit
    # reading the latest version would have changed exactly the changed stimulus' prediction
    em = EncodingModel.load(reg, "txt", "subj01", fs)
    naive = _at_latest(em, train)["lh"]
    differs = np.flatnonzero((naive != pinned_fit["before"]["txt"]["lh"][:len(train)]).any(1))
    assert differs.tolist() == [7]
    # a stimulus added later cannot be read: the latest version changed a fitted row (named, and only it)
    fs.write(txt, ["late-1"], np.ones((1, fs.info(txt).dim), np.float32), dataset="other", split="test")
    with pytest.raises(RegistryError) as e:
        em.predict(["late-1", test[0]])
    msg = str(e.value)
    assert f"cannot read 1 stimulus id(s) ('late-1') from feature table {txt!r}" in msg
    assert f"changed 1 of the {len(train)} stimuli it was fitted on ({changed!r})" in msg
    assert "Refit it on the current table (`brainstore fit`)" in msg and "\n" not in msg
    with pytest.raises(RegistryError, match=f"\\({changed!r}\\)"):  # a composite reads through the same tables
        EncodingModel.load(reg, "ens", "subj01", fs).predict(["late-1"])
    # serving reads the pinned version too, and refuses the late stimulus with the same sentence
    backend = LocalBackend(pinned_fit["registry"], store=fs.uri)
    out = backend.encode("subj01", model="txt", stimulus_id=[changed, test[3]])
    # (BLAS results depend on the batch: the expectation is the same two stimuli predicted from the untouched store)
    want = predict_model(reg, "txt", "subj01", pinned_fit["store"], [changed, test[3]])
    for h in ("lh", "rh"):
        np.testing.assert_array_equal(out["responses"][h], want[h])
        np.testing.assert_allclose(want[h], pinned_fit["before"]["txt"][h][[7, len(train) + 3]], atol=1e-5)
    with pytest.raises(ServingError) as se:
        backend.encode("subj01", model="ens", stimulus_id="late-1")
    assert se.value.status == 422 and f"({changed!r})" in se.value.message and "late-1" in se.value.message


def test_a_stimulus_added_later_is_read_from_the_latest_version_while_fitted_rows_hold(pinned_fit, tmp_path):
    fs = _copy_store(pinned_fit, tmp_path)
    txt, train, test = pinned_fit["txt"], pinned_fit["train"], pinned_fit["test"]
    reg = ModelRegistry(pinned_fit["registry"])
    e = np.random.default_rng(5).normal(size=(1, fs.info(txt).dim)).astype(np.float32)
    fs.write(txt, ["late-1"], e, dataset="other", split="test")
    em = EncodingModel.load(reg, "txt", "subj01", fs)
    got = em.predict([test[0], "late-1"])
    # the model applied to the two embeddings themselves (the same batch: BLAS results depend on it)
    rows = np.vstack([FeatureStore(pinned_fit["store"]).load(txt, [test[0]]), e])
    sent = em.predict(["<request>"] * 2, em.designs(rows={txt: rows}))
    for h in ("lh", "rh"):
        np.testing.assert_array_equal(got[h], sent[h])
        np.testing.assert_allclose(got[h][0], pinned_fit["before"]["txt"][h][len(train)], atol=1e-5)
    with pytest.raises(KeyError, match="'nowhere'|nowhere"):  # in no version at all
        em.predict(["nowhere"])
    # the PCA table has no late row: "both" reads txt's late row but cannot build its PCA part
    with pytest.raises(KeyError, match="late-1"):
        EncodingModel.load(reg, "both", "subj01", fs).predict(["late-1"])
    # a fitted row changes after that: the same model (and a new load) now refuses the late stimulus
    _rewrite(fs, txt, train[0], 0.5)
    with pytest.raises(RegistryError, match=f"changed 1 of the {len(train)} stimuli it was fitted on \\({train[0]!r}\\)"):
        em.predict(["late-1"])
    with pytest.raises(RegistryError, match="'late-1'"):
        EncodingModel.load(reg, "txt", "subj01", fs).predict(["late-1"])
    # and changing it back makes the latest version agree with the fitted rows again
    _rewrite(fs, txt, train[0], 2.0)
    np.testing.assert_array_equal(em.predict([test[0], "late-1"])["lh"], sent["lh"])


def test_compaction_and_cleanup_keep_the_pinned_version(pinned_fit, tmp_path, monkeypatch):
    import time

    import brainstore.features._versions as versions

    fs = _copy_store(pinned_fit, tmp_path)
    txt, train, test = pinned_fit["txt"], pinned_fit["train"], pinned_fit["test"]
    pinned = ModelRegistry(pinned_fit["registry"]).record("txt/subj01").meta["fingerprints"][txt]["table_version"]
    _rewrite(fs, txt, train[3])
    _rewrite(fs, txt, test[2])  # a test stimulus too: still read as it was at fit time
    monkeypatch.setattr(versions, "KEEP_S", 0.0)
    time.sleep(0.05)
    fs.compact(txt)
    out = fs.cleanup(txt, 0)
    assert [v["version"] for v in fs.versions(txt)] == [pinned, fs.version(txt)], out
    reg = ModelRegistry(pinned_fit["registry"])
    got = EncodingModel.load(reg, "ens", "subj01", fs).predict(train + test)
    np.testing.assert_array_equal(got["rh"], pinned_fit["before"]["ens"]["rh"])
    # once unpinned and cleaned, the version is gone: the latest must hold the fitted rows, and does not
    fs.unpin(txt, pinned)
    time.sleep(0.05)
    assert pinned in fs.cleanup(txt, 0)["removed"]
    with pytest.raises(RegistryError, match=f"table version {pinned} at fit time .* now.*Refit the model"):
        EncodingModel.load(reg, "txt", "subj01", fs)


def test_a_re_created_table_is_verified_by_content_not_by_its_version_number(pinned_fit, tmp_path):
    fs = _copy_store(pinned_fit, tmp_path)
    txt, train, test = pinned_fit["txt"], pinned_fit["train"], pinned_fit["test"]
    reg = ModelRegistry(pinned_fit["registry"])
    pinned = reg.record("txt/subj01").meta["fingerprints"][txt]["table_version"]
    ids, emb, meta = fs.ids(txt), fs.load(txt), fs.metadata(txt)
    keep = {k: v for k, v in meta.items() if k not in ("feature_version", "dim")}

    def recreate(E):
        fs.drop(txt)
        fs.ensure_table(txt, E.shape[1], keep)
        step = -(-len(ids) // (pinned + 1))  # enough commits to pass the pinned version number
        for i in range(0, len(ids), step):
            fs.write(txt, ids[i:i + step], E[i:i + step])
        assert fs.version(txt) > pinned and fs.pinned(txt) == []

    before = EncodingModel.load(reg, "txt", "subj01", fs).tables[txt]
    assert before.pinned and before.version == pinned
    # loads of the same table version share one copy in memory (here two loads; in evaluate, many subjects)
    assert EncodingModel.load(reg, "txt", "subj01", fs).tables[txt]._rows is before._rows
    recreate(emb)  # the same rows: the model reads the latest version, which holds them
    em = EncodingModel.load(reg, "txt", "subj01", fs)
    assert not em.tables[txt].pinned and em.tables[txt].version == fs.version(txt)
    np.testing.assert_array_equal(em.predict(train + test)["lh"], pinned_fit["before"]["txt"]["lh"])
    other = emb.copy()
    other[ids.index(train[5])] *= 3  # one fitted stimulus re-embedded
    recreate(other)
    with pytest.raises(RegistryError) as e:
        EncodingModel.load(reg, "txt", "subj01", fs)
    msg = str(e.value)
    assert f"feature table {txt!r}" in msg and f"embeddings of the {len(train)} stimuli it was fitted on differ" in msg
    assert f"table version {pinned} at fit time" in msg and "Refit the model" in msg
