"""Derived tables: PCA fitted on the training split only (against sklearn)."""

import numpy as np

from brainstore.features import FeatureStore, derive_pca
from tests.features.helpers import _fill


def test_pca_fitted_on_train_split_only(tmp_path):
    from sklearn.decomposition import PCA

    fs = FeatureStore(tmp_path / "store")
    n = 60
    splits = ["train"] * 40 + ["test"] * 10 + ["test,train"] * 10
    ids, X = _fill(fs, n=n, dim=12, splits=splits)
    name = derive_pca(fs, "f", 3)
    assert name == "f-pca3"
    m = fs.metadata(name)
    assert m["derived_from"] == "f" and m["fit_split"] == "train" and m["n_fit"] == 40
    ref = PCA(3).fit(X[:40])
    Z = fs.load(name, ids)
    # components are defined up to sign
    for j in range(3):
        a, b = Z[:, j], ref.transform(X)[:, j]
        assert np.allclose(a, b, atol=1e-4) or np.allclose(a, -b, atol=1e-4)
