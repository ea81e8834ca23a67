"""Derived feature versions: PCA fitted on the training split only, stored with its provenance."""

from __future__ import annotations

import json

import numpy as np

from .._provenance import sha256
from ._store import FeatureStore, FeatureStoreError

__all__ = ["derive_pca"]


def derive_pca(store: str | FeatureStore, source: str, n_components: int, *, name: str | None = None,
               fit_split: str = "train", whiten: bool = False, seed: int = 0) -> str:
    """Fit PCA on the ``fit_split`` rows of a feature table and store all rows projected.

    Only rows whose ``split`` is exactly ``fit_split`` are used for fitting (a stimulus that is
    also a test image for some subject is excluded, so nothing leaks from the test set).

    Parameters
    ----------
    store : FeatureStore or URI
    source : feature version to project.
    n_components : int
    name : new feature version (default ``{source}-pca{n_components}``).

    Returns
    -------
    The new feature version's name. Its metadata records the source table's metadata, the fit
    split, the number of fitting rows, their ids' sha256, and the explained variance.
    """
    from sklearn.decomposition import PCA

    fs = store if isinstance(store, FeatureStore) else FeatureStore(store, create=False)
    if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)) or n_components < 1:
        raise FeatureStoreError(f"PCA of {source!r}: the number of components (--components) must be a positive "
                                f"integer, got {n_components!r}")
    dim = fs.info(source).dim
    if n_components > dim:
        raise FeatureStoreError(f"PCA of {source!r}: {n_components} components (--components) exceed the table's "
                                f"dimension {dim}; pass at most {dim}")
    tbl = fs.read(source)
    ids = tbl.column("stimulus_id").to_pylist()
    splits = tbl.column("split").to_pylist()
    X = fs.load(source, ids)
    fit_rows = np.array([s == fit_split for s in splits])
    if fit_rows.sum() < n_components:
        raise FeatureStoreError(
            f"{source!r} has {int(fit_rows.sum())} rows with split={fit_split!r}, fewer than n_components={n_components}"
        )
    pca = PCA(n_components=n_components, whiten=whiten, random_state=seed, svd_solver="auto")
    pca.fit(X[fit_rows])
    Z = pca.transform(X).astype(np.float32)
    new = name or f"{source}-pca{n_components}"
    src_meta = fs.metadata(source)
    fit_ids = sorted(i for i, f in zip(ids, fit_rows) if f)
    meta = {
        **{k: v for k, v in src_meta.items() if k not in ("feature_version", "dim", "created")},
        "derived_from": source,
        "transform": f"pca(n_components={n_components}, whiten={whiten})",
        "source_metadata": json.dumps(src_meta, sort_keys=True),
        "fit_split": fit_split,
        "n_fit": int(fit_rows.sum()),
        "fit_ids_sha256": sha256("\n".join(fit_ids).encode()),
        "explained_variance_ratio": float(pca.explained_variance_ratio_.sum()),
        # the projection itself (mean, components, whitening scales): changes whenever the PCA does
        "projection_sha256": sha256(np.ascontiguousarray(a, dtype=np.float64).tobytes() for a in (
            pca.mean_, pca.components_, pca.explained_variance_)),
    }
    if fs.exists(new):
        fs.drop(new)  # a derived version is a pure function of its source: rebuild it whole
    fs.ensure_table(new, n_components, meta)
    fs.write(new, ids, Z, dataset=tbl.column("dataset").to_pylist(), split=splits)
    return new
