"""Decoding candidates (CandidateIndex): in-memory exact cosine search against sklearn's brute force, the
LanceDB path beyond the memory bound giving the same answers, and a new table version picked up."""

from __future__ import annotations

import numpy as np
from sklearn.neighbors import NearestNeighbors

from brainstore.features import FeatureStore
from brainstore.serving._index import CandidateIndex


def _store(tmp_path, n: int, dim: int = 16, seed: int = 0):
    fs = FeatureStore(tmp_path / "store")
    fs.ensure_table("emb", dim, {"extractor": "test", "architecture": "test", "pretrained": "none"})
    E = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    ids = [f"s-{i:04d}" for i in range(n)]
    fs.write("emb", ids, E, dataset="t")
    return fs, ids, E


def test_memory_and_lancedb_search_match_sklearn(tmp_path):
    fs, ids, E = _store(tmp_path, 300)
    Q = np.random.default_rng(1).normal(size=(7, 16)).astype(np.float32)
    nn = NearestNeighbors(n_neighbors=5, metric="cosine", algorithm="brute").fit(E)
    dist, idx = nn.kneighbors(Q)
    mem = CandidateIndex(fs, "emb")
    got, sims = mem.search(Q, 5)
    assert mem.in_memory
    assert got == [[ids[j] for j in row] for row in idx]
    np.testing.assert_allclose(sims, 1 - dist, atol=1e-5)
    lance = CandidateIndex(fs, "emb", max_memory_rows=100)  # 300 rows: searched by LanceDB
    got2, sims2 = lance.search(Q, 5)
    assert not lance.in_memory and got2 == got
    np.testing.assert_allclose(sims2, sims, atol=1e-5)


def test_a_new_table_version_is_loaded(tmp_path):
    fs, ids, E = _store(tmp_path, 50)
    index = CandidateIndex(fs, "emb", refresh_s=0.0)
    q = np.random.default_rng(2).normal(size=(1, 16)).astype(np.float32)
    assert index.search(q, 1)[0][0][0] != "new"
    fs.write("emb", ["new"], q, dataset="t")  # exactly the query: the nearest once it is seen
    got, sims = index.search(q, 1)
    assert got == [["new"]] and sims[0, 0] > 0.9999 and index.loads == 2
    stale = CandidateIndex(fs, "emb", refresh_s=3600.0)
    stale.search(q, 1)
    fs.write("emb", ["newer"], -q, dataset="t")
    assert stale.search(-q, 1)[0] != [["newer"]]  # within its refresh interval it answers from what it holds
