"""The meshes maps are drawn on besides the bundled fsaverage5: a local FreeSurfer fsaverage (full
resolution, with its flat patch), found by ``--meshes`` or the environment, and a subject's own surface.
The full-resolution fsaverage here is fsaverage5's sphere subdivided twice the icosahedral way (old vertices
first), written in FreeSurfer's binary formats: no download, the real files' layout."""

from __future__ import annotations

import numpy as np
import pytest

from brainstore.maps import (FSAVERAGE_VERTICES, MESHES_ENV, Cortex, Space, SpaceError, find_fsaverage, load_meshes,
                             render_surface_map)


def _subdivide(xyz: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One icosahedral subdivision: a new vertex at each edge's midpoint (on the sphere), appended after the old."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, inv = np.unique(edges, axis=0, return_inverse=True)
    mid = xyz[uniq[:, 0]] + xyz[uniq[:, 1]]
    mid *= np.linalg.norm(xyz[0]) / np.linalg.norm(mid, axis=1, keepdims=True)
    new = len(xyz) + inv.reshape(3, -1).T  # per face: the new vertex on edges 01, 12, 20
    a, b, c = faces.T
    ab, bc, ca = new.T
    faces2 = np.concatenate([np.stack(t, 1) for t in ((a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca))])
    return np.concatenate([xyz, mid]), faces2


@pytest.fixture(scope="module")
def freesurfer_fsaverage(tmp_path_factory):
    """``subjects/fsaverage/surf/{lh,rh}.{inflated,sulc,full.flat.patch.3d}`` at 163,842 vertices."""
    import nibabel.freesurfer as fs
    from nilearn.datasets import load_fsaverage

    root = tmp_path_factory.mktemp("subjects") / "fsaverage"
    (root / "surf").mkdir(parents=True)
    sphere = load_fsaverage("fsaverage5")["sphere"]
    for h, part in (("lh", "left"), ("rh", "right")):
        xyz, faces = np.asarray(sphere.parts[part].coordinates, np.float64), np.asarray(sphere.parts[part].faces)
        for _ in range(2):
            xyz, faces = _subdivide(xyz, faces)
        assert len(xyz) == FSAVERAGE_VERTICES["fsaverage"]
        fs.write_geometry(str(root / "surf" / f"{h}.inflated"), xyz.astype(np.float32), faces.astype(np.int32))
        fs.write_morph_data(str(root / "surf" / f"{h}.sulc"), np.sign(xyz[:, 2]).astype(np.float32))
        # a flat patch of the back half (y < 0): FreeSurfer's layout, big-endian, vertex numbers from 1
        keep = np.flatnonzero(xyz[:, 1] < 0)
        rec = np.zeros(len(keep), dtype=[("v", ">i4"), ("x", ">f4"), ("y", ">f4"), ("z", ">f4")])
        rec["v"], rec["x"], rec["y"] = keep + 1, xyz[keep, 0], xyz[keep, 2]
        (root / "surf" / f"{h}.full.flat.patch.3d").write_bytes(
            np.array([-1, len(keep)], ">i4").tobytes() + rec.tobytes())
    return root


def test_the_icosahedral_subdivision_keeps_fsaverage5_first(freesurfer_fsaverage):
    """What Space.decimate stands on, on this stand-in too: its first 10,242 vertices are fsaverage5's."""
    import nibabel.freesurfer as fs
    from nilearn.datasets import load_fsaverage

    xyz, _ = fs.read_geometry(str(freesurfer_fsaverage / "surf" / "lh.inflated"))
    ref = np.asarray(load_fsaverage("fsaverage5")["sphere"].parts["left"].coordinates)
    assert np.allclose(xyz[:FSAVERAGE_VERTICES["fsaverage5"]], ref, atol=1e-3)


def test_a_local_fsaverage_is_found_and_read_at_full_resolution(freesurfer_fsaverage, monkeypatch):
    for var in (MESHES_ENV, "SUBJECTS_DIR", "FREESURFER_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert find_fsaverage() is None and load_meshes(Space.fsaverage()).n_vertices == 10242  # nothing local: bundled
    monkeypatch.setenv("SUBJECTS_DIR", str(freesurfer_fsaverage.parent))
    assert find_fsaverage() == freesurfer_fsaverage
    m = load_meshes(Space.fsaverage())
    assert m.n_vertices == 163842 and m.name.startswith("fsaverage (") and m.has("flat") and m.has("inflated")
    coords, faces = m.surfaces["lh"]["flat"]
    inside = np.zeros(163842, bool)
    inside[faces.ravel()] = True
    y = m.surfaces["lh"]["inflated"][0][:, 1]
    assert inside.any() and (y[inside] < 0).all()  # the patch's faces only: vertices in the back half
    assert np.array_equal(m.sulc["rh"], np.sign(m.surfaces["rh"]["inflated"][0][:, 2]).astype(np.float32))
    # fsaverage5 maps stay on the bundled mesh; a folder of the wrong resolution given explicitly is refused
    assert load_meshes(Space.fsaverage("fsaverage5")).n_vertices == 10242
    with pytest.raises(SpaceError, match="163,842 vertices, the maps' fsaverage6 has 40,962"):
        load_meshes(Space.fsaverage("fsaverage6"), freesurfer_fsaverage)
    with pytest.raises(SpaceError, match="no surf/lh.inflated there"):
        load_meshes(Space.fsaverage(), freesurfer_fsaverage / "surf")


@pytest.mark.slow
def test_a_full_resolution_map_is_drawn_on_the_local_fsaverage(freesurfer_fsaverage, tmp_path):
    m = load_meshes(Space.fsaverage(), freesurfer_fsaverage)
    values = np.full(163842, np.nan, np.float32)
    y = m.surfaces["lh"]["inflated"][0][:, 1]
    values[y < -50] = 1.0
    path = render_surface_map({"lh": values}, Space.fsaverage(), tmp_path / "full.png", title="t", meshes=m)
    import matplotlib.image as mpimg

    img = mpimg.imread(str(path))[..., :3]
    assert img.std() > 0.05


def test_a_subjects_own_surface_is_drawn_from_its_files(tmp_path):
    import nibabel as nib
    from nilearn.datasets import load_fsaverage

    mesh = load_fsaverage("fsaverage5")
    files = {}
    for h, part in (("lh", "left"), ("rh", "right")):
        files[h] = {}
        for kind in ("inflated", "flat"):
            p = mesh[kind].parts[part]
            img = nib.gifti.GiftiImage(darrays=[
                nib.gifti.GiftiDataArray(np.asarray(p.coordinates, np.float32), intent="NIFTI_INTENT_POINTSET"),
                nib.gifti.GiftiDataArray(np.asarray(p.faces, np.int32), intent="NIFTI_INTENT_TRIANGLE")])
            files[h][kind] = str(tmp_path / f"{h}.{kind}.surf.gii")
            nib.save(img, files[h][kind])
    space = Space("surface", "native", {"lh": 10242, "rh": 10242}, files)
    m = load_meshes(space)
    assert m.name == "subject surface" and m.has("flat") and m.sulc["lh"] is None
    cx = Cortex(space, {"lh": np.arange(0, 10242, 3), "rh": np.arange(5)})
    path = render_surface_map({"lh": cx.to_space(np.ones(cx.n_measured("lh")), "lh")}, space, tmp_path / "own.png",
                              title="own surface", meshes=m)
    assert path.stat().st_size > 10_000
