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


def test_loading_an_ensemble_refuses_a_refitted_member(pca_fit, small_dataset, tmp_path):
    reg = ModelRegistry(pca_fit["registry"])
    old = reg.record("txt/subj01").meta["safetensors_sha256"]
    # refit the member alone (other alphas) into the same registry
    spec = FitSpec(dataset=str(small_dataset), alphas=[10.0, 1000.0], subjects=["subj01"], folds=4,
                   models=[{"name": "txt", "features": [pca_fit["txt"]]}])
    fit_encoding_models(spec, store=pca_fit["store"], registry=pca_fit["registry"], out=tmp_path / "run",
                        progress=False)
    assert reg.record("txt/subj01").meta["safetensors_sha256"] != old
    with pytest.raises(RegistryError, match=r"member 'txt/subj01' was refitted after 'ens/subj01' was made"):
        EncodingModel.load(reg, "ens", "subj01")
    with pytest.raises(RegistryError, match="Refit 'ens' together with its members"):
        predict_model(reg, "ens", "subj01", None, subject_stimuli(AlgonautsDataset(small_dataset), "subj01", "test"))


def test_a_model_without_fingerprints_is_refused(pca_fit):
    reg = ModelRegistry(pca_fit["registry"])
    tensors, rec = reg.load_arrays("txt/subj01")
    meta = {k: v for k, v in rec.meta.items() if k != "fingerprints"}
    reg.save("old/subj01", tensors, {**meta, "model": "old"})
    with pytest.raises(RegistryError, match="without feature fingerprints.*refit it"):
        EncodingModel.load(reg, "old", "subj01")
