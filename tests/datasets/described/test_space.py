"""``space:`` in a description: where a surface dataset's columns sit (an fsaverage resolution with vertex
files or the whole surface, or the subject's own surface with its meshes); a volume's mask grid."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from brainstore.datasets import DatasetError, DescriptionError, open_dataset

from .helpers import N_TRIALS, _surface_dataset

N5 = 10242


def _ds(tmp_path, extra, n=(6, 4)):
    rng = np.random.default_rng(0)
    return _surface_dataset(tmp_path / "d", rng.normal(size=(N_TRIALS, n[0])).astype(np.float32),
                            rng.normal(size=(N_TRIALS, n[1])).astype(np.float32), extra=extra)


def test_vertex_index_files_and_release_masks_place_the_columns(tmp_path):
    path = _ds(tmp_path, """\
        space: {surface: fsaverage5, vertices: {lh: lh.vertices.npy, rh: rh.mask.npy}}
        rois:
          faces: {lh: lh.faces.npy, rh: rh.faces.npy, mapping: {1: FFA-1}}
        """)
    np.save(path.parent / "lh.vertices.npy", np.array([9000, 3, 17, 10241, 500, 0]))  # any order
    mask = np.zeros(N5, np.int8)
    mask[[40, 41, 7000, 8]] = 1
    np.save(path.parent / "rh.mask.npy", mask)
    np.save(path.parent / "lh.faces.npy", np.array([0, 1, 1, 0, 0, 0]))
    np.save(path.parent / "rh.faces.npy", np.array([1, 0, 0, 0]))
    ds = open_dataset(path)
    cx = ds.cortex("subj01")
    assert cx.space.name == "fsaverage5"
    assert cx.vertices["lh"].tolist() == [9000, 3, 17, 10241, 500, 0]
    assert cx.vertices["rh"].tolist() == [8, 40, 41, 7000]  # a mask: ascending vertex order
    lab, mapping = cx.rois["lh"]["faces"]
    assert np.flatnonzero(lab).tolist() == [3, 17] and mapping == {1: "FFA-1"}
    assert cx.to_space(np.arange(6.0), "lh")[[9000, 0]].tolist() == [0.0, 5.0]
    assert ds.validate(check_images=False) == []
    assert ds.summary()["subjects"]["subj01"]["space"].startswith("fsaverage5 surface")


def test_the_whole_surface_needs_no_vertex_file_and_a_wrong_count_is_one_line(tmp_path):
    path = _ds(tmp_path, "space: {surface: fsaverage5}\n", n=(N5, 3))
    ds = open_dataset(path)
    with pytest.raises(DatasetError, match=r"space \(for subj01\): rh has 3 response columns but fsaverage5 has 10,242 vertices; "
                                           r"give space.vertices"):
        ds.cortex("subj01")
    assert any("space" in p for p in ds.validate(check_images=False))


@pytest.mark.parametrize("content, message", [
    (np.array([1, 2, 3]), r"has 3 vertex indices but lh has 6 response columns"),
    (np.array([1, 2, 3, 4, 5, 10242]), r"indices outside \[0, 10,242\)"),
    (np.array([1, 2, 3, 4, 5, 5]), r"places two columns on one vertex"),
    (np.linspace(0, 1, 6), r"holds float64 of shape \(6,\); give the vertex index of every response column"),
])
def test_bad_vertex_files_name_the_field_and_the_fix(tmp_path, content, message):
    path = _ds(tmp_path, "space: {surface: fsaverage5, vertices: {lh: lh.v.npy, rh: rh.v.npy}}\n")
    np.save(path.parent / "lh.v.npy", content)
    np.save(path.parent / "rh.v.npy", np.arange(4))
    with pytest.raises(DatasetError, match=message) as ei:
        open_dataset(path).cortex("subj01")
    assert f"{path} line 6: space.vertices.lh" in str(ei.value) and "\n" not in str(ei.value)


def test_space_fields_are_checked_when_the_description_is_read(tmp_path):
    for extra, message in [("space: {surface: fsaverage9}\n", "space.surface"),
                           ("space: {surface: native}\n", "space.meshes: a native surface needs its meshes"),
                           ("space: {surface: fsaverage, meshes: {lh: {inflated: a}, rh: {inflated: b}}}\n",
                            "meshes: is for surface: native")]:
        with pytest.raises(DescriptionError, match=message):
            open_dataset(_ds(tmp_path / str(abs(hash(extra))), extra))


def test_a_native_surface_reads_its_meshes(tmp_path):
    import nibabel as nib
    from nilearn.datasets import load_fsaverage

    mesh = load_fsaverage("fsaverage5")["inflated"]
    path = _ds(tmp_path, textwrap.dedent("""\
        space:
          surface: native
          vertices: {lh: lh.v.npy, rh: rh.v.npy}
          meshes: {lh: {inflated: lh.inflated.gii}, rh: {inflated: rh.inflated.gii}}
        """))
    for h, part in (("lh", "left"), ("rh", "right")):
        p = mesh.parts[part]
        img = nib.gifti.GiftiImage(darrays=[
            nib.gifti.GiftiDataArray(np.asarray(p.coordinates, np.float32), intent="NIFTI_INTENT_POINTSET"),
            nib.gifti.GiftiDataArray(np.asarray(p.faces, np.int32), intent="NIFTI_INTENT_TRIANGLE")])
        nib.save(img, str(path.parent / f"{h}.inflated.gii"))
    np.save(path.parent / "lh.v.npy", np.arange(6))
    np.save(path.parent / "rh.v.npy", np.arange(4) * 10)
    cx = open_dataset(path).cortex("subj01")
    assert cx.space.name == "native" and cx.space.n_vertices == {"lh": N5, "rh": N5}
    assert cx.space.meshes["lh"]["inflated"].endswith("lh.inflated.gii")
