"""fsaverage's icosahedral meshes keep the coarser mesh's vertices first and in order, so a map on a finer
fsaverage is shown on fsaverage5 by taking its first 10,242 values (``Space.decimate``). Pinned on the meshes
nilearn bundles: every fsaverage5 vertex past fsaverage4's 2,562 is the midpoint of an fsaverage4 edge."""

from __future__ import annotations

import numpy as np
import pytest

from brainstore.maps import FSAVERAGE_VERTICES, Cortex, Space, SpaceError


@pytest.mark.parametrize("part", ["left", "right"])
def test_fsaverage5_is_fsaverage4_subdivided_with_the_old_vertices_first(part):
    from nilearn.datasets import load_fsaverage
    from scipy.sparse import coo_matrix

    sphere = load_fsaverage("fsaverage5")["sphere"].parts[part]
    xyz = np.asarray(sphere.coordinates, np.float64)
    faces = np.asarray(sphere.faces)
    n5, n4 = FSAVERAGE_VERTICES["fsaverage5"], FSAVERAGE_VERTICES["fsaverage4"]
    assert len(xyz) == n5
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adj = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n5, n5)).tocsr()
    adj = ((adj + adj.T) > 0).tocsr()
    unit = xyz / np.linalg.norm(xyz, axis=1, keepdims=True)
    for v in range(n4, n5):
        old = [u for u in adj[v].indices if u < n4]
        assert len(old) == 2, (v, old)  # a new vertex splits exactly one old edge
        mid = unit[old[0]] + unit[old[1]]
        assert np.degrees(np.arccos(np.clip(unit[v] @ (mid / np.linalg.norm(mid)), -1, 1))) < 1.0
    # and the old vertices are fsaverage4's: each has 5 or 6 old neighbours two steps away through a new vertex
    two = adj @ adj
    deg = np.array([(two[v].indices < n4).sum() - 1 for v in range(n4)])
    assert set(np.unique(deg)) <= {5, 6}


def test_decimate_takes_the_first_values_and_refuses_what_is_not_fsaverage():
    full = np.arange(FSAVERAGE_VERTICES["fsaverage"], dtype=np.float32)
    small = Space.fsaverage().decimate(full)
    assert small.shape == (10242,) and np.array_equal(small, full[:10242])
    assert Space.fsaverage("fsaverage6").decimate(full[:40962]).shape == (10242,)
    with pytest.raises(SpaceError, match="only fsaverage maps"):
        Space("surface", "native", {"lh": 5}).decimate(full[:5])


def test_a_known_pattern_survives_the_placement_and_the_gifti_round_trip(tmp_path):
    import nibabel as nib

    from brainstore.maps import write_gifti

    rng = np.random.default_rng(0)
    idx = np.sort(rng.choice(163842, 777, replace=False))
    cx = Cortex(Space.fsaverage(), {"lh": idx, "rh": idx[:10]})
    values = idx.astype(np.float32)  # value = the fsaverage vertex it belongs on
    path = write_gifti(tmp_path / "lh.test.func.gii", cx.to_space(values, "lh"), hemi="lh", meta={"metric": "id"})
    img = nib.load(str(path))
    back = np.asarray(img.darrays[0].data)
    assert back.shape == (163842,) and back.dtype == np.float32
    measured = ~np.isnan(back)
    assert np.array_equal(np.flatnonzero(measured), idx)  # NaN exactly off the measured vertices
    assert np.array_equal(back[measured], np.flatnonzero(measured).astype(np.float32))  # each on its own vertex
    assert img.meta["AnatomicalStructurePrimary"] == "CortexLeft"
    assert np.array_equal(cx.from_space(back, "lh"), values)
    with pytest.raises(SpaceError, match="2 values for 10 measured vertices"):
        cx.to_space(np.zeros(2), "rh")
    with pytest.raises(SpaceError, match="share one place"):
        Cortex(Space.fsaverage("fsaverage5"), {"lh": np.array([1, 1])})
    with pytest.raises(SpaceError, match=r"must lie in \[0, 10242\)"):
        Cortex(Space.fsaverage("fsaverage5"), {"lh": np.array([10242])})
