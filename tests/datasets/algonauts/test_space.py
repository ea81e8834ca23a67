"""The release's fsaverage files (``roi_masks/{lh,rh}.all-vertices_fsaverage_space.npy`` and the ROI labels
``{hemi}.{family}_fsaverage_space.npy``) read into ``AlgonautsDataset.cortex``; bad files are one-line problems."""

from __future__ import annotations

import numpy as np
import pytest

from brainstore.datasets import AlgonautsDataset, DatasetError

N_FS = 163842


def _place(root, subject="subj01", seed=0):
    """Release-style files for ``subject``: a random set of fsaverage vertices per hemisphere (as many as the
    response columns), ascending = challenge order; the faces family's labels on fsaverage (the synthetic
    dataset's own fsaverage files removed first: only these are there)."""
    for f in (root / subject / "roi_masks").glob("*_fsaverage_space.npy"):
        f.unlink()
    ds = AlgonautsDataset(root)
    rng = np.random.default_rng(seed)
    out = {}
    for h in ("lh", "rh"):
        n = ds.n_vertices(subject, h)
        idx = np.sort(rng.choice(N_FS, n, replace=False))
        mask = np.zeros(N_FS, np.float32)
        mask[idx] = 1
        np.save(root / subject / "roi_masks" / f"{h}.all-vertices_fsaverage_space.npy", mask)
        labels, _ = ds.roi_labels(subject, h, "floc-faces")
        full = np.zeros(N_FS, np.int32)
        full[idx] = labels
        full[rng.choice(np.setdiff1d(np.arange(N_FS), idx), 50, replace=False)] = 1  # labelled but not measured
        np.save(root / subject / "roi_masks" / f"{h}.floc-faces_fsaverage_space.npy", full)
        out[h] = (idx, full)
    return out


def test_the_release_files_place_every_column_on_its_fsaverage_vertex(dataset_copy):
    placed = _place(dataset_copy)
    ds = AlgonautsDataset(dataset_copy)
    cx = ds.cortex("subj01")
    assert cx.space.name == "fsaverage" and cx.space.n_vertices == {"lh": N_FS, "rh": N_FS}
    for h, (idx, full) in placed.items():
        assert np.array_equal(cx.vertices[h], idx)
        # a column's value lands on its vertex: the column number, laid on fsaverage, read back by index
        cols = np.arange(len(idx), dtype=np.float32)
        on_fs = cx.to_space(cols, h)
        assert on_fs.shape == (N_FS,) and np.array_equal(on_fs[idx], cols)
        assert np.isnan(np.delete(on_fs, idx)).all()
        # the ROI outline labels are the release's file (unmeasured labelled vertices included)
        labels, mapping = cx.rois[h]["floc-faces"]
        assert np.array_equal(labels, full) and mapping[1].startswith(("OFA", "FFA"))
        # families without a fsaverage file: the challenge labels laid through the mask
        v1, _ = ds.roi_labels("subj01", h, "prf-visualrois")
        assert np.array_equal(cx.rois[h]["prf-visualrois"][0][idx], v1)
    assert ds.validate(check_images=False) == [] and ds.summary()["subjects"]["subj01"]["space"].startswith("fsaverage")


def test_bad_fsaverage_files_are_one_line_problems_naming_the_file(dataset_copy):
    _place(dataset_copy)
    f = dataset_copy / "subj01" / "roi_masks" / "lh.all-vertices_fsaverage_space.npy"
    mask = np.load(f)
    np.save(f, mask[:-1])  # one value short of fsaverage
    with pytest.raises(DatasetError, match=r"lh.all-vertices_fsaverage_space.npy has 163,841 values"):
        AlgonautsDataset(dataset_copy).cortex("subj01")
    mask[np.flatnonzero(mask == 0)[0]] = 1  # one vertex more than the response columns
    np.save(f, mask)
    problems = AlgonautsDataset(dataset_copy).validate(check_images=False)
    assert len(problems) == 1 and "marks" in problems[0] and "but the lh responses have" in problems[0], problems
    assert "\n" not in problems[0] and str(f) in problems[0]
    f.unlink()  # one hemisphere only
    with pytest.raises(DatasetError, match="lh.all-vertices_fsaverage_space.npy is missing"):
        AlgonautsDataset(dataset_copy).cortex("subj01")
    roi = dataset_copy / "subj01" / "roi_masks" / "rh.floc-faces_fsaverage_space.npy"
    _place(dataset_copy)
    np.save(roi, np.zeros(100, np.int32))
    problems = AlgonautsDataset(dataset_copy).validate(check_images=False)
    assert any(str(roi) in p and "one label per fsaverage vertex" in p for p in problems), problems


def test_a_dataset_without_fsaverage_files_has_no_cortex(dataset_copy):
    for f in dataset_copy.glob("subj*/roi_masks/*_fsaverage_space.npy"):
        f.unlink()
    ds = AlgonautsDataset(dataset_copy)
    assert ds.cortex("subj01") is None and ds.summary()["subjects"]["subj01"]["space"] is None
