"""Source files of a described dataset (``described/_readers.py``): GIfTI, MGH and surface label files,
NIfTI volumes through a brain mask (the hemisphere split, reads in trial blocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from brainstore.datasets import DescribedDataset
from tests.datasets.described.helpers import IDS, N_TRIALS, TRIALS, _affine, _csv, _expected, _images, _write


def _write_label(path: Path, vertices) -> None:
    lines = ["#!ascii label, from subject vox2ras=TkReg", str(len(vertices))]
    lines += [f"{v} 0.0 0.0 0.0 0.0" for v in vertices]
    path.write_text("\n".join(lines) + "\n")


def test_gifti_mgh_and_surface_label_files(tmp_path):
    import nibabel as nib

    root = tmp_path / "d"
    root.mkdir()
    rng = np.random.default_rng(3)
    lh = rng.normal(size=(N_TRIALS, 9)).astype(np.float32)
    rh = rng.normal(size=(N_TRIALS, 6)).astype(np.float32)
    nib.save(nib.GiftiImage(darrays=[nib.gifti.GiftiDataArray(t) for t in lh]), root / "lh.func.gii")
    nib.save(nib.MGHImage(rh.T.reshape(6, 1, 1, N_TRIALS), np.eye(4)), root / "rh.mgz")
    # lh ROIs: a GIfTI label file with its label table; rh: FreeSurfer .label files; then an annot
    lab_lh = np.array([0, 1, 1, 2, 0, 0, 2, 0, 0], dtype=np.int32)
    table = nib.gifti.GiftiLabelTable()
    for key, name in ((0, "???"), (1, "FFA-1"), (2, "OFA")):
        g = nib.gifti.GiftiLabel(key=key)
        g.label = name
        table.labels.append(g)
    nib.save(nib.GiftiImage(labeltable=table, darrays=[nib.gifti.GiftiDataArray(lab_lh, intent="NIFTI_INTENT_LABEL")]),
             root / "lh.faces.label.gii")
    _write_label(root / "rh.FFA-1.label", [0, 4])
    _write_label(root / "rh.OFA.label", [5])
    paths = _images(root / "img", IDS)
    _csv(root / "stimuli.csv", stimulus_id=IDS, path=paths)
    _csv(root / "trials.csv", **TRIALS)
    ds = DescribedDataset(_write(root / "d.yml", """\
        stimuli: {table: stimuli.csv}
        trials: trials.csv
        responses: {lh: lh.func.gii, rh: rh.mgz}
        rois:
          floc-faces:
            lh: lh.faces.label.gii
            rh: {FFA-1: rh.FFA-1.label, OFA: rh.OFA.label}
        subjects: {subj01: null}
        """))
    for h, x in (("lh", lh), ("rh", rh)):
        want = _expected(x, TRIALS, zscore=False, single=False)
        np.testing.assert_allclose(ds.responses("subj01", h, "train"), want["train"][1], rtol=1e-6)
        np.testing.assert_allclose(ds.responses("subj01", h, "test"), want["test"][1], rtol=1e-6)
    labels, mapping = ds.roi_labels("subj01", "lh", "floc-faces")
    assert labels.tolist() == lab_lh.tolist() and mapping == {1: "FFA-1", 2: "OFA"}
    labels, mapping = ds.roi_labels("subj01", "rh", "floc-faces")
    assert labels.tolist() == [1, 0, 0, 0, 1, 2] and mapping == {1: "FFA-1", 2: "OFA"}
    masks = ds.roi_masks("subj01", "rh", level="roi")
    assert list(masks) == ["FFA-1", "OFA"] and masks["OFA"].tolist() == [False] * 5 + [True]
    # families absent from the dataset are absent (not empty masks)
    assert list(ds.roi_masks("subj01", "lh")) == ["floc-faces"]
    assert list(ds.regions("subj01", "rh")) == ["floc-faces", "FFA-1", "OFA"]


def test_nifti_volume_mask_hemisphere_split_and_lazy_reads(tmp_path, monkeypatch):
    import nibabel as nib
    from nibabel.affines import apply_affine
    from nibabel.arrayproxy import ArrayProxy

    from brainstore.datasets.described import _readers

    root = tmp_path / "d"
    root.mkdir()
    rng = np.random.default_rng(5)
    shape = (5, 4, 3)
    aff = _affine()
    vol = rng.normal(size=(*shape, N_TRIALS)).astype(np.float32)
    mask = rng.random(shape) > 0.25
    nib.save(nib.Nifti1Image(vol[..., :9], aff), root / "betas_session01.nii.gz")
    nib.save(nib.Nifti1Image(vol[..., 9:], aff), root / "betas_session02.nii")
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), aff), root / "brainmask.nii.gz")
    labels = rng.integers(0, 3, size=shape).astype(np.int16)
    nib.save(nib.Nifti1Image(labels, aff), root / "faces.nii.gz")
    _csv(root / "stimuli.csv", stimulus_id=IDS, path=_images(root / "img", IDS))
    _csv(root / "trials.csv", **TRIALS)
    (root / "faces.json").write_text(json.dumps({"1": "FFA-1", "2": "FFA-2"}))
    ds = DescribedDataset(_write(root / "vol.yaml", """\
        stimuli: {table: stimuli.csv}
        trials: trials.csv
        subjects:
          subj01:
            responses: {volume: [betas_session01.nii.gz, betas_session02.nii], mask: brainmask.nii.gz}
            rois: {floc-faces: {volume: faces.nii.gz, mapping: faces.json}}
        """))
    # reads are slices of at most two trials (no whole-volume read of the 4-D files)
    monkeypatch.setattr(_readers, "BLOCK_BYTES", int(np.prod(shape)) * 8 * 2)
    reads, whole = [], []
    getitem, array = ArrayProxy.__getitem__, ArrayProxy.__array__

    def spy_getitem(self, key):
        out = getitem(self, key)
        reads.append(out.shape)
        return out

    def spy_array(self, *a, **k):
        if len(self.shape) == 4:
            whole.append(self.shape)
        return array(self, *a, **k)

    monkeypatch.setattr(ArrayProxy, "__getitem__", spy_getitem)
    monkeypatch.setattr(ArrayProxy, "__array__", spy_array)
    ijk = np.argwhere(mask)  # C order
    x = apply_affine(aff, ijk)[:, 0]
    assert (x < 0).any() and (x >= 0).any()
    for h, sel in (("lh", x < 0), ("rh", x >= 0)):
        trials = vol[ijk[sel, 0], ijk[sel, 1], ijk[sel, 2], :].T  # trials x voxels
        want = _expected(trials, TRIALS, zscore=False, single=False)
        assert ds.n_vertices("subj01", h) == sel.sum()
        np.testing.assert_allclose(ds.responses("subj01", h, "train"), want["train"][1], rtol=1e-6)
        np.testing.assert_allclose(ds.responses("subj01", h, "test"), want["test"][1], rtol=1e-6)
        lab, mapping = ds.roi_labels("subj01", h, "floc-faces")
        assert lab.tolist() == labels[ijk[sel, 0], ijk[sel, 1], ijk[sel, 2]].tolist()
        assert mapping == {1: "FFA-1", 2: "FFA-2"}
    assert not whole and reads and max(r[-1] for r in reads if len(r) == 4) <= 2
    monkeypatch.undo()
    assert ds.validate() == []
